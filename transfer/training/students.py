"""Students: a zoo model with a fresh classification head, returning logits and features.

A student's phi is its raw penultimate representation (pooled or [CLS], before any
normalisation), as in the AFT paper: a sentence-transformers model's Normalize module is
dropped when it becomes a student (its features as a *teacher* stay as the model defines them).
On a unit vector the head's logits can barely grow, so cross-entropy hardly moves the student
while AFT's normalised-kernel term dominates (issue 20: 58.6% -> 75.2% on one run).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from transfer.training import packing
from zoo.feature_models import FeatureModel
from zoo.models import load
from zoo.registry import ModelSpec, get

# Rows per length bucket of a text batch (see ``Student``); 0 = the old single padded batch. Measured on 64 Rotten
# Tomatoes texts, one thread (benchmarks/bench_train_step.py): 8 rows per bucket ran the MiniLM step fastest.
BUCKET_ROWS = 8


class Student(nn.Module):
    """``forward(batch) -> (logits, phi)`` where phi are the penultimate features AFT regularises.

    ``bucket_rows`` > 0: a text batch is run as sub-batches of that many rows of similar length, each padded to
    its own longest row, and reassembled in the original order. The attention mask already hides padding, so the
    features are the same to float rounding (dropout masks are drawn for other shapes), and the transformer
    computes about the real tokens instead of batch x longest (2x fewer on Rotten Tomatoes). A BERT student goes
    further: its tokens are packed, and only attention runs per bucket (``packing``).
    """

    def __init__(self, backbone: FeatureModel, num_classes: int, bucket_rows: int = BUCKET_ROWS):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a student needs at least 2 classes; got {num_classes}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.dim, num_classes)
        self.bucket_rows = int(bucket_rows)

    @property
    def spec(self) -> ModelSpec:
        return self.backbone.spec

    @property
    def feature_dim(self) -> int:
        return self.backbone.dim

    def preprocess(self, inputs, prompt: str):
        return self.backbone.preprocess(inputs, prompt)

    def _bucketable(self, batch) -> bool:
        tokenizer = getattr(self.backbone, "tokenizer", None)
        return (self.bucket_rows > 0 and isinstance(batch, dict) and "attention_mask" in batch
                and getattr(tokenizer, "padding_side", "right") == "right"
                and batch["attention_mask"].shape[0] > self.bucket_rows)

    def _embedded_once(self, batch: dict) -> dict:
        """The batch with its word embeddings looked up once, where the backbone takes ``inputs_embeds``.

        Looked up per sub-batch, each look-up's backward writes a dense gradient of the whole vocabulary table
        (47 MB for MiniLM) and autograd adds them up: 8 fills and adds a step, ~8% of a bucketed MiniLM step.
        """
        net = getattr(self.backbone, "net", None)
        if "input_ids" not in batch or not hasattr(net, "get_input_embeddings"):
            return batch
        if "inputs_embeds" not in inspect.signature(net.forward).parameters:
            return batch
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        return {**rest, "inputs_embeds": net.get_input_embeddings()(batch["input_ids"])}

    def _features(self, batch) -> torch.Tensor:
        if not self._bucketable(batch):
            return self.backbone.forward_features(batch)
        if packing.supports(self.backbone):
            return packing.packed_features(self.backbone, batch, self.bucket_rows)
        lengths = batch["attention_mask"].sum(1)
        order = torch.argsort(lengths, stable=True)
        batch = self._embedded_once(batch)
        parts = []
        for rows in order.tensor_split(-(-len(order) // self.bucket_rows)):
            width = int(lengths[rows].max())  # right padding: every real token lies before this column
            parts.append(self.backbone.forward_features({k: v[rows, :width] for k, v in batch.items()}))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(parts)[inverse]

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self._features(batch)
        return self.head(phi), phi


def raw_features(backbone: FeatureModel) -> FeatureModel:
    """Drop a sentence-transformers model's final L2 normalisation: a student's phi is its raw pooled output."""
    if getattr(backbone, "normalize", False):
        backbone.normalize = False
    net = getattr(backbone, "net", None)
    if type(net).__name__ == "SentenceTransformer":
        keep = [m for m in net if type(m).__name__ != "Normalize"]
        if len(keep) != len(net):
            while len(net):
                del net[len(net) - 1]
            for i, m in enumerate(keep):
                net.add_module(str(i), m)
    return backbone


def build_student(model: str | ModelSpec, num_classes: int, *, pretrained: bool = True,
                  device: str | None = None, seed: int = 0, bucket_rows: int = BUCKET_ROWS) -> Student:
    """The zoo student ``model`` with a fresh head for ``num_classes``, phi its raw penultimate features.

    Pre-trained weights are used wherever the model has them (``pretrained=False`` or a
    from-scratch entry initialises at random from ``seed``). ``bucket_rows=0`` runs a text
    batch as one padded batch (the behaviour before bucketing; same results to float rounding).
    """
    spec = get(model)
    if not pretrained and not spec.random_init:
        if spec.source in ("pack", "local", "sentence-transformers"):
            raise ValueError(f"{spec.name} takes its architecture from its weights folder, so it cannot start "
                             "from scratch here; drop --from-scratch or choose a timm student")
        spec = spec.replace(random_init=True, seed=seed)
    torch.manual_seed(seed)  # the head, and a random backbone, start the same for a given seed
    student = Student(raw_features(load(spec, device=device)), num_classes, bucket_rows=bucket_rows)
    return student.to(student.backbone.device)
