"""The ``aftzoo`` command line: thin commands over the library."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

# Commands kept in their own modules; the serving ones must not import torch (predict runs without it).
from app.data_cli import add_dataset_cmd, remove_dataset_cmd
from app.launch_cli import PASS_THROUGH, launch_cmd, sweep_cmd
from app.output import console, err, fail, human_count, print_json, user_errors
from app.serving_cli import export_cmd, predict_cmd, serve_cmd
from app.transfer_cli import cancel_cmd, rank_cmd, runs_cmd, transfer_cmd
from storage.settings import SettingsError, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="aftzoo: rank a zoo of foundation models and transfer them into small students.")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("aftzoo")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed; pip install -e .)"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"aftzoo {_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print aftzoo's version and exit.")) -> None:
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
def datasets(as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout."),
             fetch: Optional[str] = typer.Option(None, "--fetch", help="Download one of the paper's data sets "
                                                 "(needs AFTZOO_OFFLINE=0).")) -> None:
    """List the data sets by name (bundled, the paper's, imported) and whether each is on this machine."""
    from zoo import paper_data
    from zoo.datasets import describe, list_datasets

    if fetch is not None:
        if fetch not in paper_data.PAPER:
            fail(f"--fetch takes one of the paper's data sets: {', '.join(paper_data.PAPER)}; got {fetch!r}")
        try:
            paper_data.fetch(fetch)
        except paper_data.DataMissing as exc:
            fail(" ".join(str(exc).split()))
        console.print(f"{fetch}: on this machine ({paper_data.where(fetch)})", highlight=False)
        return
    rows = [describe(name) for name in list_datasets()]
    if as_json:
        print_json(rows)
        return
    table = Table("name", "modality", "on this machine", "train", "test", "classes", "fingerprint (train)",
                  "description")
    for r in rows:
        sizes = r.get("sizes", {})
        table.add_row(r["name"], r["modality"], "[green]yes[/]" if r["present"] else "[red]no[/]",
                      str(sizes.get("train", "-")), str(sizes.get("test", "-")), str(r.get("num_classes", "-")),
                      r.get("fingerprints", {}).get("train", "-"), r["description"])
    console.print(table)
    for r in rows:
        if not r["present"]:
            console.print(f"{r['name']}: {r['how_to_get']}", highlight=False, soft_wrap=True)


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

    with user_errors():
        result = run_demo(limit=limit, progress=not as_json)
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
    from zoo.registry import load_persisted

    try:
        load_persisted()  # the pickers list models registered in earlier sessions too
        launch(host, port)
    except (OSError, ValueError) as exc:  # port taken, half-set login
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def _model_row(spec, shown_name: str | None = None) -> dict:
    from zoo.registry import weights_status

    return {"name": shown_name or spec.name, "family": spec.family, "modality": spec.modality, "role": spec.role,
            "source": spec.source, "hub_id": spec.hub_id, "params": spec.params, "feature_dim": spec.feature_dim,
            "feature_rule": spec.feature_rule, "image_size": spec.image_size, "max_length": spec.max_length,
            "weights": weights_status(spec), "description": spec.description}


def _cached_hub_rows(pattern: str | None, role: str | None, modality: str | None, known: set) -> list[dict]:
    """Models in the local Hugging Face cache that the registry does not hold yet, under their hub names."""
    import fnmatch

    from zoo import hub

    rows = []
    glob = pattern if pattern and any(c in pattern for c in "*?[") else f"*{pattern or ''}*"
    for hub_name in hub.cached_hub_names():
        if hub.spec_name(hub_name) in known or not (
                fnmatch.fnmatchcase(hub_name.lower(), glob.lower())):
            continue
        try:
            spec = hub.spec_from_name(hub_name)
        except Exception:  # a half-downloaded or foreign repo: not a model aftzoo can list
            continue
        if spec.hub_repo in {r for r in known if isinstance(r, str) and "/" in r}:
            continue  # the weights of a zoo entry (timm/vit_small_patch14_dinov2.lvd142m is dinov2-vit-s14)
        if (role and spec.role not in (role, "both")) or (modality and spec.modality != modality):
            continue
        rows.append(_model_row(spec, hub_name))
    return rows


@app.command()
def models(role: Optional[str] = typer.Option(None, "--role", help="teacher or student (models usable as both match either)."),
           modality: Optional[str] = typer.Option(None, "--modality", help="image or text."),
           pattern: Optional[str] = typer.Option(None, "--pattern", help="fnmatch pattern on the name, e.g. 'dinov2*'; "
                                                 "without wildcards, any name containing it."),
           as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout."),
           fetch: Optional[str] = typer.Option(None, "--fetch", help="Bring one model's weights onto this machine, "
                                               "any name form (downloads need AFTZOO_OFFLINE=0).")) -> None:
    """List the zoo's models, the ones registered before and those in the local Hugging Face cache."""
    from zoo.registry import get, list_models, list_specs, load_persisted

    if fetch is not None:
        return _fetch_model(fetch)
    try:
        load_persisted()
    except Exception as exc:  # a busy catalog hides only earlier sessions' models: say so, list the rest
        err.print(f"[yellow]warning:[/] models registered earlier are not listed ({' '.join(str(exc).split())})",
                  highlight=False)
    try:
        names = list_models(pattern, role=role, modality=modality)
    except ValueError as exc:
        fail(str(exc))
    rows = [_model_row(get(name)) for name in names]
    known = {s.name for s in list_specs()} | {s.hub_repo for s in list_specs() if s.hub_repo}
    rows += _cached_hub_rows(pattern, role, modality, known)
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
                  "random = trained from scratch, no = needs --weights DIR or AFTZOO_OFFLINE=0; any name takes "
                  "the forms timm:NAME, hf:ORG/NAME, open_clip:ARCH/TAG and hf-hub:ORG/NAME", highlight=False)


def _fetch_model(name: str) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    from zoo.download import fetch

    with user_errors(), Progress(TextColumn("{task.description}"), BarColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"looking up {name}", total=1.0)
        source = fetch(name, on_progress=lambda done, what: bar.update(task, completed=done or 0, description=what))
    console.print(f"{name}: on this machine ({source.describe()})", highlight=False)


@app.command()
def extract(model: str = typer.Option(..., "--model", "-m", help="Model name (see `aftzoo models`), or a hub name: "
                                      "timm:NAME, hf:ORG/NAME, open_clip:ARCH/TAG, hf-hub:ORG/NAME."),
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

    with user_errors("interrupted; nothing was cached for the unfinished split"):
        results = [r.to_dict() for r in extract_splits(
            model, dataset, ("train", "test") if split == "all" else (split,), limit=limit, batch_size=batch_size,
            device=device, weights=weights, progress=not as_json)]
    if as_json:
        print_json(results)
        return
    for r in results:
        how = "cache hit" if r["cached"] else f"computed on {r['device']} from {r['weights']}"
        console.print(f"{r['model']} on {r['dataset']}/{r['split']}: {r['shape'][0]} x {r['shape'][1]} features, "
                      f"{r['seconds']:.2f}s, {how}", highlight=False, soft_wrap=True)


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
