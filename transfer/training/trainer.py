"""The transfer trainer: one readable loop, every hyper-parameter in ``TransferConfig``.

loss = cross-entropy(student(x), y) + beta * R(phi, psi), where phi are the student's
penultimate features and psi the teachers' cached features for the same examples
(rows aligned by index with the training split). phi is the student's raw penultimate
representation (transfer.training.students). Adam updates the student at ``lr``, AFT's s at
``objective_lr`` and the baselines' maps (KD, RKD, FT) at the student's ``lr``, as the authors'
run.py does; all follow one cosine decay to 0, stepped once per epoch (the authors') or per step
(``schedule``). The run takes exactly ``steps`` steps. Metrics go to the catalog as training goes;
a checkpoint is written every ``checkpoint_every`` steps, and ``resume(run_id)`` continues from the last one.

Under torchrun (``aftzoo launch -- transfer ...``) every process runs the same loop on its own
slice of each global batch, with the student and the objective under DistributedDataParallel.
The batch size, the per-epoch permutation and the objective are those of a single process: the
cross-entropy is scaled so that the averaged gradients are the whole batch's, and the regulariser
is computed on the student features of the whole batch, all-gathered with their gradients (AFT's
kernel compares every pair of examples of the batch, so a kernel per process would be another
objective). BatchNorm statistics are each process's own, as in DistributedDataParallel by default.
Rank 0 alone writes the catalog and checkpoints and evaluates.

The rooms: ``config`` (the hyper-parameters), ``data`` (examples and teacher features), ``steps`` (one
optimisation step, evaluation, the schedule), ``recorder`` (the run's catalog row, checkpoints and stops);
this module holds the loop and the ways to start a run.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from storage.catalog import open_catalog
from storage.settings import resolve_device
from transfer.training import distributed, recorder
from transfer.training.config import (  # noqa: F401 - the trainer's public names, as before the split
    BETA_GRID, SCHEDULES, Cancelled, CheckpointError, TrainingDiverged, TransferConfig, TransferError, TransferResult,
)
from transfer.training.data import _Data, btuning_kwargs, prepare_data, take
from transfer.training.objectives import Objective, make_objective
from transfer.training.recorder import CATALOG_WAIT, Recorder, load_checkpoint, run_dir  # noqa: F401
from transfer.training.steps import (  # noqa: F401
    _Net, check_split, cosine, evaluate, per_teacher_weights, train_step,
)
from transfer.training.students import Student, build_student
from zoo.datasets import load_dataset
from zoo.prompts import prompt_for
from zoo.registry import ModelSpec, is_builtin, register, resolve
from zoo.registry import get as get_spec

_run_dir, _check_split = run_dir, check_split  # the names tests and tools used before the split


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def new_run_id(cfg: TransferConfig) -> str:
    return f"{cfg.method}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def check_names(cfg: TransferConfig) -> list[ModelSpec]:
    """Fail before any work on a bad data-set, student or teacher name (the errors list valid names), or on a
    student or teacher of another modality than the data set; return the models' specs."""
    modality = load_dataset(cfg.dataset).modality
    specs = [resolve(name) for name in [cfg.student, *cfg.teachers]]
    wrong = [f"{'student' if i == 0 else 'teacher'} {s.name} is {'an' if s.modality == 'image' else 'a'} "
             f"{s.modality} model" for i, s in enumerate(specs) if s.modality != modality]
    if wrong:
        raise TransferError(f"{cfg.dataset} is {modality} data, but the {'; the '.join(wrong)}: choose "
                            f"{modality} models (aftzoo models --modality {modality} lists them)")
    return specs


def _share_names(cfg: TransferConfig) -> None:
    """``check_names`` on rank 0, whose answers the other processes register: a user's model may be recorded in
    the catalog, which they do not open."""
    specs = distributed.on_main(lambda: check_names(cfg))
    if not distributed.current().is_main:
        for spec in specs:
            if not is_builtin(spec.name):
                register(spec, overwrite=True)


def run(config: TransferConfig | dict, *, run_id: str | None = None, progress: bool = True,
        cancel: threading.Event | None = None, on_step: Callable[[dict], None] | None = None) -> TransferResult:
    """Train ``config.student`` with ``config.method``; every run (and each beta trial) is recorded.

    ``run_id`` lets a caller that launches the run elsewhere (the app's job queue) know its id
    before it exists; by default one is made from the method, data set and time. Under torchrun
    every process calls this alike (see the module's docstring); ``on_step`` runs on rank 0.
    """
    cfg = config if isinstance(config, TransferConfig) else TransferConfig.from_dict(config)
    if cfg.method == "stl" and cfg.beta == "auto":  # no regulariser, so nothing to search: one run
        cfg = dataclasses.replace(cfg, beta=0.0)
    cfg.validate()
    distributed.init()  # under torchrun: join the other processes (nothing to do in a single process)
    _share_names(cfg)
    run_id = distributed.broadcast(run_id or new_run_id(cfg))  # one id for the run, rank 0's
    if not _RUN_ID.fullmatch(run_id):
        raise TransferError(f"a run id is letters, digits, '.', '_' and '-' (it names a folder); got {run_id!r}")
    with recorder.signals_cancel(cancel) as cancel:
        if cfg.beta == "auto":
            return _run_beta_auto(run_id, cfg, progress=progress, cancel=cancel, on_step=on_step)
        return _train(run_id, cfg, resume=False, progress=progress, cancel=cancel, on_step=on_step)


def check_resumable(run_id: str, *, claim: bool = False) -> dict:
    """The catalog row of ``run_id`` if it can be resumed; ``TransferError`` saying why not otherwise.

    A row left "running" by a process that is gone is first given the stop it recorded (or could not); with
    ``claim`` (a resume), a run whose process still trains is refused."""
    with open_catalog() as cat:
        row = cat.get_run(run_id)
    row = recorder.reconcile(run_id, row, claim=claim)
    if row is None:
        raise TransferError(f"no run {run_id!r} in the catalog; list runs with `aftzoo runs` or on the app's Runs page")
    if row["status"] == "completed":
        raise TransferError(f"run {run_id} already completed ({row['step']} steps); nothing to resume")
    return row


def resume(run_id: str, *, progress: bool = True, cancel: threading.Event | None = None,
           on_step: Callable[[dict], None] | None = None) -> TransferResult:
    """Continue a killed, failed or cancelled run from its last checkpoint (with any number of processes)."""
    distributed.init()
    row = distributed.on_main(lambda: check_resumable(run_id, claim=True))
    cfg = TransferConfig.from_dict(row["config"])
    _share_names(cfg)
    with recorder.signals_cancel(cancel) as cancel:
        return _train(run_id, cfg, resume=True, progress=progress, cancel=cancel, on_step=on_step)


def mark_stopped(run_id: str, status: str, error: str) -> None:
    """Record that a run's process was stopped from outside before it could record it itself."""
    with open_catalog() as cat:
        row = cat.get_run(run_id)
        if row is not None and row["status"] in ("running", "cancelling"):
            cat.update_run(run_id, status=status, error=error)


def request_cancel(run_id: str) -> None:
    """Ask a run in another thread or process to stop at its next metrics flush."""
    with open_catalog() as cat:
        if cat.get_run(run_id) is None:
            raise TransferError(f"no run {run_id!r} in the catalog")
        cat.update_run(run_id, status="cancelling")




# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
@dataclass
class _Parts:
    """What one run trains with, built in the same order every time (same seed, same numbers)."""

    cfg: TransferConfig
    data: _Data
    device: str
    batch_size: int
    steps_per_epoch: int
    prompt: str
    student: Student
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    perm: tuple = (-1, None)           # (epoch, its permutation)

    def state(self, step: int, wall_seconds: float) -> dict:
        return {"student": self.student.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "step": step,
                "wall_seconds": wall_seconds}

    def restore(self, state: dict, run_id: str) -> None:
        try:
            self.student.load_state_dict(state["student"])
            self.objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint {run_dir(run_id) / 'checkpoint.pt'} does not fit run {run_id} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                                  "start a new run") from None

    def permutation(self, epoch: int) -> np.ndarray:
        # One permutation per epoch from (seed, epoch): a resumed run sees the same batches, and so does every
        # process of a multi-process run.
        if self.perm[0] != epoch:
            self.perm = (epoch, torch.randperm(len(self.data.train_labels), generator=torch.Generator().manual_seed(
                self.cfg.seed * 100_003 + epoch)).numpy())
        return self.perm[1]

    def batch(self, step: int) -> np.ndarray:
        epoch, offset = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[offset * self.batch_size:(offset + 1) * self.batch_size]

    def evaluate(self) -> float:
        return evaluate(self.student, self.data.eval_inputs, self.data.eval_labels, self.prompt, self.batch_size,
                        self.device)


def _build(cfg: TransferConfig, progress: bool) -> _Parts:
    ctx = distributed.current()
    device = resolve_device(cfg.device)
    data = prepare_data(cfg, progress)
    spec = get_spec(cfg.student)
    batch_size = min(cfg.batch_for(spec.modality), len(data.train_labels))
    if ctx.active:
        check_split(len(data.train_labels), batch_size, ctx.world_size)
    steps_per_epoch = math.ceil(len(data.train_labels) / batch_size)
    prompt = prompt_for(cfg.dataset) if spec.modality == "text" and spec.prompt else "{text}"

    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, data.dataset.num_classes, pretrained=cfg.pretrained, device=device,
                            seed=cfg.seed, bucket_rows=cfg.bucket_rows)
    d_t = 0 if data.teacher_features is None else data.teacher_features.shape[1]
    extra = btuning_kwargs(student, data, prompt, batch_size, cfg) if cfg.method == "btune" else {}
    objective = make_objective(cfg.method, student.feature_dim, d_t, rbf_gamma=cfg.rbf_gamma, **extra).to(device)
    # Fused Adam: one kernel over all tensors instead of a loop of small ones (0.19 -> 0.03 s a MiniLM step on one
    # CPU thread), the same update to float rounding.
    optimizer = torch.optim.Adam([
        {"params": list(student.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": list(objective.parameters()), "lr": cfg.lr if objective.follows_student_lr else cfg.objective_lr},
    ], fused=device in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        cosine, total=cfg.steps, per=steps_per_epoch if cfg.schedule == "epoch" else 1))
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda" and not torch.cuda.is_bf16_supported())
    return _Parts(cfg, data, device, batch_size, steps_per_epoch, prompt, student, objective, optimizer, scheduler,
                  scaler)


def _train(run_id: str, cfg: TransferConfig, *, resume: bool, progress: bool, cancel: threading.Event | None,
           on_step: Callable[[dict], None] | None) -> TransferResult:
    """Train one run. In a multi-process job every process runs this; rank 0 alone uses the catalog, writes
    checkpoints, evaluates and calls ``on_step``, and every process takes the same decisions at the same steps."""
    ctx = distributed.current()
    t = _build(cfg, progress and ctx.is_main)
    record = {**cfg.to_dict(), "teacher_slices": t.data.teacher_slices, "data_fingerprint": t.data.fingerprint,
              "batch_size_used": t.batch_size, "total_steps": cfg.steps, "device_used": t.device,
              **({"processes": ctx.world_size} if ctx.active else {})}
    rec = Recorder(run_id, record, cfg.steps, cfg.flush_seconds) if ctx.is_main else None
    restore = functools.partial(_Parts.restore, t, run_id=run_id)
    state = distributed.on_main(lambda: rec.open(resume, t.data.fingerprint, restore))
    if state is not None and not ctx.is_main:
        restore(state)
    step = 0 if state is None else int(state["step"])
    before, started = (0.0 if state is None else float(state["wall_seconds"])), time.perf_counter()
    wall = lambda: before + time.perf_counter() - started  # noqa: E731
    try:
        step, accuracy = _loop(t, rec, run_id, step, wall, cancel, on_step, progress and ctx.is_main)

        def complete() -> TransferResult:
            # The loop evaluated after its last step; a resumed run that had nothing left to train did not.
            final = accuracy if accuracy is not None else t.evaluate()
            rec.checkpoint(step, t.state(step, wall()))
            rec.finish("completed", step, wall(), accuracy=final)
            return TransferResult(run_id, record, "completed", final, step, wall())

        return distributed.on_main(complete)
    except BaseException as exc:
        lost = distributed.lost_peer(exc) if ctx.active else None
        error = TransferError(f"{lost}; run {run_id} stopped, keeping its last checkpoint: resume it with "
                              f"`aftzoo launch ... -- transfer --resume {run_id}`") if lost else exc
        if ctx.is_main and not rec.finished:  # a crash, a full disk, Ctrl+C: say so, never "running" forever
            with distributed.shielded():  # torchrun's SIGTERM, which follows a lost peer, must not cut this short
                rec.record_stop(error)
        if lost:
            raise error from exc
        raise
    finally:
        if rec is not None:
            rec.close()


def _loop(t: _Parts, rec: Recorder | None, run_id: str, step: int, wall: Callable[[], float],
          cancel: threading.Event | None, on_step: Callable[[dict], None] | None,
          progress: bool) -> tuple[int, float | None]:
    """Train from ``step`` to ``cfg.steps``; return the last step and the accuracy evaluated there (if any)."""
    cfg, data, ctx = t.cfg, t.data, distributed.current()
    net = distributed.wrap(_Net(t.student, t.objective, t.device))
    psi_all = None if data.teacher_features is None else torch.from_numpy(data.teacher_features)
    bar = _bar(cfg, step, progress)
    net.train()
    correct = seen = 0
    metrics: dict[str, float] = {}
    try:
        while step < cfg.steps:
            idx = t.batch(step)
            mine = idx[distributed.shard(len(idx), ctx)]  # this process's rows (all of them in one process)
            labels = torch.from_numpy(data.train_labels[mine]).to(t.device)
            psi = None if psi_all is None else psi_all[idx].to(t.device)  # the whole batch's: R compares them all
            out = train_step(t.student, t.objective, t.optimizer, t.scaler, t.student.preprocess(
                take(data.train_inputs, mine), t.prompt), labels, psi, float(cfg.beta), cfg.grad_clip, t.device,
                net=net, batch_total=len(idx))
            if out is None:
                msg = (f"the loss became non-finite at step {step + 1}; lower --lr or --beta. "
                       f"The last good checkpoint (step {rec.last_good if rec else 0}) is kept")
                distributed.on_main(lambda step=step, msg=msg: rec.finish("failed", step, wall(), error=msg))
                raise TrainingDiverged(msg)
            loss, ce, reg, logits = out
            t.scheduler.step()
            step += 1
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(mine)
            if bar is not None:
                bar.update(1)

            metrics = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics.update(loss=loss, ce=ce, reg=reg, lr=t.scheduler.get_last_lr()[0])
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics.update(_evaluation(t, correct, seen))
                correct = seen = 0
            if metrics and ctx.is_main:
                rec.log(step, metrics)
                if on_step is not None:
                    on_step({"run_id": run_id, "step": step, "total_steps": cfg.steps, **metrics})
            _maybe_stop(t, rec, run_id, step, bool(metrics), wall, cancel)
    finally:
        if bar is not None:
            bar.close()
    return step, metrics.get(f"{data.eval_name}_acc")


def _evaluation(t: _Parts, correct: int, seen: int) -> dict[str, float]:
    correct, seen = distributed.sum_over_ranks(torch.tensor([correct, seen])).tolist()
    metrics = {"train_acc": correct / max(seen, 1)}
    if distributed.current().is_main:  # the others go on to the next step and wait for rank 0 there
        metrics[f"{t.data.eval_name}_acc"] = t.evaluate()
        metrics.update(t.objective.weight_stats())
        metrics.update(per_teacher_weights(t.objective, t.data.teacher_slices))
    return metrics


def _maybe_stop(t: _Parts, rec: Recorder | None, run_id: str, step: int, logged: bool, wall: Callable[[], float],
                cancel: threading.Event | None) -> None:
    """Checkpoint or flush when due; stop (``Cancelled``) at a checkpoint when a cancel or a signal asks."""
    cfg, ctx = t.cfg, distributed.current()
    status = None
    if ctx.is_main and step % cfg.checkpoint_every == 0 and step < cfg.steps:
        status = rec.checkpoint(step, t.state(step, wall()))
    elif ctx.is_main and logged and rec.flush_due():
        status = rec.flush(step)
    stop = status == "cancelling" or (cancel is not None and cancel.is_set())
    if ctx.active:  # all stop at the same step, at one where rank 0 may have read a cancel request
        stop = (logged or step % cfg.checkpoint_every == 0) and distributed.any_rank(stop)
    if step >= cfg.steps or not stop:
        return
    reason = getattr(cancel, "reason", None)  # set by a stop signal (recorder.signals_cancel)
    resume_hint = f"resume it with `aftzoo transfer --resume {run_id}`"

    def record() -> None:
        rec.checkpoint(step, t.state(step, wall()))
        rec.finish("cancelled", step, wall(), error=f"{reason} at step {step}; {resume_hint}" if reason else None)

    distributed.on_main(record)
    raise Cancelled(f"run {run_id} was {reason or 'cancelled'} at step {step}; {resume_hint}")


def _bar(cfg: TransferConfig, step: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=step, desc=f"{cfg.method} {cfg.student}", unit="step")


def _run_beta_auto(parent: str, cfg: TransferConfig, *, progress: bool, cancel, on_step) -> TransferResult:
    """Try each beta of ``cfg.grid()`` on a hold-out, then retrain on all the training examples with the best.

    The hold-out is the ``validation_size`` train examples after the first ``limit_train`` when set (the trials then
    train on the same examples as the final run), else a ``beta_holdout`` fraction of the training examples."""
    def create() -> None:
        with open_catalog() as cat:
            cat.create_run(parent, dataset=cfg.dataset, student=cfg.student, teachers=cfg.teachers,
                           method=cfg.method, config={**cfg.to_dict(), "kind": "beta-auto"}, total_steps=None,
                           status="running")

    distributed.on_main(create)
    started = time.perf_counter()
    trials = []
    try:
        for beta in cfg.grid():
            held = (dict(evaluate_on="validation") if cfg.validation_size > 0
                    else dict(holdout_fraction=cfg.beta_holdout))
            trial_cfg = dataclasses.replace(cfg, beta=float(beta), parent=parent, **held)
            res = _train(distributed.broadcast(new_run_id(trial_cfg)), trial_cfg, resume=False, progress=progress,
                         cancel=cancel, on_step=on_step)
            trials.append({"run_id": res.run_id, "beta": float(beta), "holdout_accuracy": res.test_accuracy})
        best = max(trials, key=lambda t: (t["holdout_accuracy"], -t["beta"]))
        final_cfg = dataclasses.replace(cfg, beta=best["beta"], parent=parent)
        final = _train(distributed.broadcast(new_run_id(final_cfg)), final_cfg, resume=False, progress=progress,
                       cancel=cancel, on_step=on_step)
    except BaseException as exc:
        if distributed.current().is_main:
            with open_catalog() as cat:
                cat.update_run(parent, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    wall = time.perf_counter() - started
    summary = {**cfg.to_dict(), "kind": "beta-auto", "trials": trials, "chosen_beta": best["beta"],
               "final_run": final.run_id}

    def complete() -> None:
        with open_catalog() as cat:
            cat.update_run(parent, status="completed", config=summary, test_accuracy=final.test_accuracy,
                           wall_seconds=wall, step=final.steps)

    distributed.on_main(complete)
    return TransferResult(final.run_id, {**final.config, "chosen_beta": best["beta"], "beta_auto_run": parent},
                          final.status, final.test_accuracy, final.steps, wall, trials=trials)


def history(run_id: str):
    """The run's metric history as a DataFrame (one row per logged step)."""
    with open_catalog() as cat:
        return cat.metrics(run_id)


def list_runs():
    with open_catalog() as cat:
        df = cat.runs()
    df["teachers"] = df["teachers"].map(lambda t: ",".join(json.loads(t)) if t else "")
    return df
