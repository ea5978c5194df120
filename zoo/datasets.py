"""Data sets by name: the front door to the bundled sets, the paper's, and users' own imports.

``load_dataset(name)`` returns a ``Dataset`` with train/test splits, class names and a
content fingerprint, from whichever room holds the name: ``zoo.bundled`` (small sets that
install with the offline packs), ``zoo.paper_data`` (the AFT paper's, from torchvision's and
the Hugging Face hub's files) or ``zoo.userstore`` (sets imported with ``zoo.userdata``).
Those rooms never import this one. Sets without an official split get a stratified 80/20
split with a fixed seed, so every machine sees the same examples in the same order.
"""
from __future__ import annotations

import json
from functools import lru_cache

from zoo import packs, paper_data
from zoo.bundled import BUNDLED as DATASETS
from zoo.datatypes import SPLITS, Dataset, DatasetSpec, Split, UnknownDataset  # noqa: F401  (the public types)
from zoo.paper_data import PAPER, DataMissing  # noqa: F401
from zoo.userstore import DamagedDataset, list_user_datasets, load_user_dataset, read_meta, stamp


def list_datasets() -> list[str]:
    """Every name ``load_dataset`` takes: bundled, the paper's (here or not), and this home's imports."""
    return sorted({*DATASETS, *PAPER, *list_user_datasets()})


@lru_cache(maxsize=8)
def _load_bundled(name: str) -> Dataset:
    return DATASETS[name].load()


@lru_cache(maxsize=2)
def _load_paper(name: str, *stamp) -> Dataset:
    return paper_data.load_paper(name)


@lru_cache(maxsize=4)
def _load_user(name: str, *stamp) -> Dataset:
    # ``stamp`` (home, inode and mtime of meta.json) is part of the key: a set imported again, removed,
    # or under another AFTZOO_HOME (even by another process) is never served from a stale entry.
    return load_user_dataset(name)


def load_dataset(name: str) -> Dataset:
    """Load a data set by name; ``UnknownDataset`` lists the valid names, ``PackMissing`` (``DataMissing`` for
    the paper's sets) says how to get one that is not on this machine."""
    if name in DATASETS:
        return _load_bundled(name)
    if name in PAPER:
        # Keyed by where its files are: another home or hub cache, or a set fetched since, is loaded afresh.
        return _load_paper(name, paper_data.where(name))
    key = stamp(name)
    if key is None:
        raise UnknownDataset(f"unknown data set {name!r}; choose one of: "
                             f"{', '.join(sorted({*DATASETS, *list_user_datasets()}))}; or one of the paper's: "
                             f"{', '.join(PAPER)}")
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
    """What ``aftzoo datasets`` shows for one data set; a bundled or imported one is loaded if present,
    a paper's set only looked for (some are gigabytes)."""
    if name in PAPER:
        s = PAPER[name]
        row = {"name": name, "modality": s.modality, "description": s.description, "pack": None, "paper": True,
               "source": "torchvision" if s.library == "torchvision" else f"hf:{s.repo}"}
        present = paper_data.is_present(name)
        return {**row, "present": present, **({} if present else {"how_to_get": paper_data.how_to_get(name)})}
    if name not in DATASETS:
        return _describe_user(name)
    spec = DATASETS[name]
    row = {"name": name, "modality": spec.modality, "description": spec.description, "pack": spec.pack}
    try:
        ds = load_dataset(name)
    except packs.PackMissing as exc:
        return {**row, "present": False, "how_to_get": str(exc)}
    return present_row(row, ds)


def _describe_user(name: str) -> dict:
    try:
        meta = read_meta(name)
    except DamagedDataset as exc:
        return {"name": name, "modality": "?", "description": "imported data set", "pack": None,
                "present": False, "how_to_get": str(exc)}
    row = {"name": name, "modality": meta["modality"], "description": meta["description"], "pack": None}
    try:
        ds = load_dataset(name)
    except DamagedDataset as exc:
        return {**row, "present": False, "how_to_get": str(exc)}
    return present_row(row, ds)
