"""The transfer objectives: loss = cross-entropy + beta * R(phi, psi).

Each objective is an ``nn.Module`` whose ``forward(phi, psi)`` returns the regulariser R
for one batch of student features phi (B x d_s) and cached teacher features psi
(B x d_t, the concatenation over teachers). Its own parameters (AFT's s, KD's map, ...)
are trained jointly with the student at their own learning rate. Definitions follow
PRODUCT.md and the paper's section 5.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfer.training.aft import EPS, aft_loss, kernel_distance


class Objective(nn.Module):
    """R = 0: fine-tune the student alone (STL). The base of every other objective."""

    uses_teacher = False

    def forward(self, phi: torch.Tensor, psi: torch.Tensor | None) -> torch.Tensor:
        return phi.new_zeros(())

    def weight_stats(self) -> dict[str, float]:
        """Statistics of learned teacher-dimension weights worth logging (none by default)."""
        return {}


class AFT(Objective):
    """AFT: linear-kernel distance to the teacher features re-weighted by sigmoid(s), s learned from 0.

    ``learn_weights=False`` fixes the weights to 1 (the "identity" ablation);
    ``kernel="rbf"`` swaps the linear kernel for an RBF one (the "RBF" ablation).
    """

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int, *, kernel: str = "linear", learn_weights: bool = True):
        super().__init__()
        self.kernel = kernel
        self.scale_logits = nn.Parameter(torch.zeros(teacher_dim)) if learn_weights else None

    def weights(self) -> torch.Tensor | None:
        return None if self.scale_logits is None else torch.sigmoid(self.scale_logits.detach())

    def forward(self, phi, psi):
        if self.kernel == "linear":
            return aft_loss(phi.float(), psi.float(), self.scale_logits)
        psi = psi if self.scale_logits is None else psi * torch.sigmoid(self.scale_logits)
        return kernel_distance(phi.float(), psi.float(), kernel=self.kernel)

    def weight_stats(self):
        w = self.weights()
        if w is None:
            return {}
        return {"weight_mean": float(w.mean()), "weight_std": float(w.std()) if w.numel() > 1 else 0.0,
                "weight_min": float(w.min()), "weight_max": float(w.max())}


class AFTDense(Objective):
    """Ablation: a dense d_t x d_t map (initialised at the identity) instead of a diagonal."""

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.map = nn.Linear(teacher_dim, teacher_dim, bias=False)
        nn.init.eye_(self.map.weight)

    def forward(self, phi, psi):
        return kernel_distance(phi.float(), self.map(psi.float()))


class AFTNoKernel(Objective):
    """Ablation (the paper's Eq. 6): a learned linear map teacher -> student on centred features, MSE."""

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.map = nn.Linear(teacher_dim, student_dim, bias=False)

    def forward(self, phi, psi):
        phi = phi.float() - phi.float().mean(0, keepdim=True)
        psi = psi.float() - psi.float().mean(0, keepdim=True)
        return ((phi - self.map(psi)) ** 2).mean()


class KD(Objective):
    """Feature distillation: a learned linear map student -> teacher, R = mean((V phi - psi)^2)."""

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.map = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, phi, psi):
        return ((self.map(phi.float()) - psi.float()) ** 2).mean()


def _rkd_distance(phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    def normalised(x):
        d = torch.cdist(x, x)
        return d / d[d > 0].mean().clamp_min(EPS)

    with torch.no_grad():
        target = normalised(psi)
    return F.smooth_l1_loss(normalised(phi), target)


def _rkd_angle(phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    def angles(x):
        # cos of the angle at j between (i - j) and (k - j), for every triple.
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2, eps=EPS)
        return torch.bmm(e, e.transpose(1, 2)).flatten()

    with torch.no_grad():
        target = angles(psi)
    return F.smooth_l1_loss(angles(phi), target)


class RKD(Objective):
    """Relational KD (Park et al. 2019): (distance loss + 2 x angle loss) / 2; no learned parameters."""

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()

    def forward(self, phi, psi):
        phi, psi = phi.float(), psi.float()
        return (_rkd_distance(phi, psi) + 2.0 * _rkd_angle(phi, psi)) / 2.0


class FactorTransfer(Objective):
    """Factor transfer (Kim et al. 2018): a 3-layer MLP student -> teacher, last layer zero-initialised,
    R = mean L1 distance between the L2-normalised outputs and teacher features."""

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(student_dim, teacher_dim)
        last = nn.Linear(hidden, teacher_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(student_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)

    def forward(self, phi, psi):
        out = F.normalize(self.mlp(phi.float()), dim=1, eps=EPS)
        return (out - F.normalize(psi.float(), dim=1, eps=EPS)).abs().sum(1).mean()


class BTuning(Objective):
    """B-Tuning (You et al. 2022): match the student's LogME predictions to the teachers' weighted ones.

    student_weights m_s (C x d_s) and teacher_weights m_k (C x d_k) are LogME posterior
    means; teacher k weighs softmax(LogME_k / 0.1). ``teacher_slices`` says which columns
    of psi belong to teacher k. R = mean((phi m_s^T - sum_k w_k psi_k m_k^T)^2).
    """

    uses_teacher = True

    def __init__(self, student_dim: int, teacher_dim: int, *, student_weights: torch.Tensor,
                 teacher_weights: list[torch.Tensor], teacher_scores: list[float],
                 teacher_slices: list[tuple[int, int]], temperature: float = 0.1):
        super().__init__()
        if len(teacher_weights) != len(teacher_slices) or len(teacher_scores) != len(teacher_slices):
            raise ValueError("B-Tuning needs one LogME weight matrix and score per teacher")
        self.register_buffer("student_weights", torch.as_tensor(student_weights, dtype=torch.float32))
        self.teacher_weights = [torch.as_tensor(m, dtype=torch.float32) for m in teacher_weights]
        for k, m in enumerate(self.teacher_weights):
            self.register_buffer(f"teacher_weights_{k}", m)
        self.slices = teacher_slices
        self.register_buffer("mix", torch.softmax(torch.tensor(teacher_scores, dtype=torch.float32) / temperature, 0))

    def forward(self, phi, psi):
        target = sum(self.mix[k] * (psi[:, a:b].float() @ getattr(self, f"teacher_weights_{k}").T)
                     for k, (a, b) in enumerate(self.slices))
        return ((phi.float() @ self.student_weights.T - target) ** 2).mean()


METHODS = {
    "stl": lambda ds, dt, **kw: Objective(),
    "aft": lambda ds, dt, **kw: AFT(ds, dt),
    "aft_rbf": lambda ds, dt, **kw: AFT(ds, dt, kernel="rbf"),
    "aft_identity": lambda ds, dt, **kw: AFT(ds, dt, learn_weights=False),
    "aft_dense": lambda ds, dt, **kw: AFTDense(ds, dt),
    "aft_nokernel": lambda ds, dt, **kw: AFTNoKernel(ds, dt),
    "kd": lambda ds, dt, **kw: KD(ds, dt),
    "rkd": lambda ds, dt, **kw: RKD(ds, dt),
    "ft": lambda ds, dt, **kw: FactorTransfer(ds, dt),
    "btune": lambda ds, dt, **kw: BTuning(ds, dt, **kw),
}


# Provisional per-method beta grids for the build flow (transfer.build); the integrator replaces this with the
# measured grids. The regularisers' scales differ: KD's is ~1e-3 of the cross-entropy here, FT's ~20x it
# (docs/evidence/EVIDENCE.md), so one grid for all does not work. STL has no beta.
BETA_GRIDS: dict[str, tuple[float, ...]] = {"stl": (), "kd": (1.0, 10.0, 100.0, 1000.0), "aft": (0.1, 1.0, 10.0),
                                            "ft": (0.01, 0.1, 1.0)}


def make_objective(method: str, student_dim: int, teacher_dim: int, **kwargs) -> Objective:
    """Build the objective ``method`` for the given feature widths; unknown names list the valid ones."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[method](student_dim, teacher_dim, **kwargs)
