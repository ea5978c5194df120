"""The one configuration of a transfer run, its result, and the errors a run can end with.

Every hyper-parameter of the trainer is a field of ``TransferConfig``; a run's row in the catalog keeps
it whole, so a resume (and a reader) sees exactly what trained. Rows written before a field existed
load with the field's default, which is the value the code used then.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from storage.errors import AftzooError
from transfer.training.objectives import BETA_GRIDS, METHODS

BETA_GRID = BETA_GRIDS["aft"]  # AFT's; every method has its own in BETA_GRIDS (beta_grid=None picks it)
SCHEDULES = ("epoch", "step")


class TransferError(AftzooError, RuntimeError):
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
    # Defaults follow the evidence (docs/evidence/EVIDENCE.md): KD with beta from a hold-out beat plain
    # fine-tuning on text and images (paired intervals excluding 0); AFT tied it, so it is not the default.
    method: str = "kd"
    beta: float | str = "auto"         # or a number; "auto": pick from beta_grid on a hold-out (beta_holdout), then retrain
    beta_grid: tuple[float, ...] | None = None   # None: the method's own grid, objectives.BETA_GRIDS[method]
    beta_holdout: float = 0.1          # beta="auto": the fraction of the training examples its trials evaluate on
    validation_size: int = 0           # > 0: beta="auto" trials train on all training examples and evaluate on the
                                       # next validation_size examples of the train split (unused by limit_train)
    steps: int = 300                   # exactly this many optimisation steps (STL had converged by 300 in the evidence)
    lr: float = 1e-4                   # student (and the baselines' maps)
    objective_lr: float = 1e-2         # AFT's s (the authors' value)
    batch_size: int | None = None      # None: image_batch_size or text_batch_size, by the data set's modality
    image_batch_size: int = 128        # the paper's
    text_batch_size: int = 64          # the paper's
    bucket_rows: int = 8               # text batches by length groups of this many rows (BERT: packed tokens); 0: one batch
    weight_decay: float = 0.0
    grad_clip: float | None = None     # None: no clipping (the authors'); a number clips each group's norm
    schedule: str = "epoch"            # cosine stepped per "epoch" (the authors') or per "step"
    rbf_gamma: float = 1.0             # aft_rbf's kernel exp(-gamma |x - y|^2) on unit rows (distances in [0, 4])
    btune_examples: int = 2000         # B-Tuning: LogME fits on at most this many training examples
    btune_temperature: float = 0.1     # B-Tuning: teacher k weighs softmax(LogME_k / temperature)
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
        for name in ("steps", "eval_every", "log_every", "checkpoint_every", "btune_examples"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("lr", "objective_lr", "rbf_gamma", "btune_temperature"):
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
        for name in ("batch_size", "image_batch_size", "text_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                problems.append(f"{name} must be at least 2 (kernels compare examples); got {getattr(self, name)}")
        if self.bucket_rows < 0:
            problems.append(f"bucket_rows must be >= 0 (0: no sub-batches); got {self.bucket_rows}")
        if not 0 <= self.holdout_fraction < 1:
            problems.append(f"holdout_fraction must be in [0, 1); got {self.holdout_fraction}")
        if self.evaluate_on not in ("test", "validation"):
            problems.append(f"evaluate_on must be 'test' or 'validation'; got {self.evaluate_on!r}")
        elif self.evaluate_on == "validation" and not (self.validation_size > 0 and self.limit_train):
            problems.append("evaluate_on='validation' needs validation_size > 0 and limit_train (the validation "
                            "examples are the ones after the first limit_train)")
        if problems:
            raise TransferError("; ".join(problems))

    def batch_for(self, modality: str) -> int:
        """The batch size asked, or the modality's default."""
        return self.batch_size or (self.image_batch_size if modality == "image" else self.text_batch_size)

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
