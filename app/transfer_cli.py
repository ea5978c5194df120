"""CLI commands over ranking and transfer: ``rank``, ``transfer``, ``runs``, ``cancel``."""
from __future__ import annotations

import math
from typing import Optional

import typer
from rich.table import Table

from app.output import console, fail, print_json


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

    try:
        frame = rank(dataset, _names(models), _names(metrics), limit=limit, progress=not as_json)
    except (KeyError, ValueError, RuntimeError) as exc:  # bad names, bad input, weights not available here
        fail(str(exc).strip("'\""))
    if as_json:
        print_json(frame.to_dict(orient="records"))
        return
    cols = [c for c in ("model", "dim", "n", *_names(metrics), "skipped") if c in frame.columns]
    table = Table(*cols, title=f"ranking on {dataset} (best first by {_names(metrics)[0]})")
    for row in frame.to_dict(orient="records"):
        table.add_row(*(_fmt(row[c]) for c in cols))
    console.print(table)


def transfer_cmd(
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Data set name."),
        student: Optional[str] = typer.Option(None, "--student", "-s", help="Student model name."),
        teachers: str = typer.Option("", "--teachers", "-t", help="Comma-separated teacher names."),
        method: str = typer.Option("aft", "--method", help="aft, stl, kd, rkd, ft, btune, or an AFT ablation."),
        beta: str = typer.Option("1.0", "--beta", help="Regulariser weight, or 'auto' (10% hold-out grid search)."),
        steps: int = typer.Option(5000, "--steps", help="Training steps (rounded up to whole epochs)."),
        lr: float = typer.Option(1e-4, "--lr", help="Student learning rate."),
        objective_lr: float = typer.Option(1e-2, "--objective-lr", help="Learning rate of the objective's own parameters."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default 128 (images) / 64 (text)."),
        seed: int = typer.Option(0, "--seed"),
        limit_train: Optional[int] = typer.Option(None, "--limit-train", help="Use the first N training examples."),
        limit_test: Optional[int] = typer.Option(None, "--limit-test", help="Evaluate on the first N test examples."),
        eval_every: int = typer.Option(100, "--eval-every"),
        checkpoint_every: int = typer.Option(100, "--checkpoint-every"),
        from_scratch: bool = typer.Option(False, "--from-scratch", help="Initialise the student at random."),
        resume_run: Optional[str] = typer.Option(None, "--resume", help="Continue RUN from its last checkpoint."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Train a student with AFT or a baseline; the run and its metrics go to the catalog."""
    from transfer.training.trainer import TransferConfig, TransferError, resume, run

    if not resume_run and (not dataset or not student):
        fail("--dataset and --student are required (or --resume RUN)", code=2)
    try:
        beta_value: float | str = beta if beta == "auto" else float(beta)
    except ValueError:
        fail(f"--beta must be a number or 'auto'; got {beta!r}", code=2)
    try:
        if resume_run:
            result = resume(resume_run, progress=not as_json)
        else:
            config = TransferConfig(dataset=dataset, student=student, teachers=_names(teachers), method=method,
                                    beta=beta_value, steps=steps, lr=lr, objective_lr=objective_lr,
                                    batch_size=batch_size, seed=seed, limit_train=limit_train, limit_test=limit_test,
                                    eval_every=eval_every, checkpoint_every=checkpoint_every,
                                    pretrained=not from_scratch)
            result = run(config, progress=not as_json)
    except (TransferError, KeyError, ValueError, RuntimeError) as exc:  # incl. weights not available here
        fail(str(exc).strip("'\""))
    if as_json:
        print_json({"run_id": result.run_id, "config": result.config, "status": result.status,
                    "test_accuracy": result.test_accuracy, "steps": result.steps,
                    "wall_seconds": result.wall_seconds, "trials": result.trials})
        return
    console.print(f"run {result.run_id}: {result.status}, {result.steps} steps, test accuracy "
                  f"{_fmt(result.test_accuracy)}, {result.wall_seconds:.1f}s")
    for t in result.trials:
        console.print(f"  beta {t['beta']:g}: hold-out accuracy {_fmt(t['holdout_accuracy'])} ({t['run_id']})")


def runs_cmd(as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout.")) -> None:
    """List the transfer runs in the catalog."""
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
