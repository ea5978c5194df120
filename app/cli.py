"""The ``aftzoo`` command line: thin commands over the library."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from storage.settings import SettingsError, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="aftzoo: rank a zoo of foundation models and transfer them into small students.")
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.callback()
def _main() -> None:
    # The hub clients read their offline variables at import time: set them before anything imports them.
    try:
        get_settings()
    except SettingsError as exc:
        _fail(str(exc), code=2)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Check versions, device, folders, the catalog, offline packs and data sets."""
    from zoo.doctor import report

    rep = report()
    if as_json:
        _print_json(rep)
    else:
        console.print(f"[bold]aftzoo {rep['versions']['aftzoo']}[/] on {rep['platform']}")
        console.print("versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if v))
        s, d, c = rep["settings"], rep["device"], rep["catalog"]
        console.print(f"home: {s['home']}   packs: {s['packs']}   offline: {s['offline']}")
        console.print(f"device: {d['resolved']} (asked {d['requested']}, CUDA available: {d['cuda_available']}); "
                      f"onnxruntime providers: {', '.join(d['onnxruntime_providers']) or 'none'}")
        console.print(f"catalog: {c['path']} " + (f"schema v{c['schema_version']}, {c['feature_sets']} feature sets, "
                                                   f"{c['runs']} runs" if c["ok"] else f"[red]{c['error']}[/]"))
        table = Table("pack", "kind", "status", "where / how to get it", title="offline packs")
        for row in rep["packs"]:
            ok = row["present"]
            table.add_row(row["pack"], row["kind"], "[green]present[/]" if ok else "[red]missing[/]",
                          row["path"] if ok else row["how_to_get"])
        console.print(table)
        table = Table("data set", "modality", "status", "sizes", "classes", title="data sets")
        for row in rep["datasets"]:
            ok = row["present"]
            table.add_row(row["name"], row["modality"], "[green]present[/]" if ok else "[red]missing[/]",
                          ", ".join(f"{k} {v}" for k, v in row.get("sizes", {}).items()) or row.get("how_to_get", ""),
                          str(row.get("num_classes", "")))
        console.print(table)
        for p in rep["problems"]:
            err.print(f"[yellow]problem:[/] {p}", highlight=False)
        console.print("[green]all checks passed[/]" if not rep["problems"] else f"{len(rep['problems'])} problem(s)")
    raise typer.Exit(1 if rep["problems"] else 0)


@app.command()
def datasets(as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout.")) -> None:
    """List the data sets by name, with sizes and class counts."""
    from zoo.datasets import describe, list_datasets

    rows = [describe(name) for name in list_datasets()]
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "modality", "train", "test", "classes", "fingerprint (train)", "description")
    for r in rows:
        if r["present"]:
            table.add_row(r["name"], r["modality"], str(r["sizes"].get("train", "")), str(r["sizes"].get("test", "")),
                          str(r["num_classes"]), r["fingerprints"].get("train", ""), r["description"])
        else:
            table.add_row(r["name"], r["modality"], "-", "-", "-", "-", f"[red]missing[/]: {r['how_to_get']}")
    console.print(table)


@app.command()
def setup() -> None:
    """Prepare the offline packs that need a one-time step (joining and unpacking mpnet)."""
    from zoo import packs

    for name in ("mpnet-base",):
        try:
            console.print(f"{name}: {packs.locate(name)}")
        except packs.PackMissing as exc:
            err.print(f"[yellow]skipped:[/] {exc}", highlight=False)


@app.command()
def demo(limit: int = typer.Option(2000, help="Training snippets to use (test uses a quarter as many)."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """The smallest end-to-end run: MiniLM features of Rotten Tomatoes, cached in the catalog, and a linear probe."""
    from zoo.demo import run_demo

    try:
        result = run_demo(limit=limit, progress=not as_json)
    except Exception as exc:  # the demo is a user-facing entry point: one clear line, no traceback
        _fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        _print_json(result)
    else:
        console.print(result["summary"])


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
