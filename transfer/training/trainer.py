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
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from storage.catalog import open_catalog
from storage.settings import get_settings, resolve_device
from transfer.training import distributed
from transfer.training.objectives import BETA_GRIDS, METHODS, Objective, make_objective
from transfer.training.students import Student, build_student
from zoo.datasets import Dataset, load_dataset
from zoo.extract import extract_info
from zoo.prompts import prompt_for
from zoo.registry import ModelSpec, is_builtin, register, resolve
from zoo.registry import get as get_spec

BETA_GRID = BETA_GRIDS["aft"]  # AFT's; every method has its own in BETA_GRIDS (beta_grid=None picks it)
SCHEDULES = ("epoch", "step")
# How long a run's own catalog writes wait for another process's turn (an interactive command waits
# 10 s). The app, a ranking or another job may hold the catalog for a while under load; failing a
# long run over a late metric row is worse than waiting for it.
CATALOG_WAIT = 120.0


class TransferError(RuntimeError):
    """A transfer that cannot start or cannot go on; the message says why and what to do."""


class TrainingDiverged(TransferError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Cancelled(TransferError):
    """The run was cancelled; its last checkpoint is kept and it can be resumed."""


class CheckpointError(TransferError):
    """A checkpoint that cannot be written (full disk) or loaded (damaged, or not aftzoo's)."""


@dataclass
class TransferConfig:
    dataset: str
    student: str
    teachers: list[str] = field(default_factory=list)
    method: str = "aft"
    beta: float | str = 1.0            # or "auto": pick from beta_grid on a hold-out (see beta_holdout), then retrain
    beta_grid: tuple[float, ...] | None = None   # None: the method's own grid, objectives.BETA_GRIDS[method]
    beta_holdout: float = 0.1          # beta="auto": the fraction of the training examples its trials evaluate on
    validation_size: int = 0           # > 0: beta="auto" trials train on all training examples and evaluate on the
                                       # next validation_size examples of the train split (unused by limit_train)
    steps: int = 5000                  # exactly this many optimisation steps
    lr: float = 1e-4                   # student (and the baselines' maps)
    objective_lr: float = 1e-2         # AFT's s (the authors' value)
    batch_size: int | None = None      # None: 128 for images, 64 for text (the paper's)
    weight_decay: float = 0.0
    grad_clip: float | None = None     # None: no clipping (the authors'); a number clips each group's norm
    schedule: str = "epoch"            # cosine stepped per "epoch" (the authors') or per "step"
    seed: int = 0
    pretrained: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    holdout_fraction: float = 0.0      # > 0: train on the rest of the train split, evaluate on this part of it
    evaluate_on: str = "test"          # or "validation": the validation_size train examples after limit_train
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    flush_seconds: float = 2.0         # write logged metrics to the catalog at least this often
    device: str | None = None
    parent: str | None = None          # the beta-auto run a trial belongs to

    def validate(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        elif self.method != "stl" and not self.teachers:
            problems.append(f"method {self.method!r} needs at least one teacher (--teachers)")
        if isinstance(self.beta, str):
            if self.beta != "auto":
                problems.append(f"beta must be a number or 'auto'; got {self.beta!r}")
        elif not (self.beta >= 0 and math.isfinite(self.beta)):
            problems.append(f"beta must be a finite number >= 0; got {self.beta}")
        for name in ("steps", "eval_every", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("lr", "objective_lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0; got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0, or None for no clipping; got {self.grad_clip}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.beta_grid is not None and (not self.beta_grid or not all(
                isinstance(b, (int, float)) and b >= 0 and math.isfinite(b) for b in self.beta_grid)):
            problems.append(f"beta_grid must be finite numbers >= 0 (or None for the method's own); got "
                            f"{self.beta_grid}")
        if not 0 < self.beta_holdout < 1:
            problems.append(f"beta_holdout must be in (0, 1); got {self.beta_holdout}")
        if self.validation_size < 0:
            problems.append(f"validation_size must be >= 0; got {self.validation_size}")
        if self.batch_size is not None and self.batch_size < 2:
            problems.append(f"batch_size must be at least 2 (kernels compare examples); got {self.batch_size}")
        if not 0 <= self.holdout_fraction < 1:
            problems.append(f"holdout_fraction must be in [0, 1); got {self.holdout_fraction}")
        if self.evaluate_on not in ("test", "validation"):
            problems.append(f"evaluate_on must be 'test' or 'validation'; got {self.evaluate_on!r}")
        elif self.evaluate_on == "validation" and not (self.validation_size > 0 and self.limit_train):
            problems.append("evaluate_on='validation' needs validation_size > 0 and limit_train (the validation "
                            "examples are the ones after the first limit_train)")
        if problems:
            raise TransferError("; ".join(problems))

    def grid(self) -> tuple[float, ...]:
        """The betas ``beta="auto"`` tries: ``beta_grid``, or the method's own."""
        return tuple(self.beta_grid) if self.beta_grid is not None else BETA_GRIDS.get(self.method, BETA_GRID)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["beta_grid"] = None if self.beta_grid is None else list(self.beta_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TransferConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if d.get("beta_grid") is not None:
            d["beta_grid"] = tuple(d["beta_grid"])
        return cls(**d)


@dataclass
class TransferResult:
    run_id: str
    config: dict
    status: str
    test_accuracy: float | None
    steps: int
    wall_seconds: float
    trials: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Data: the examples, their labels and the teachers' features, aligned by index
# ---------------------------------------------------------------------------------------------
@dataclass
class _Data:
    dataset: Dataset
    train_inputs: object
    train_labels: np.ndarray
    teacher_features: np.ndarray | None   # (N_train, sum of teacher dims), float32
    teacher_slices: dict[str, list[int]]
    eval_inputs: object
    eval_labels: np.ndarray
    eval_name: str                        # "test" or "holdout"
    fingerprint: str


def _take(inputs, idx: np.ndarray):
    return inputs[idx] if isinstance(inputs, np.ndarray) else [inputs[i] for i in idx]


def _prepare_data(cfg: TransferConfig, progress: bool) -> _Data:
    data = load_dataset(cfg.dataset)
    train = data.split("train")
    if cfg.limit_train:
        train = train.head(cfg.limit_train)
    test = data.split("test")
    if cfg.limit_test:
        test = test.head(cfg.limit_test)

    feats, slices, start = [], {}, 0
    for teacher in cfg.teachers:
        info = extract_info(teacher, data, "train", limit=cfg.limit_train, device=cfg.device, progress=progress)
        if info.fingerprint != train.fingerprint:
            raise TransferError(f"the features of {teacher} were made from other data than {cfg.dataset}/train "
                                f"(fingerprint {info.fingerprint[:12]} vs {train.fingerprint[:12]}); extract them again")
        if info.features.shape[0] != len(train):
            raise TransferError(f"{teacher} has features for {info.features.shape[0]} of the {len(train)} training "
                                "examples; extract them again")
        feats.append(np.asarray(info.features, dtype=np.float32))
        slices[teacher] = [start, start + info.features.shape[1]]
        start += info.features.shape[1]
    psi = np.concatenate(feats, axis=1) if feats else None

    inputs, labels = train.inputs, train.labels
    eval_inputs, eval_labels, eval_name = test.inputs, test.labels, "test"
    if cfg.evaluate_on == "validation":
        pool = data.split("train")
        rows = np.arange(cfg.limit_train, cfg.limit_train + cfg.validation_size)
        if rows[-1] >= len(pool.labels):
            raise TransferError(f"{cfg.dataset}/train has {len(pool.labels):,} examples: too few for "
                                f"{cfg.limit_train:,} to train on and {cfg.validation_size:,} to validate on; "
                                "lower --limit-train or the validation size")
        eval_inputs, eval_labels, eval_name = _take(pool.inputs, rows), pool.labels[rows], "validation"
    if cfg.holdout_fraction > 0:
        from sklearn.model_selection import train_test_split

        fit, held = train_test_split(np.arange(len(labels)), test_size=cfg.holdout_fraction,
                                     random_state=cfg.seed, stratify=labels)
        fit, held = np.sort(fit), np.sort(held)
        eval_inputs, eval_labels, eval_name = _take(inputs, held), labels[held], "holdout"
        inputs, labels = _take(inputs, fit), labels[fit]
        psi = psi[fit] if psi is not None else None
    return _Data(data, inputs, labels, psi, slices, eval_inputs, eval_labels, eval_name, train.fingerprint)


# ---------------------------------------------------------------------------------------------
# Building the student, its objective and the optimiser
# ---------------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int):
    return range(0, n, batch_size)


@torch.no_grad()
def _student_features(student: Student, inputs, prompt: str, batch_size: int) -> np.ndarray:
    student.eval()
    out = [student(student.preprocess(_take(inputs, np.arange(i, min(i + batch_size, len(inputs)))), prompt))[1]
           for i in _batches(len(inputs), batch_size)]
    return torch.cat(out).float().cpu().numpy()


def _btuning_kwargs(student: Student, data: _Data, prompt: str, batch_size: int) -> dict:
    """LogME posterior means of each teacher and of the untrained student, on up to 2,000 examples."""
    from transfer.ranking import logme

    n = min(len(data.train_labels), 2000)
    labels = data.train_labels[:n]
    weights, scores = [], []
    for a, b in data.teacher_slices.values():
        score, m = logme(data.teacher_features[:n, a:b], labels, return_weights=True)
        scores.append(score)
        weights.append(torch.as_tensor(m, dtype=torch.float32))
    _, m_s = logme(_student_features(student, _take(data.train_inputs, np.arange(n)), prompt, batch_size),
                   labels, return_weights=True)
    return dict(student_weights=torch.as_tensor(m_s, dtype=torch.float32), teacher_weights=weights,
                teacher_scores=scores, teacher_slices=list(map(tuple, data.teacher_slices.values())))


def _autocast(device: str):
    if device != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@torch.no_grad()
def evaluate(student: Student, inputs, labels: np.ndarray, prompt: str, batch_size: int, device: str) -> float:
    student.eval()
    correct = 0
    for i in _batches(len(labels), batch_size):
        idx = np.arange(i, min(i + batch_size, len(labels)))
        with _autocast(device):
            logits, _ = student(student.preprocess(_take(inputs, idx), prompt))
        correct += int((logits.argmax(1).cpu().numpy() == labels[idx]).sum())
    student.train()
    return correct / len(labels)


class _Net(nn.Module):
    """The student and its objective as one module, ``forward -> (logits, ce, R)``: the unit DistributedDataParallel
    keeps in sync across processes, the objective's own parameters (AFT's s, KD's map) included."""

    def __init__(self, student: Student, objective: Objective, device: str):
        super().__init__()
        self.student, self.objective, self.device = student, objective, device

    def forward(self, batch, labels: torch.Tensor, psi: torch.Tensor | None, total: int):
        with _autocast(self.device):
            logits, phi = self.student(batch)
        if len(labels) == total:
            ce = F.cross_entropy(logits.float(), labels)
        else:  # this process's part of the whole batch's mean: the parts of all processes sum to it
            ce = F.cross_entropy(logits.float(), labels, reduction="sum") / total
        if not self.objective.uses_teacher:
            return logits, ce, phi.new_zeros(())
        # The regulariser compares kernels of whole batches: keep it in float32, and give it every process's rows,
        # so that R is the one of the global batch, as in a single process (psi already is the global batch's).
        return logits, ce, self.objective(distributed.gather_rows(phi.float(), total), psi)


def train_step(student: Student, objective: Objective, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, batch, labels: torch.Tensor, psi: torch.Tensor | None, beta: float,
               grad_clip: float | None, device: str, *, net: nn.Module | None = None,
               batch_total: int | None = None) -> tuple[float, float, float, torch.Tensor] | None:
    """One optimisation step on ``ce + beta * R``; returns (loss, ce, reg, logits), or None if the loss is not finite
    (then nothing is updated).

    In a multi-process run ``net`` is ``_Net(student, objective)`` under DistributedDataParallel; ``batch`` and
    ``labels`` are this process's rows of a global batch of ``batch_total`` examples, ``psi`` the teachers' features
    of the whole global batch. The loss, ce and reg returned are the global batch's, equal on every process, so
    all of them take (or skip) the step together.
    """
    net = net or _Net(student, objective, device)
    logits, ce, reg = net(batch, labels, psi, batch_total or len(labels))
    ce_all = distributed.sum_over_ranks(ce.detach())  # the processes' parts -> the whole batch's mean
    loss = ce_all + beta * reg.detach()
    if not torch.isfinite(loss):
        return None
    optimizer.zero_grad(set_to_none=True)
    # DDP averages the processes' gradients: times the number of processes, the average is the sum of the parts'.
    scaler.scale(ce * distributed.current().world_size + beta * reg).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        # Each group clipped on its own: one norm over both would let an objective's large gradient shrink the
        # student's step to nothing.
        torch.nn.utils.clip_grad_norm_(list(student.parameters()), grad_clip)
        torch.nn.utils.clip_grad_norm_(list(objective.parameters()), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), ce_all.item(), reg.item(), logits.detach()


def cosine(step: int, *, total: int, per: int = 1) -> float:
    """The learning-rate factor at ``step``: a cosine from 1 to 0 over ``total`` steps, held constant over each block
    of ``per`` steps (``per`` = steps per epoch: the authors' CosineAnnealingLR stepped once per epoch)."""
    blocks = math.ceil(total / per)
    return 0.5 * (1 + math.cos(math.pi * min(step // per, blocks) / blocks))


def _check_split(n: int, batch_size: int, world_size: int) -> None:
    """Every process must hold at least one example of every batch (each computes a loss and gradients)."""
    smallest = n % batch_size or batch_size
    if smallest < world_size:
        raise TransferError(f"{world_size} processes split every batch, so each batch needs at least {world_size} "
                            f"examples; batches of {batch_size} from {n} training examples leave {smallest} in the "
                            "last one of each epoch: choose another --batch-size (or --limit-train)")


# ---------------------------------------------------------------------------------------------
# Runs: create, train, resume
# ---------------------------------------------------------------------------------------------
def _run_dir(run_id: str) -> Path:
    return get_settings().home / "runs" / run_id


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[-200:]
        try:  # torch's own message ("unexpected pos 768 vs 662") does not say the disk is full: the numbers do
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free on its disk"
        except OSError:
            free = "is the disk full?"
        raise CheckpointError(f"could not write the checkpoint {path} ({reason}; {free}). Free disk space, then "
                              "resume the run") from None


def _sweep_checkpoint_tmp(run_dir: Path) -> None:
    """Remove half-written checkpoints of processes that died (killed between the write and the rename)."""
    for tmp in run_dir.glob(".checkpoint.pt.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still alive: another process is writing it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        tmp.unlink(missing_ok=True)


_CHECKPOINT_KEYS = ("student", "objective", "optimizer", "scheduler", "scaler", "torch_rng", "step", "wall_seconds")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """A checkpoint written by this trainer, loaded with ``weights_only=True`` (no pickled code runs).

    ``TransferError`` if the file holds anything else than tensors and plain values, or is damaged.
    """
    import pickle

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = " ".join(str(exc).split())
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: ([\w. ]+)", what)
        name = next((g for g in found.groups() if g), "").replace("GLOBAL ", "").strip() if found else ""
        raise CheckpointError(
            f"the checkpoint {path} holds objects, not only tensors and plain values"
            + (f" ({name})" if name else "") + "; aftzoo loads checkpoints with weights_only=True and never runs "
            "pickled code. It was not written by aftzoo: delete it and start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); it is damaged: delete it and start a new run"
                              ) from None
    if not isinstance(state, dict) or "student" not in state:
        raise CheckpointError(f"{path} is not an aftzoo checkpoint (no student weights); start a new run")
    return state


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
    cfg.validate()
    distributed.init()  # under torchrun: join the other processes (nothing to do in a single process)
    _share_names(cfg)
    run_id = distributed.broadcast(run_id or new_run_id(cfg))  # one id for the run, rank 0's
    if not _RUN_ID.fullmatch(run_id):
        raise TransferError(f"a run id is letters, digits, '.', '_' and '-' (it names a folder); got {run_id!r}")
    if cfg.beta == "auto":
        return _run_beta_auto(run_id, cfg, progress=progress, cancel=cancel, on_step=on_step)
    return _train(run_id, cfg, resume=False, progress=progress, cancel=cancel, on_step=on_step)


def check_resumable(run_id: str) -> dict:
    """The catalog row of ``run_id`` if it can be resumed; ``TransferError`` saying why not otherwise."""
    with open_catalog() as cat:
        row = cat.get_run(run_id)
    if row is None:
        raise TransferError(f"no run {run_id!r} in the catalog; list runs with `aftzoo runs` or on the app's Runs page")
    if row["status"] == "completed":
        raise TransferError(f"run {run_id} already completed ({row['step']} steps); nothing to resume")
    return row


def resume(run_id: str, *, progress: bool = True, cancel: threading.Event | None = None,
           on_step: Callable[[dict], None] | None = None) -> TransferResult:
    """Continue a killed, failed or cancelled run from its last checkpoint (with any number of processes)."""
    distributed.init()
    row = distributed.on_main(lambda: check_resumable(run_id))
    cfg = TransferConfig.from_dict(row["config"])
    _share_names(cfg)
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


def _train(run_id: str, cfg: TransferConfig, *, resume: bool, progress: bool, cancel: threading.Event | None,
           on_step: Callable[[dict], None] | None) -> TransferResult:
    """Train one run. In a multi-process job every process runs this; rank 0 alone uses the catalog, writes
    checkpoints, evaluates and calls ``on_step``, and every process takes the same decisions at the same steps."""
    ctx = distributed.current()
    device = resolve_device(cfg.device)
    data = _prepare_data(cfg, progress and ctx.is_main)
    spec = get_spec(cfg.student)
    batch_size = cfg.batch_size or (128 if spec.modality == "image" else 64)
    batch_size = min(batch_size, len(data.train_labels))
    if ctx.active:
        _check_split(len(data.train_labels), batch_size, ctx.world_size)
    steps_per_epoch = math.ceil(len(data.train_labels) / batch_size)
    total_steps = cfg.steps  # exactly the steps asked; the last epoch may be partial
    prompt = prompt_for(cfg.dataset) if spec.modality == "text" and spec.prompt else "{text}"

    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, data.dataset.num_classes, pretrained=cfg.pretrained, device=device,
                            seed=cfg.seed)
    d_t = 0 if data.teacher_features is None else data.teacher_features.shape[1]
    extra = _btuning_kwargs(student, data, prompt, batch_size) if cfg.method == "btune" else {}
    objective: Objective = make_objective(cfg.method, student.feature_dim, d_t, **extra).to(device)
    # Fused Adam: one kernel over all tensors instead of a loop of small ones (0.19 -> 0.03 s a MiniLM step on one
    # CPU thread), the same update to float rounding.
    optimizer = torch.optim.Adam([
        {"params": list(student.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": list(objective.parameters()), "lr": cfg.lr if objective.follows_student_lr else cfg.objective_lr},
    ], fused=device in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        cosine, total=total_steps, per=steps_per_epoch if cfg.schedule == "epoch" else 1))
    use_scaler = device == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    run_dir = _run_dir(run_id)
    ckpt_path = run_dir / "checkpoint.pt"
    record = {**cfg.to_dict(), "teacher_slices": data.teacher_slices, "data_fingerprint": data.fingerprint,
              "batch_size_used": batch_size, "total_steps": total_steps, "device_used": device,
              **({"processes": ctx.world_size} if ctx.active else {})}

    def restore(state: dict) -> None:
        try:
            student.load_state_dict(state["student"])
            objective.load_state_dict(state["objective"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint {ckpt_path} does not fit run {run_id} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                                  "start a new run") from None

    def open_run() -> dict | None:
        """Rank 0: the run's row, and the checkpoint it resumes from (restored here, before the row changes)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        with open_catalog(wait=CATALOG_WAIT) as cat:
            if not resume:
                cat.create_run(run_id, dataset=cfg.dataset, student=cfg.student, teachers=cfg.teachers,
                               method=cfg.method, config=record, total_steps=total_steps)
                return None
            row = cat.get_run(run_id)
            if row["config"].get("data_fingerprint") not in (None, data.fingerprint):
                raise TransferError(f"the data of {cfg.dataset} changed since run {run_id} started "
                                    "(fingerprint mismatch); start a new run")
            _sweep_checkpoint_tmp(run_dir)
            # On the CPU: the RNG state must stay there, and the other processes receive a copy of it.
            state = load_checkpoint(ckpt_path, "cpu") if ckpt_path.is_file() else None
            if state is not None:
                restore(state)
            cat.truncate_metrics(run_id, 0 if state is None else int(state["step"]))
            cat.update_run(run_id, status="running", step=0 if state is None else int(state["step"]), error=None)
            return state

    state = distributed.on_main(open_run)
    step, wall_before = 0, 0.0
    if state is not None:
        if not ctx.is_main:
            restore(state)
        step, wall_before = int(state["step"]), float(state["wall_seconds"])
    net = distributed.wrap(_Net(student, objective, device))

    psi_all = None if data.teacher_features is None else torch.from_numpy(data.teacher_features)
    beta = float(cfg.beta)
    pending: list[tuple[int, str, float]] = []
    started = time.perf_counter()
    last_good = step

    last_flush = time.monotonic()

    def flush(**run_fields) -> str:
        """Write pending metrics and progress; return the run's status (another party may ask to cancel)."""
        nonlocal last_flush
        with open_catalog(wait=CATALOG_WAIT) as cat:
            cat.log_metrics(run_id, pending, step=step, **run_fields)
            status = cat.get_run(run_id)["status"]
        pending.clear()
        last_flush = time.monotonic()
        return status

    def checkpoint() -> str:
        nonlocal last_good
        # Metrics first, then the file: a kill in between resumes from the previous checkpoint and
        # drops the metrics logged after it, so the history never has a gap.
        status = flush(checkpoint=str(ckpt_path))
        try:
            _save_checkpoint(ckpt_path, {
                "student": student.state_dict(), "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(), "step": step,
                "wall_seconds": wall_before + time.perf_counter() - started})
        except CheckpointError as exc:
            kept = f"the checkpoint of step {last_good} is kept" if ckpt_path.is_file() else "no checkpoint is kept"
            raise CheckpointError(f"{exc} with `aftzoo transfer --resume {run_id}` ({kept})") from None
        last_good = step
        return status

    finished = False

    def finish(status: str, error: str | None = None, accuracy: float | None = None) -> TransferResult:
        nonlocal finished
        wall = wall_before + time.perf_counter() - started
        flush(status=status, error=error, test_accuracy=accuracy, wall_seconds=wall)
        finished = True
        return TransferResult(run_id, record, status, accuracy, step, wall)

    def complete() -> TransferResult:
        # The loop evaluated after its last step; a resumed run that had nothing left to train did not.
        accuracy = metrics.get(f"{data.eval_name}_acc")
        if accuracy is None:
            accuracy = evaluate(student, data.eval_inputs, data.eval_labels, prompt, batch_size, device)
        checkpoint()
        return finish("completed", accuracy=accuracy)

    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.method} {cfg.student}", unit="step")
    net.train()
    correct = seen = 0
    perm_epoch, perm = -1, None
    metrics: dict[str, float] = {}
    try:
        try:
            while step < total_steps:
                epoch, offset = divmod(step, steps_per_epoch)
                if epoch != perm_epoch:
                    # One permutation per epoch from (seed, epoch): a resumed run sees the same batches, and so
                    # does every process of a multi-process run.
                    perm_epoch, perm = epoch, torch.randperm(len(data.train_labels), generator=torch.Generator(
                        ).manual_seed(cfg.seed * 100_003 + epoch)).numpy()
                idx = perm[offset * batch_size:(offset + 1) * batch_size]
                mine = idx[distributed.shard(len(idx), ctx)]  # this process's rows (all of them in one process)
                labels = torch.from_numpy(data.train_labels[mine]).to(device)
                psi = None if psi_all is None else psi_all[idx].to(device)  # the whole batch's: R compares them all
                out = train_step(student, objective, optimizer, scaler, student.preprocess(
                    _take(data.train_inputs, mine), prompt), labels, psi, beta, cfg.grad_clip, device, net=net,
                    batch_total=len(idx))
                if out is None:
                    msg = (f"the loss became non-finite at step {step + 1}; lower --lr or --beta. "
                           f"The last good checkpoint (step {last_good}) is kept")
                    distributed.on_main(functools.partial(finish, "failed", error=msg))
                    raise TrainingDiverged(msg)
                loss, ce, reg, logits = out
                scheduler.step()
                step += 1
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(mine)
                if bar is not None:
                    bar.update(1)

                metrics = {}
                if step % cfg.log_every == 0 or step == total_steps:
                    metrics.update(loss=loss, ce=ce, reg=reg, lr=scheduler.get_last_lr()[0])
                if step % cfg.eval_every == 0 or step == total_steps:
                    correct, seen = distributed.sum_over_ranks(torch.tensor([correct, seen])).tolist()
                    metrics["train_acc"] = correct / max(seen, 1)
                    if ctx.is_main:  # the others go on to the next step and wait for rank 0 there
                        metrics[f"{data.eval_name}_acc"] = evaluate(student, data.eval_inputs, data.eval_labels,
                                                                     prompt, batch_size, device)
                        metrics.update(objective.weight_stats())
                        metrics.update(_per_teacher_weights(objective, data.teacher_slices))
                    correct = seen = 0
                if metrics and ctx.is_main:
                    pending.extend((step, k, v) for k, v in metrics.items())
                    if on_step is not None:
                        on_step({"run_id": run_id, "step": step, "total_steps": total_steps, **metrics})
                status = None
                if ctx.is_main and step % cfg.checkpoint_every == 0 and step < total_steps:
                    status = checkpoint()
                elif ctx.is_main and metrics and time.monotonic() - last_flush > cfg.flush_seconds:
                    # Opening the catalog costs tens of milliseconds: batch writes, not every logged step.
                    status = flush()
                stop = status == "cancelling" or (cancel is not None and cancel.is_set())
                if ctx.active:  # all stop at the same step, at one where rank 0 may have read a cancel request
                    stop = (bool(metrics) or step % cfg.checkpoint_every == 0) and distributed.any_rank(stop)
                if step < total_steps and stop:
                    distributed.on_main(lambda: (checkpoint(), finish("cancelled")))
                    raise Cancelled(f"run {run_id} was cancelled at step {step}; resume it with "
                                    f"`aftzoo transfer --resume {run_id}`")
        finally:
            if bar is not None:
                bar.close()
        return distributed.on_main(complete)
    except BaseException as exc:
        lost = distributed.lost_peer(exc) if ctx.active else None
        error = TransferError(f"{lost}; run {run_id} stopped, keeping its last checkpoint: resume it with "
                              f"`aftzoo launch ... -- transfer --resume {run_id}`") if lost else exc
        if ctx.is_main and not finished:  # a crash, a full disk, Ctrl+C: say so in the catalog, not "running" forever
            with distributed.shielded():  # torchrun's SIGTERM, which follows a lost peer, must not cut this short
                _record_stop(run_id, error)
        if lost:
            raise error from exc
        raise


def _record_stop(run_id: str, exc: BaseException) -> None:
    """Best effort: mark a run that stopped on an exception (the catalog itself may be what failed)."""
    if isinstance(exc, KeyboardInterrupt):
        status, error = "cancelled", f"interrupted; resume it with `aftzoo transfer --resume {run_id}`"
    else:
        text = " ".join(str(exc).split())
        status, error = "failed", (text if isinstance(exc, TransferError) else f"{type(exc).__name__}: {text}")
    try:
        with open_catalog(wait=2.0) as cat:
            cat.update_run(run_id, status=status, error=error[:2000])
    except Exception:  # noqa: BLE001 - the original exception is what the caller must see
        pass


def _per_teacher_weights(objective: Objective, slices: dict[str, list[int]]) -> dict[str, float]:
    weights = getattr(objective, "weights", lambda: None)()
    if weights is None or len(slices) < 2:
        return {}
    return {f"weight_mean/{t}": float(weights[a:b].mean()) for t, (a, b) in slices.items()}


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
