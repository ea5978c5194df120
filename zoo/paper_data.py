"""The AFT paper's data sets by name, from the files their own libraries keep on disk.

Flowers-102, Oxford-IIIT Pets, DTD and Food-101 through torchvision's folder layouts under
``$AFTZOO_HOME/data``; CIFAR-10/100 and the texts (IMDB, SST-2, BoolQ and GLUE's MNLI, MRPC,
QQP, QNLI, RTE) from the Hugging Face hub's own copies, which are parquet files: read from the
local hub cache by duckdb, fetched by ``huggingface_hub``. (torchvision's CIFAR files are
Python pickles, which aftzoo never loads; the hub's parquet copies hold the same images as PNG.)
The ``datasets`` library would add pyarrow, dill, multiprocess and xxhash to read the same
files, so it is not needed. Each set keeps its official split; where the test labels are not
public (GLUE, BoolQ) the official validation split is the test split, as in the paper.

Nothing is downloaded unless ``AFTZOO_OFFLINE=0``; a set that is not here fails in one line
saying how to get it. The large image sets are read lazily (``zoo.imagefiles``).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage.settings import get_settings
from zoo.datatypes import SPLIT_SEED, Dataset, Split
from zoo.imagefiles import ImageFiles
from zoo.packs import PackMissing
from zoo.prompts import join_fields


class DataMissing(PackMissing):
    """A paper data set that is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class PaperSet:
    name: str
    modality: str
    description: str
    library: str                                 # "torchvision" or "hub"
    class_names: tuple[str, ...] = ()
    repo: str = ""                               # hub: the data set repo
    folder: str = ""                             # hub: the config's folder in the repo
    splits: dict = field(default_factory=dict)   # ours -> the official split's name
    fields: tuple[str, ...] = ("text",)          # hub: the text columns, in the prompt's order
    label: str = "label"


_GLUE = "nyu-mll/glue"
PAPER: dict[str, PaperSet] = {s.name: s for s in [
    PaperSet("cifar10", "image", "CIFAR-10, 50,000/10,000 32x32 images, 10 classes", "hub",
             ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
             "uoft-cs/cifar10", "plain_text", {"train": "train", "test": "test"}, ("img",)),
    PaperSet("cifar100", "image", "CIFAR-100, 50,000/10,000 32x32 images, 100 fine classes", "hub", (),
             "uoft-cs/cifar100", "cifar100", {"train": "train", "test": "test"}, ("img",), "fine_label"),
    PaperSet("flowers102", "image", "Oxford Flowers-102, 102 classes (train / test)", "torchvision"),
    PaperSet("oxford_pets", "image", "Oxford-IIIT Pets, 37 classes (trainval / test)", "torchvision"),
    PaperSet("dtd", "image", "Describable Textures, 47 classes (partition 1, train / test)", "torchvision"),
    PaperSet("food101", "image", "Food-101, 75,750/25,250 images, 101 classes", "torchvision"),
    PaperSet("imdb", "text", "IMDB reviews, 25,000/25,000, negative or positive", "hub", ("neg", "pos"),
             "stanfordnlp/imdb", "plain_text", {"train": "train", "test": "test"}),
    PaperSet("sst2", "text", "SST-2 (GLUE) sentences, negative or positive", "hub", ("negative", "positive"),
             _GLUE, "sst2", {"train": "train", "test": "validation"}, ("sentence",)),
    PaperSet("boolq", "text", "BoolQ yes/no questions about a passage", "hub", ("false", "true"), "google/boolq",
             "data", {"train": "train", "test": "validation"}, ("question", "passage"), "answer"),
    PaperSet("mnli", "text", "MNLI (GLUE) premise/hypothesis pairs, matched validation as test", "hub",
             ("entailment", "neutral", "contradiction"), _GLUE, "mnli",
             {"train": "train", "test": "validation_matched"}, ("premise", "hypothesis")),
    PaperSet("mrpc", "text", "MRPC (GLUE) sentence pairs: paraphrase or not", "hub",
             ("not_equivalent", "equivalent"), _GLUE, "mrpc", {"train": "train", "test": "validation"},
             ("sentence1", "sentence2")),
    PaperSet("qqp", "text", "QQP (GLUE) question pairs: duplicate or not", "hub", ("not_duplicate", "duplicate"),
             _GLUE, "qqp", {"train": "train", "test": "validation"}, ("question1", "question2")),
    PaperSet("qnli", "text", "QNLI (GLUE) question/sentence pairs: answers or not", "hub",
             ("entailment", "not_entailment"), _GLUE, "qnli", {"train": "train", "test": "validation"},
             ("question", "sentence")),
    PaperSet("rte", "text", "RTE (GLUE) sentence pairs: entailment or not", "hub", ("entailment", "not_entailment"),
             _GLUE, "rte", {"train": "train", "test": "validation"}, ("sentence1", "sentence2")),
]}


def data_root() -> Path:
    """Where the torchvision sets live: ``$AFTZOO_HOME/data``."""
    return get_settings().home / "data"


def how_to_get(name: str) -> str:
    s = PAPER[name]
    if s.library == "hub":
        return (f"{name} is not in the Hugging Face cache: fetch it with `hf download {s.repo} --repo-type dataset "
                f"--include '{s.folder}/*'`, or load it once with AFTZOO_OFFLINE=0")
    return (f"{name} is not under {data_root()}: load it once with AFTZOO_OFFLINE=0 "
            f"(`AFTZOO_OFFLINE=0 aftzoo datasets --fetch {name}`), or put torchvision's files there")


# -- the hub's parquet copies -----------------------------------------------------------------

def _snapshot(repo: str) -> Path | None:
    from huggingface_hub import constants

    repo_dir = Path(constants.HF_HUB_CACHE) / ("datasets--" + repo.replace("/", "--"))
    try:
        return repo_dir / "snapshots" / (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return None


def _parquet_files(s: PaperSet) -> dict[str, list[str]] | None:
    snapshot = _snapshot(s.repo)
    if snapshot is None:
        return None
    files = {ours: sorted(str(p) for p in snapshot.glob(f"{s.folder}/{theirs}-*.parquet"))
             for ours, theirs in s.splits.items()}
    return files if all(files.values()) else None


def _fetch_hub(s: PaperSet) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(s.repo, repo_type="dataset",
                      allow_patterns=[f"{s.folder}/{theirs}-*.parquet" for theirs in s.splits.values()])


def _class_names(s: PaperSet, path: str, con) -> list[str]:
    """The label's names as the hub's copy records them (its ``datasets`` features), else the set's own list."""
    rows = con.execute("SELECT value FROM parquet_kv_metadata(?) WHERE key = 'huggingface'", [path]).fetchall()
    try:
        names = json.loads(rows[0][0])["info"]["features"][s.label]["names"]
    except (IndexError, KeyError, TypeError, ValueError):
        names = None
    return [str(n) for n in names] if names else list(s.class_names)


def _decode_png(cell) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(cell["bytes"])) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _load_hub(s: PaperSet, files: dict[str, list[str]]) -> Dataset:
    import duckdb

    con = duckdb.connect()
    splits = {}
    columns = ", ".join(f'"{c}"' for c in (*s.fields, s.label))
    for ours, paths in files.items():
        rows = con.execute(f"SELECT {columns} FROM read_parquet(?)", [paths]).fetchall()
        labels = np.array([int(r[-1]) for r in rows], dtype=np.int64)
        # The official files are often sorted by label (IMDB): shuffled once, so Split.head(n) is a sample.
        order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
        if s.modality == "image":  # small images (CIFAR's 32x32): decoded once into one array
            inputs = np.stack([_decode_png(rows[i][0]) for i in order]) if len(rows) else np.empty((0, 32, 32, 3))
        else:
            inputs = [rows[i][0] if len(s.fields) == 1 else join_fields(*rows[i][:-1]) for i in order]
        splits[ours] = Split(inputs, labels[order])
    classes = _class_names(s, files["train"][0], con)
    return Dataset(s.name, s.modality, classes, splits, source=f"hf:{s.repo}/{s.folder}", description=s.description)


# -- torchvision's layouts ----------------------------------------------------------------------

_TV = {"flowers102": ("Flowers102", {"train": "train", "test": "test"}),
       "oxford_pets": ("OxfordIIITPet", {"train": "trainval", "test": "test"}),
       "dtd": ("DTD", {"train": "train", "test": "test"}),
       "food101": ("Food101", {"train": "train", "test": "test"})}


def _torchvision(name: str, split: str, download: bool):
    import torchvision.datasets as tvd

    cls, splits = _TV[name]
    return getattr(tvd, cls)(str(data_root()), split=splits[split], download=download)


def _load_folders(name: str, download: bool = False) -> Dataset:
    splits, classes = {}, None
    for split in ("train", "test"):
        ds = _torchvision(name, split, download)
        # torchvision keeps each set's file list and labels; the images are decoded only when read.
        paths = getattr(ds, "_image_files", None) or ds._images
        splits[split] = Split(ImageFiles(paths), np.asarray(ds._labels, dtype=np.int64))
        classes = list(getattr(ds, "classes", None) or [str(i + 1) for i in range(int(max(ds._labels)) + 1)])
    return Dataset(name, "image", classes, splits, source="torchvision", description=PAPER[name].description)


# -- the front ----------------------------------------------------------------------------------

def is_present(name: str) -> bool:
    """Whether ``name``'s files are on this machine (a look at folders, nothing decoded)."""
    s = PAPER[name]
    if s.library == "hub":
        return _parquet_files(s) is not None
    try:
        _torchvision(name, "test", download=False)
    except (RuntimeError, OSError):
        return False
    return True


def where(name: str) -> str | None:
    """The folder (torchvision) or hub snapshot holding ``name`` here, or None."""
    if not is_present(name):
        return None
    s = PAPER[name]
    if s.library == "hub":
        return str(_snapshot(s.repo))
    return str(data_root())


def fetch(name: str) -> None:
    """Download ``name`` (only with ``AFTZOO_OFFLINE=0``)."""
    if get_settings().offline:
        raise DataMissing(how_to_get(name))
    s = PAPER[name]
    if s.library == "hub":
        _fetch_hub(s)
    else:
        for split in ("train", "test"):
            _torchvision(name, split, download=True)


def load_paper(name: str) -> Dataset:
    """The paper's set ``name`` from this machine, fetched first when it is not here and downloads are on."""
    if not is_present(name):
        fetch(name)
    s = PAPER[name]
    if s.library == "hub":
        return _load_hub(s, _parquet_files(s))
    return _load_folders(name)
