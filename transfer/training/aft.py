"""Adaptive Feature Transfer's regulariser (Qiu et al., ICML 2024, section 3).

The student's features phi should be able to express a learned re-weighting of the
teacher's features psi. Comparing kernels rather than features makes the distance
invariant to any orthogonal transformation of either side, so only a diagonal weight
vector sigmoid(s) has to be learned instead of a dense map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def centre_normalise(x: torch.Tensor) -> torch.Tensor:
    """Centre over the batch, then scale each row to unit norm (reduces the variance of kernel entries)."""
    x = x - x.mean(dim=0, keepdim=True)
    return F.normalize(x, dim=1, eps=EPS)


def linear_kernel(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def rbf_kernel(x: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    # Rows are unit vectors, so squared distances lie in [0, 4] and gamma = 1 is a sensible scale.
    sq = (x * x).sum(1, keepdim=True)
    return torch.exp(-gamma * (sq + sq.T - 2 * x @ x.T).clamp_min(0))


def kernel_distance(student: torch.Tensor, teacher: torch.Tensor, kernel: str = "linear",
                    gamma: float = 1.0) -> torch.Tensor:
    """Root mean squared difference of the two batch kernels, after centring and normalising both
    (``gamma``: the RBF kernel's scale)."""
    fn = linear_kernel if kernel == "linear" else (lambda x: rbf_kernel(x, gamma))
    k_s = fn(centre_normalise(student))
    k_t = fn(centre_normalise(teacher))
    return torch.sqrt(((k_s - k_t) ** 2).mean() + EPS)


def aft_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
             scale_logits: torch.Tensor | None) -> torch.Tensor:
    """AFT's regulariser R for one batch: ``kernel_distance(phi, psi * sigmoid(s))``.

    student_features: (B, d_s); teacher_features: (B, d_t); scale_logits: (d_t,) the
    vector s (``None`` for the identity-weights ablation). Returns a scalar tensor.
    """
    if student_features.ndim != 2 or teacher_features.ndim != 2:
        raise ValueError(f"expected (batch, dim) features; got student {tuple(student_features.shape)}, "
                         f"teacher {tuple(teacher_features.shape)}")
    if student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError(f"student and teacher batches differ: {student_features.shape[0]} vs {teacher_features.shape[0]}")
    if scale_logits is not None:
        if scale_logits.shape != teacher_features.shape[1:]:
            raise ValueError(f"scale_logits must have shape ({teacher_features.shape[1]},); got {tuple(scale_logits.shape)}")
        teacher_features = teacher_features * torch.sigmoid(scale_logits)
    return kernel_distance(student_features, teacher_features)
