"""Students: a zoo model with a fresh classification head, returning logits and features."""
from __future__ import annotations

import torch
import torch.nn as nn

from zoo.models import FeatureModel, load
from zoo.registry import ModelSpec, get


class Student(nn.Module):
    """``forward(batch) -> (logits, phi)`` where phi are the penultimate features AFT regularises."""

    def __init__(self, backbone: FeatureModel, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a student needs at least 2 classes; got {num_classes}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.dim, num_classes)

    @property
    def spec(self) -> ModelSpec:
        return self.backbone.spec

    @property
    def feature_dim(self) -> int:
        return self.backbone.dim

    def preprocess(self, inputs, prompt: str):
        return self.backbone.preprocess(inputs, prompt)

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.backbone.forward_features(batch)
        return self.head(phi), phi


def build_student(model: str | ModelSpec, num_classes: int, *, pretrained: bool = True,
                  device: str | None = None, seed: int = 0) -> Student:
    """The zoo student ``model`` with a fresh head for ``num_classes``.

    Pre-trained weights are used wherever the model has them (``pretrained=False`` or a
    from-scratch entry initialises at random from ``seed``).
    """
    spec = get(model)
    if not pretrained and not spec.random_init:
        if spec.source in ("pack", "local", "sentence-transformers"):
            raise ValueError(f"{spec.name} takes its architecture from its weights folder, so it cannot start "
                             "from scratch here; drop --from-scratch or choose a timm student")
        spec = spec.replace(random_init=True, seed=seed)
    torch.manual_seed(seed)  # the head, and a random backbone, start the same for a given seed
    student = Student(load(spec, device=device), num_classes)
    return student.to(student.backbone.device)
