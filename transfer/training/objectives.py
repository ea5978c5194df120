"""The transfer objectives: loss = cross-entropy + beta * R(phi, psi).

Each objective is an ``nn.Module`` whose ``forward(phi, psi)`` returns the regulariser R
for one batch of student features phi (B x d_s) and cached teacher features psi
(B x d_t, the concatenation over teachers). Its own parameters (AFT's s, KD's map, ...)
are trained jointly with the student: AFT's at the trainer's ``objective_lr``, the baselines' maps
(KD, RKD, FT: ``follows_student_lr``) at the student's own learning rate, as the authors' run.py does.
Definitions follow PRODUCT.md and the paper's section 5.

``BETA_GRIDS`` gives each method the beta candidates that ``beta="auto"`` tries. The regularisers
live on very different scales (at initialisation, on real data, R is about 0.1-0.3 for AFT's kernel
distance but 1e-3 for KD's squared error against unit-norm features): one grid for all would give
KD no regularisation and FT an overwhelming one. Each grid spans beta * R(init) from about 1% to
a few times the cross-entropy at initialisation (log C); benchmarks/evidence/r_scale.py measures R.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfer.training.aft import EPS, aft_loss, kernel_distance


class Objective(nn.Module):
    """R = 0: fine-tune the student alone (STL). The base of every other objective."""

    uses_teacher = False
    follows_student_lr = False   # True: the trainer trains this objective's parameters at the student's lr

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

    def __init__(self, student_dim: int, teacher_dim: int, *, kernel: str = "linear", learn_weights: bool = True,
                 gamma: float = 1.0):
        super().__init__()
        self.kernel, self.gamma = kernel, gamma
        self.scale_logits = nn.Parameter(torch.zeros(teacher_dim)) if learn_weights else None

    def weights(self) -> torch.Tensor | None:
        return None if self.scale_logits is None else torch.sigmoid(self.scale_logits.detach())

    def forward(self, phi, psi):
        if self.kernel == "linear":
            return aft_loss(phi.float(), psi.float(), self.scale_logits)
        psi = psi if self.scale_logits is None else psi * torch.sigmoid(self.scale_logits)
        return kernel_distance(phi.float(), psi.float(), kernel=self.kernel, gamma=self.gamma)

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
    """Feature distillation: a learned affine map student -> teacher, R = mean((V phi + b - psi)^2).

    The bias lets the map fit the teacher's mean (the authors' map has one)."""

    uses_teacher = True
    follows_student_lr = True

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.map = nn.Linear(student_dim, teacher_dim)

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
    follows_student_lr = True

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()

    def forward(self, phi, psi):
        phi, psi = phi.float(), psi.float()
        return (_rkd_distance(phi, psi) + 2.0 * _rkd_angle(phi, psi)) / 2.0


class FactorTransfer(Objective):
    """Factor transfer (Kim et al. 2018): a 3-layer MLP student -> teacher, last layer's weights zero-initialised,
    R = mean L1 distance between the L2-normalised outputs and teacher features.

    The last bias keeps PyTorch's default initialisation, as in the authors' code: with a zero bias too the first
    outputs are exactly 0, and normalising 0 gave gradients of ~1e9 at the first step."""

    uses_teacher = True
    follows_student_lr = True

    def __init__(self, student_dim: int, teacher_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(student_dim, teacher_dim)
        last = nn.Linear(hidden, teacher_dim)
        nn.init.zeros_(last.weight)
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
    "aft_rbf": lambda ds, dt, rbf_gamma=1.0, **kw: AFT(ds, dt, kernel="rbf", gamma=rbf_gamma),
    "aft_identity": lambda ds, dt, **kw: AFT(ds, dt, learn_weights=False),
    "aft_dense": lambda ds, dt, **kw: AFTDense(ds, dt),
    "aft_nokernel": lambda ds, dt, **kw: AFTNoKernel(ds, dt),
    "kd": lambda ds, dt, **kw: KD(ds, dt),
    "rkd": lambda ds, dt, **kw: RKD(ds, dt),
    "ft": lambda ds, dt, **kw: FactorTransfer(ds, dt),
    "btune": lambda ds, dt, rbf_gamma=None, **kw: BTuning(ds, dt, **kw),
}


def make_objective(method: str, student_dim: int, teacher_dim: int, **kwargs) -> Objective:
    """Build the objective ``method`` for the given feature widths; unknown names list the valid ones.

    ``kwargs``: ``rbf_gamma`` (aft_rbf; ignored by the others) and B-Tuning's LogME fits and ``temperature``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[method](student_dim, teacher_dim, **kwargs)


# beta="auto" candidates per method (see the module docstring). Each spans beta * R from about 1% to a few times the
# cross-entropy at initialisation (0.69 for 2 classes). R at initialisation, measured on 1,000 Rotten Tomatoes texts
# with mpnet-base as the teacher (benchmarks/evidence/r_scale.py; students MiniLM-L6 / tiny-bag-text /
# tiny-transformer-text): AFT 0.099 / 0.14 / 0.21, RBF 0.029 / 0.040 / 0.062, no-kernel 0.034 / 3.4e-4 / 0.052,
# KD 0.016 / 0.0022 / 0.20 (its learned map starts random; once fitted R falls toward the teacher's
# per-dimension variance, 1/768 = 1.3e-3 for unit-norm features), RKD 0.021 / 0.030 / 0.032, FT 31.7 (an L1 sum
# over 768 dimensions), B-Tuning 0.044 / 0.045 (tiny-cnn on Fashion-MNIST from efficientnet-lite2: 0.019 against a CE
# of 2.37), its pull on phi 0.75x / 14.5x / 0.19x cross-entropy's: its grid spans 0.03-100.
#
# The loss scale is not the whole story for AFT: its gradient reaches the student through the normalisation of
# *centred* rows, so it grows as 1 / |phi - mean(phi)|. On the tiny token-MLP text student (centred rows of norm 0.03
# against rows of 0.6) |dR/dW| was 20-40x |dCE/dW| at init, and every beta from 0.1 to 30 collapsed it to one class
# (docs/evidence/EVIDENCE.md). So the kernel grids reach down to 1e-3.
_KERNEL = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
BETA_GRIDS: dict[str, tuple[float, ...]] = {
    "stl": (0.0,),
    "aft": _KERNEL,
    "aft_identity": _KERNEL,
    "aft_dense": _KERNEL,
    "aft_rbf": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    "aft_nokernel": (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0),
    "kd": (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0),   # 1000 was the top and chosen: extended
    "rkd": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
    "ft": (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1),
    "btune": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
}
