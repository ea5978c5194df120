"""``aftzoo build``: a small model in one flow, from ranked teachers to an export and a report card."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from app.output import console, err, fail, print_json
from storage.errors import AftzooError


def _names(csv: str | None) -> list[str] | None:
    return [n.strip() for n in csv.split(",") if n.strip()] if csv else None


def build_cmd(
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Data set name (see `aftzoo datasets`)."),
        student: Optional[str] = typer.Option(None, "--student", "-s", help="Student (default: the modality's, "
                                              "resnet18-small for images, minilm-l6 for texts)."),
        teachers: Optional[str] = typer.Option(None, "--teachers", help="auto (every teacher with weights here) or "
                                               "T1,T2."),
        top_k: Optional[int] = typer.Option(None, "--top-k", help="Teachers kept after ranking (default 2)."),
        methods: Optional[str] = typer.Option(None, "--methods", help="Candidates, e.g. stl,kd,aft (STL always)."),
        budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", help="Bound the whole flow."),
        parallel: Optional[int] = typer.Option(None, "--parallel", help="Trials at once (default: one per core, up to 4)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps of each run (default: the "
                                            "trainer's; a budget lowers it)."),
        limit_train: Optional[int] = typer.Option(None, "--limit-train", help="Use the first N training examples."),
        limit_test: Optional[int] = typer.Option(None, "--limit-test", help="Evaluate on the first N test examples."),
        config: Optional[Path] = typer.Option(None, "--config", help="A build.toml; flags override it."),
        as_json: bool = typer.Option(False, "--json", help="The build's summary as one JSON object on stdout.")) -> None:
    """Build a small model: rank teachers, choose method and beta on a hold-out (STL always a candidate), retrain
    the winner on all data, export it (int8 when within tolerance) and write a report card."""
    import os

    # Before torch loads: on shared, oversubscribed cores, spinning OpenMP threads made the steps and the feature
    # extraction several times slower (see transfer.jobs.queue.worker_environment, which sets it for the trials).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from transfer.build.config import BuildConfig, read_toml
    from transfer.build.flow import run_build
    from transfer.training.trainer import TransferError

    try:
        settings = read_toml(config) if config else {}
        flags = {"dataset": dataset, "student": student, "teachers": teachers, "top_k": top_k,
                 "methods": _names(methods), "budget_minutes": budget_minutes, "parallel": parallel, "steps": steps,
                 "limit_train": limit_train, "limit_test": limit_test}
        settings.update({k: v for k, v in flags.items() if v is not None})
        if not settings.get("dataset"):
            fail("--dataset is required (or a --config that names one)", code=2)
        cfg = BuildConfig.from_dict(settings)
    except TransferError as exc:
        fail(str(exc), code=2)
    try:
        summary = run_build(cfg, on_progress=None if as_json else _bar())
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to resume build {cfg.build_id()}", code=130)
    except (AftzooError, ValueError, RuntimeError, OSError) as exc:  # bad names and values, a full disk
        fail(str(exc))
    if as_json:
        print_json({k: v for k, v in summary.items() if k != "card"} | {"card": {k: v for k, v in
                                                                              summary["card"].items() if k != "text"}})
        return
    console.print(summary["card"]["text"], markup=False, highlight=False, soft_wrap=True)
    err.print(f"report card: {summary['card']['markdown']} (and .html); export: {summary['export']['path']}; "
              f"zip: {summary['export']['zip']}", highlight=False, soft_wrap=True)


def _bar():
    """A progress bar on stderr with the stage, and the time left estimated from measured step times."""
    from tqdm import tqdm

    bar = tqdm(total=100, bar_format="{percentage:3.0f}%|{bar:20}| {desc}")

    def update(state: dict) -> None:
        bar.n = round(100 * state["fraction"], 1)
        eta = state.get("eta_seconds")
        left = "" if eta is None or state.get("done") else f"about {eta / 60:.1f} min left; "
        bar.set_description_str(f"{state['stage']}: {left}{state.get('message', '')}"[:120])
        if state.get("done"):
            bar.close()

    return update
