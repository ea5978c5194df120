"""Feature extraction through the catalog: compute once, read back ever after.

``extract(model, dataset, split)`` returns a ``(N, D)`` float32 matrix. It is keyed by the
model, the data set's name, the split, the content fingerprint of the examples used (after
``limit``) and every setting that changes the numbers (feature rule, image size and
normalisation, prompt, maximum length, dtype, weights folder, random seed, extractor
version). A second call with the same key reads the cached file and builds nothing; a
cached file found damaged is reported with a warning and computed again.

Computing streams: images are converted batch by batch, texts are run in batches sorted by
length (rows go back to their original positions), and each batch goes straight into the
feature store's memory-mapped file, so the features are never held twice. The catalog is
open only to look up and, at the end, to index the new file: a long extraction does not
hold the catalog's write lock.
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from storage.catalog import Catalog, open_catalog
from storage.features import DamagedFeatureFile, FeatureKey, FeatureStore
from storage.settings import get_settings
from zoo.datasets import Dataset, load_dataset
from zoo.prompts import DEFAULT_PROMPT, prompt_for
from zoo.registry import ModelSpec, get, record, resolve_weights

EXTRACTOR_VERSION = "1"
SPLITS = ("train", "test")


@dataclass
class ExtractResult:
    features: np.ndarray
    cached: bool
    seconds: float
    model: str
    dataset: str
    split: str
    fingerprint: str
    settings: dict = field(default_factory=dict)
    path: str | None = None
    device: str | None = None
    batch_size: int | None = None
    weights: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.features.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "split": self.split, "shape": list(self.shape),
                "cached": self.cached, "seconds": round(self.seconds, 4), "fingerprint": self.fingerprint,
                "path": self.path, "device": self.device, "batch_size": self.batch_size, "weights": self.weights}


def feature_settings(spec: ModelSpec, *, prompt: str | None = None, weights: str | Path | None = None) -> dict:
    """Everything besides the model name and the data that the features depend on."""
    s: dict[str, Any] = {"extractor": EXTRACTOR_VERSION, "feature_rule": spec.feature_rule, "dtype": "float32",
                         "model_dtype": spec.dtype, "source": spec.source, "hub_id": spec.hub_id}
    if spec.pretrained_tag:
        s["pretrained_tag"] = spec.pretrained_tag
    if spec.modality == "image":
        s.update(image_size=spec.image_size, mean=list(spec.mean), std=list(spec.std),
                 interpolation=spec.interpolation)
    else:
        s.update(max_length=spec.max_length, prompt=prompt if spec.prompt else DEFAULT_PROMPT,
                 tokenizer=spec.tokenizer)
    if spec.create_kwargs:
        s["create_kwargs"] = spec.create_kwargs
    folder = weights or spec.path
    if folder:
        s["weights"] = str(Path(folder).expanduser().resolve())
    if spec.random_init:
        s.update(random_init=True, config=spec.config_overrides, seed=spec.seed)
    return s


def default_batch_size(spec: ModelSpec, device: str) -> int:
    big = (spec.params or 0) > 1_000_000_000
    if spec.modality == "image":
        return (16 if big else 256) if device == "cuda" else (8 if big else 64)
    return (16 if big else 64) if device == "cuda" else (4 if big else 32)


@contextlib.contextmanager
def _store(catalog: Catalog | None) -> Iterator[FeatureStore]:
    settings = get_settings()
    if catalog is not None:
        yield FeatureStore(settings.features_dir, catalog)
        return
    with open_catalog(settings) as cat:
        yield FeatureStore(settings.features_dir, cat)


def _autocast(device: str):
    import torch

    if device != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def extract(model, dataset, split: str = "train", *, limit: int | None = None, batch_size: int | None = None,
            device: str | None = None, progress: bool = True, weights: str | Path | None = None,
            prompt: str | None = None, catalog: Catalog | None = None) -> np.ndarray:
    """Features of ``model`` on ``dataset``'s ``split`` (``"train"`` or ``"test"``), ``(N, D)`` float32.

    ``model`` is a registry name, a ``ModelSpec`` or an already built ``FeatureModel``;
    ``dataset`` a data set name or a ``Dataset``. ``limit`` keeps the first N examples.
    ``weights`` names a local weights folder for this call; ``prompt`` overrides the data
    set's prompt template for text. The array is memory-mapped read-only from the store.
    """
    return extract_info(model, dataset, split, limit=limit, batch_size=batch_size, device=device,
                        progress=progress, weights=weights, prompt=prompt, catalog=catalog).features


class _Model:
    """The model of one request, built on first use only (a cache hit builds nothing)."""

    def __init__(self, model, weights: str | Path | None, device: str | None):
        self.built = None
        if hasattr(model, "forward_features") and hasattr(model, "spec"):
            self.built, self.spec = model, model.spec
            if weights is None and getattr(model.source, "kind", None) == "folder":
                weights = model.source.location  # the key names the folder the model was built from
        else:
            self.spec = get(model)
        self.weights, self.device = weights, device

    def get(self):
        if self.built is None:
            resolve_weights(self.spec, self.weights)  # no weights: say so before importing torch and a model library
            from zoo.models import load

            self.built = load(self.spec, weights=self.weights, device=self.device)
        return self.built


def extract_info(model, dataset, split: str = "train", *, limit: int | None = None, batch_size: int | None = None,
                 device: str | None = None, progress: bool = True, weights: str | Path | None = None,
                 prompt: str | None = None, catalog: Catalog | None = None) -> ExtractResult:
    """``extract`` with the details: whether it was a cache hit, seconds, file, device, batch size."""
    return _extract(_Model(model, weights, device), dataset, split, limit=limit, batch_size=batch_size,
                    progress=progress, prompt=prompt, catalog=catalog)


def extract_splits(model, dataset, splits: tuple[str, ...] = SPLITS, **kwargs) -> list[ExtractResult]:
    """``extract_info`` for several splits, building the model at most once."""
    holder = _Model(model, kwargs.pop("weights", None), kwargs.pop("device", None))
    return [_extract(holder, dataset, split, **kwargs) for split in splits]


def _extract(holder: _Model, dataset, split: str, *, limit: int | None = None, batch_size: int | None = None,
             progress: bool = True, prompt: str | None = None, catalog: Catalog | None = None) -> ExtractResult:
    started = time.perf_counter()
    spec, weights = holder.spec, holder.weights
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be a positive number of examples; got {batch_size}")
    data: Dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if spec.modality != data.modality:
        article = {"image": "an image", "text": "a text"}
        raise ValueError(f"{spec.name} is {article[spec.modality]} model and {data.name} is "
                         f"{article[data.modality]} data set")
    full = data.split(split)
    part = full.head(limit) if limit is not None else full
    template = (prompt if prompt is not None else prompt_for(data.name)) if spec.modality == "text" else None
    settings = feature_settings(spec, prompt=template, weights=weights)
    key = FeatureKey(spec.name, data.name, split, part.fingerprint, settings)

    with _store(catalog) as store:
        row = store.lookup(key)
    if row is not None:
        # Checked against its checksum after the catalog is closed: a pass over a large file must not
        # keep other processes (training jobs, the app) waiting for the catalog.
        try:
            hit = store.load(row)
        except DamagedFeatureFile as exc:
            warnings.warn(f"{exc}; computing them again", RuntimeWarning, stacklevel=2)
            hit = None
        if hit is not None:
            return ExtractResult(hit, True, time.perf_counter() - started, spec.name, data.name, split,
                                 part.fingerprint, settings, path=str(store.root / row.path))

    fm = holder.get()
    import torch

    device_name = fm.device.type
    batch = batch_size or default_batch_size(spec, device_name)
    n = len(part)
    inputs = part.inputs
    order = None
    if spec.modality == "text":  # longest first: less padding per batch, and memory peaks early
        order = np.argsort([-len(x) if isinstance(x, str) else -len(str(x)) for x in inputs], kind="stable")

    from tqdm.auto import tqdm

    writer = None
    try:
        with torch.inference_mode(), _autocast(device_name), tqdm(
                total=n, desc=f"{spec.name} {data.name}/{split}", unit="ex", disable=not progress,
                file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                if order is None:
                    rows, chunk = slice(start, stop), inputs[start:stop]
                else:
                    rows = order[start:stop]
                    chunk = [inputs[i] for i in rows]
                out = fm.forward_features(fm.preprocess(chunk, template or DEFAULT_PROMPT))
                values = out.float().cpu().numpy()
                if writer is None:
                    writer = store.writer(key, n, values.shape[1], "float32")
                writer.write(rows, values)
                bar.update(stop - start)
        writer.finish()  # fsync, checksum and rename before the catalog is opened, for the same reason
        with _store(catalog) as store:
            writer.store = store  # index the file through an open catalog (the lookup's one is closed)
            row = writer.index()
            record(spec, store.catalog)
            store.catalog.upsert_dataset(data.name, split, fingerprint=full.fingerprint, modality=data.modality,
                                         num_examples=len(full), class_names=list(data.class_names),
                                         source=data.source)
            features = store.load(row, verify=False)
            path = str(store.root / row.path)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return ExtractResult(features, False, time.perf_counter() - started, spec.name, data.name, split,
                         part.fingerprint, settings, path=path, device=device_name, batch_size=batch,
                         weights=fm.source.describe())
