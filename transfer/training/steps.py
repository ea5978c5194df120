"""One optimisation step, evaluation and the learning-rate schedule: what the loop calls at each step."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from transfer.training import distributed
from transfer.training.config import TransferError
from transfer.training.data import batches, take
from transfer.training.objectives import Objective
from transfer.training.students import Student


def _autocast(device: str):
    if device != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@torch.no_grad()
def evaluate(student: Student, inputs, labels: np.ndarray, prompt: str, batch_size: int, device: str) -> float:
    student.eval()
    correct = 0
    for i in batches(len(labels), batch_size):
        idx = np.arange(i, min(i + batch_size, len(labels)))
        with _autocast(device):
            logits, _ = student(student.preprocess(take(inputs, idx), prompt))
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


def check_split(n: int, batch_size: int, world_size: int) -> None:
    """Every process must hold at least one example of every batch (each computes a loss and gradients)."""
    smallest = n % batch_size or batch_size
    if smallest < world_size:
        raise TransferError(f"{world_size} processes split every batch, so each batch needs at least {world_size} "
                            f"examples; batches of {batch_size} from {n} training examples leave {smallest} in the "
                            "last one of each epoch: choose another --batch-size (or --limit-train)")




def per_teacher_weights(objective: Objective, slices: dict[str, list[int]]) -> dict[str, float]:
    weights = getattr(objective, "weights", lambda: None)()
    if weights is None or len(slices) < 2:
        return {}
    return {f"weight_mean/{t}": float(weights[a:b].mean()) for t, (a, b) in slices.items()}
