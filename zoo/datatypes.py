"""The shapes every data set takes: ``Dataset``, its ``Split``s, and the stratified split of sets without one.

Images are ``uint8`` arrays ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB), possibly memory-mapped,
or a ``zoo.imagefiles.ImageFiles`` that decodes them from files as they are read; texts are lists
of ``str`` (a pair task's fields joined by ``zoo.prompts.FIELD_SEP``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from storage.errors import AftzooError

SPLITS = ("train", "test")
SPLIT_SEED = 0
TEST_FRACTION = 0.2


class UnknownDataset(AftzooError, LookupError):
    """A data set name that is neither bundled, one of the paper's, nor one of the user's."""

@dataclass
class Split:
    inputs: np.ndarray | list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the inputs and labels: equal fingerprints mean equal data, in the same order."""
        h = hashlib.sha256()
        h.update(self.labels.astype("<i8").tobytes())
        if isinstance(self.inputs, np.ndarray):
            h.update(f"array:{self.inputs.dtype.str}:{self.inputs.shape}".encode())
            # Row blocks, not one copy of the whole: a memory-mapped set is hashed without loading it.
            step = max(1, (64 << 20) // max(1, self.inputs[:1].nbytes))
            for i in range(0, len(self.inputs), step):
                h.update(np.ascontiguousarray(self.inputs[i:i + step]).tobytes())
        elif hasattr(self.inputs, "identity"):  # images read lazily from files (zoo.imagefiles)
            h.update(self.inputs.identity().encode())
        else:
            h.update(b"text")
            for text in self.inputs:
                raw = text.encode("utf-8")
                h.update(len(raw).to_bytes(8, "little"))
                h.update(raw)
        return h.hexdigest()

    def head(self, n: int) -> "Split":
        """The first ``n`` examples (the splits are already shuffled)."""
        if n < 1:
            raise ValueError(f"limit must be a positive number of examples; got {n}")
        inputs = self.inputs.subset(np.arange(min(n, len(self)))) if hasattr(self.inputs, "subset") else self.inputs[:n]
        return Split(inputs, self.labels[:n])


@dataclass
class Dataset:
    name: str
    modality: str  # "image" or "text"
    class_names: list[str]
    splits: dict[str, Split]
    source: str
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise ValueError(f"data set {self.name!r} has splits {', '.join(self.splits)}; got {name!r}")
        return self.splits[name]

    def class_counts(self, split: str = "train") -> dict[str, int]:
        counts = np.bincount(self.split(split).labels, minlength=self.num_classes)
        return dict(zip(self.class_names, counts.tolist()))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    modality: str
    description: str
    pack: str
    load: Callable[[], Dataset]


def stratified(inputs, labels: np.ndarray) -> dict[str, Split]:
    """A stratified 80/20 train/test split with a fixed seed: every machine sees the same examples in the same order."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    take = (lambda idx: inputs[idx]) if isinstance(inputs, np.ndarray) else (lambda idx: [inputs[i] for i in idx])
    return {"train": Split(take(train), labels[train]), "test": Split(take(test), labels[test])}
