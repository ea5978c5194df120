"""CLI commands over ranking and transfer: ``rank``, ``transfer``, ``runs``, ``cancel``."""
from __future__ import annotations

import math
from typing import Optional

import typer
from rich.table import Table

from app.output import console, err, fail, print_json, user_errors
from storage.errors import AftzooError


def _names(csv: str) -> list[str]:
    return [n.strip() for n in csv.split(",") if n.strip()]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def rank_cmd(dataset: str = typer.Option(..., "--dataset", "-d", help="Data set name (see `aftzoo datasets`)."),
             models: str = typer.Option(..., "--models", help="Comma-separated model names (see `aftzoo models`)."),
             metrics: str = typer.Option("logme,leep,nce,hscore,probe", "--metrics", help="Comma-separated metrics."),
             limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N training examples."),
             as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout, best first.")) -> None:
    """Rank models for a data set with LogME and its peers; every score goes to the catalog."""
    from transfer.ranking import rank

    with user_errors():
        frame = rank(dataset, _names(models), _names(metrics), limit=limit, progress=not as_json)
    if as_json:
        print_json(frame.to_dict(orient="records"))
        return
    cols = [c for c in ("model", "dim", "n", *_names(metrics), "skipped") if c in frame.columns]
    table = Table(*cols, title=f"ranking on {dataset} (best first by {_names(metrics)[0]})")
    for row in frame.to_dict(orient="records"):
        table.add_row(*(_fmt(row[c]) for c in cols))
    console.print(table)


def _beta(text: str | None) -> float | str | None:
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        fail(f"--beta must be a number or 'auto'; got {text!r}", code=2)


def _settings(pairs: list[str]) -> dict:
    """``--set field=value`` pairs, each value read as TOML (numbers, true/false, "strings", [lists])."""
    import tomllib

    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--set takes field=value (e.g. --set weight_decay=0.01); got {pair!r}", code=2)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw.strip()  # a bare word is a string: --set device=cpu
    return out


def transfer_cmd(
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Data set name."),
        student: Optional[str] = typer.Option(None, "--student", "-s", help="Student model name (or a hub name: "
                                              "timm:NAME, hf:ORG/NAME)."),
        teachers: Optional[str] = typer.Option(None, "--teachers", "-t", help="Comma-separated teacher names (or "
                                               "hub names: hf:ORG/NAME, timm:NAME, open_clip:ARCH/TAG)."),
        config_file: Optional[str] = typer.Option(None, "--config", help="A TOML file with any TransferConfig "
                                                  "fields; the options given here override it."),
        method: Optional[str] = typer.Option(None, "--method", help="aft, stl, kd, rkd, ft, btune, or an AFT "
                                             "ablation (default: aft)."),
        beta: Optional[str] = typer.Option(None, "--beta", help="Regulariser weight, or 'auto' (hold-out grid "
                                           "search)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps, exactly (default: "
                                            "TransferConfig's)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Student learning rate (default: TransferConfig's)."),
        objective_lr: Optional[float] = typer.Option(None, "--objective-lr", help="Learning rate of the "
                                                     "objective's own parameters."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default 128 (images) / 64 (text)."),
        seed: Optional[int] = typer.Option(None, "--seed"),
        limit_train: Optional[int] = typer.Option(None, "--limit-train", help="Use the first N training examples."),
        limit_test: Optional[int] = typer.Option(None, "--limit-test", help="Evaluate on the first N test examples."),
        eval_every: Optional[int] = typer.Option(None, "--eval-every"),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every"),
        from_scratch: bool = typer.Option(False, "--from-scratch", help="Initialise the student at random."),
        overrides: list[str] = typer.Option([], "--set", help="Any other TransferConfig field, as field=value "
                                            "(repeatable)."),
        resume_run: Optional[str] = typer.Option(None, "--resume", help="Continue RUN from its last checkpoint."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Train a student with AFT or a baseline; the run and its metrics go to the catalog (and TensorBoard files)."""
    from transfer.training import config_file as cf
    from transfer.training.trainer import TransferError, resume, run

    beta_value, settings = _beta(beta), _settings(overrides)  # their own errors (exit 2), before the run's
    try:
        if resume_run:
            result = resume(resume_run, progress=not as_json)
        else:
            given = {"dataset": dataset, "student": student, "method": method, "beta": beta_value, "steps": steps,
                     "lr": lr, "objective_lr": objective_lr, "batch_size": batch_size, "seed": seed,
                     "limit_train": limit_train, "limit_test": limit_test, "eval_every": eval_every,
                     "checkpoint_every": checkpoint_every,
                     "teachers": _names(teachers) if teachers is not None else None,
                     "pretrained": False if from_scratch else None, **settings}
            config = cf.merge(cf.read(config_file) if config_file else {}, given)
            result = run(config, progress=not as_json)
    except (AftzooError, TransferError, ValueError) as exc:  # bad names, bad values, weights not here
        fail(str(exc))
    events = _export_events(result.run_id)
    if as_json:
        print_json({"run_id": result.run_id, "config": result.config, "status": result.status,
                    "test_accuracy": result.test_accuracy, "steps": result.steps,
                    "wall_seconds": result.wall_seconds, "trials": result.trials, "tensorboard": events})
        return
    console.print(f"run {result.run_id}: {result.status}, {result.steps} steps, test accuracy "
                  f"{_fmt(result.test_accuracy)}, {result.wall_seconds:.1f}s")
    for t in result.trials:
        console.print(f"  beta {t['beta']:g}: hold-out accuracy {_fmt(t['holdout_accuracy'])} ({t['run_id']})")
    if events:
        console.print(f"metrics for TensorBoard: {events}", highlight=False, soft_wrap=True)


def _export_events(run_id: str) -> str | None:
    """The run's metrics as TensorBoard event files next to it; None (and a note) where that cannot be done."""
    from transfer.training import distributed
    from transfer.training.tracker import TrackerUnavailable, export_tensorboard

    if not distributed.current().is_main:  # a launched job: rank 0 alone writes, as it does the catalog
        return None
    try:
        return str(export_tensorboard(run_id))
    except TrackerUnavailable as exc:
        err.print(f"[yellow]note:[/] {exc}", highlight=False)
    except (OSError, ValueError) as exc:
        err.print(f"[yellow]note:[/] no TensorBoard files: {exc}", highlight=False)
    return None


def runs_cmd(run_id: Optional[str] = typer.Argument(None, help="One run: its details (or --config, --metrics)."),
             show_config: bool = typer.Option(False, "--config", help="Print RUN's configuration as TOML, "
                                              "ready for `aftzoo transfer --config FILE`."),
             show_metrics: bool = typer.Option(False, "--metrics", help="Print RUN's per-step metrics."),
             tensorboard: bool = typer.Option(False, "--tensorboard", help="Write RUN's metrics as TensorBoard "
                                              "event files next to it."),
             as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")) -> None:
    """List the transfer runs in the catalog, or show one run's configuration or metrics."""
    if run_id is None:
        if show_config or show_metrics or tensorboard:
            fail("--config, --metrics and --tensorboard need a RUN (see `aftzoo runs`)", code=2)
        return _list_runs(as_json)
    from storage.catalog import open_catalog

    with open_catalog() as cat:
        row = cat.get_run(run_id)
    if row is None:
        fail(f"no run {run_id!r} in the catalog; list the runs with `aftzoo runs`")
    if show_config:
        return _print_config(row, as_json)
    if tensorboard:
        folder = _export_events(run_id)
        if folder is None:
            raise typer.Exit(1)
        console.print(f"wrote {folder}; view with: tensorboard --logdir {folder}", highlight=False, soft_wrap=True)
        return
    if show_metrics:
        return _print_metrics(run_id, as_json)
    keep = ("id", "dataset", "student", "teachers", "method", "status", "step", "total_steps", "test_accuracy",
            "wall_seconds", "created_at", "error")
    summary = {k: row.get(k) for k in keep if k in row}
    if as_json:
        print_json(summary)
    else:
        for k, v in summary.items():
            console.print(f"{k}: {_fmt(v) if not isinstance(v, list) else ','.join(v)}", highlight=False)


def _print_config(row: dict, as_json: bool) -> None:
    from transfer.training import config_file as cf

    config = {k: v for k, v in row["config"].items() if k in cf.fields()}
    if as_json:
        print_json(config)
        return
    header = (f"aftzoo transfer run {row['id']} ({row['status']}); run it again with:\n"
              f"  aftzoo runs {row['id']} --config > run.toml && aftzoo transfer --config run.toml")
    print(cf.dumps(config, header), end="")


def _print_metrics(run_id: str, as_json: bool) -> None:
    from transfer.training.trainer import history

    frame = history(run_id)
    if as_json:
        records = frame.to_dict(orient="records")
        print_json([{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                    for r in records])
        return
    cols = list(frame.columns)
    table = Table(*cols, title=f"metrics of {run_id} ({len(frame)} steps)")
    for r in frame.to_dict(orient="records"):
        table.add_row(*(_fmt(r[c]) if c != "step" else str(int(r[c])) for c in cols))
    console.print(table)


def _list_runs(as_json: bool) -> None:
    from transfer.training.trainer import list_runs

    frame = list_runs()
    if as_json:
        print_json(frame.to_dict(orient="records"))
        return
    cols = ["id", "dataset", "student", "teachers", "method", "status", "step", "total_steps", "test_accuracy"]
    table = Table(*cols, title="transfer runs")
    for row in frame.to_dict(orient="records"):
        table.add_row(*(_fmt(row[c]) for c in cols))
    console.print(table)


def cancel_cmd(run_id: str = typer.Argument(..., help="The run to stop at its next checkpoint.")) -> None:
    """Ask a running transfer to stop; it keeps a checkpoint and can be resumed."""
    from transfer.training.trainer import TransferError, request_cancel

    try:
        request_cancel(run_id)
    except TransferError as exc:
        fail(str(exc))
    console.print(f"asked run {run_id} to stop; resume it later with `aftzoo transfer --resume {run_id}`")
