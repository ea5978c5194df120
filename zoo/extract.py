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

In a ``torch.distributed`` job (``aftzoo launch -- extract ...``) every process calls this with
the same arguments; each computes a contiguous shard of the examples, and rank 0 alone opens the
catalog, merges the shards and indexes one file under the same key as a single-process run (see
``_Job.run_sharded``). The process group is set up by the caller (``zoo.processes.init``, which the
launch worker calls); its shard rule and error wording are ``zoo.processes``'s.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from storage.catalog import Catalog, open_catalog
from storage.errors import AftzooError
from storage.features import DamagedFeatureFile, FeatureKey, FeatureStore, FeatureWriter
from storage.settings import get_settings
from zoo import processes
from zoo.datasets import Dataset, load_dataset
from zoo.prompts import DEFAULT_PROMPT, prompt_for
from zoo.registry import ModelSpec, record, resolve, resolve_weights

EXTRACTOR_VERSION = "1"
SPLITS = ("train", "test")
MERGE_ROWS = 8192  # rows a sharded extraction's merge copies at a time


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
            self.spec = _resolve(model)
        self.weights, self.device = weights, device

    def get(self):
        if self.built is None:
            resolve_weights(self.spec, self.weights)  # no weights: say so before importing torch and a model library
            from zoo.models import load

            self.built = load(self.spec, weights=self.weights, device=self.device)
        return self.built


def extract_info(model, dataset, split: str = "train", *, limit: int | None = None, batch_size: int | None = None,
                 device: str | None = None, progress: bool | Callable[[int, int], None] = True,
                 weights: str | Path | None = None, prompt: str | None = None,
                 catalog: Catalog | None = None) -> ExtractResult:
    """``extract`` with the details: whether it was a cache hit, seconds, file, device, batch size.

    ``progress`` is a bool (a tqdm bar on stderr) or a function called after each batch with
    (examples done, examples to do), for a caller's own progress display.
    """
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
    job = _Job(holder, data, full, part, key, template, batch_size, progress, catalog, started)
    group = _process_group()
    return job.run() if group is None else job.run_sharded(*group)


class ShardedExtractionError(AftzooError, RuntimeError):
    """A process of a multi-process extraction failed or was lost; nothing was cached."""


def _process_group() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several of a ``torch.distributed`` job, else None."""
    ctx = processes.require_joined("extract everything and race to index it", ShardedExtractionError)
    return (ctx.rank, ctx.world_size) if ctx.active else None


def _collective(fn, *args, **kwargs):
    """A ``torch.distributed`` call whose failure (a peer died or hung) is one clear error."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        raise ShardedExtractionError("lost contact with another process of the extraction, which died or stopped "
                                     f"answering ({processes.backend_reason(exc)}); nothing was cached") from None


@dataclass
class _Job:
    """One extraction request once its key is known: read it from the cache, or compute and index it."""

    holder: _Model
    data: Dataset
    full: Any
    part: Any
    key: FeatureKey
    template: str | None
    batch_size: int | None
    progress: bool
    catalog: Catalog | None
    started: float

    def result(self, features: np.ndarray, cached: bool, path: str, fm=None, batch: int | None = None):
        return ExtractResult(features, cached, time.perf_counter() - self.started, self.holder.spec.name,
                             self.data.name, self.key.split, self.part.fingerprint, self.key.settings, path=path,
                             device=None if fm is None else fm.device.type, batch_size=batch,
                             weights=None if fm is None else fm.source.describe())

    def cached(self) -> tuple[np.ndarray | None, str | None, FeatureStore]:
        """The cached matrix, its path and the store; (None, None, store) on a miss or a damaged file (reported)."""
        with _store(self.catalog) as store:
            row = store.lookup(self.key)
        if row is None:
            return None, None, store
        # Checked against its checksum after the catalog is closed: a pass over a large file must not
        # keep other processes (training jobs, the app) waiting for the catalog.
        try:
            return store.load(row), str(store.root / row.path), store
        except DamagedFeatureFile as exc:
            warnings.warn(f"{exc}; computing them again", RuntimeWarning, stacklevel=2)
            return None, None, store

    def batches(self, fm, start: int, stop: int, bar) -> Iterator[tuple[slice | np.ndarray, np.ndarray]]:
        """Features of examples ``start:stop``, batch by batch: (their rows counted from ``start``, values)."""
        batch = self.batch_size or default_batch_size(self.holder.spec, fm.device.type)
        inputs = self.part.inputs
        order = None
        if self.holder.spec.modality == "text":  # longest first: less padding per batch, and memory peaks early
            order = np.argsort([-len(x) if isinstance(x, str) else -len(str(x)) for x in inputs[start:stop]],
                               kind="stable")
        for first in range(0, stop - start, batch):
            last = min(first + batch, stop - start)
            if order is None:
                rows, chunk = slice(first, last), inputs[start + first:start + last]
            else:
                rows = order[first:last]
                chunk = [inputs[start + i] for i in rows]
            out = fm.forward_features(fm.preprocess(chunk, self.template or DEFAULT_PROMPT))
            yield rows, out.float().cpu().numpy()
            bar.update(last - first)

    def compute(self, fm, start: int, stop: int, sink, *, progress) -> None:
        import torch
        from tqdm.auto import tqdm

        spec = self.holder.spec
        report = progress if callable(progress) else None  # a caller's hook: (examples done, total) per batch
        with torch.inference_mode(), _autocast(fm.device.type), tqdm(
                total=stop - start, desc=f"{spec.name} {self.data.name}/{self.key.split}", unit="ex",
                disable=not progress or report is not None, file=sys.stderr, dynamic_ncols=True,
                leave=False) as bar:
            done = 0
            for rows, values in self.batches(fm, start, stop, bar):
                sink(rows, values)
                done += len(values)
                if report is not None:
                    report(done, stop - start)

    def index(self, writer: FeatureWriter) -> tuple[np.ndarray, str]:
        """Put a finished file in the catalog, with its model and data set; return it memory-mapped, and its path."""
        with _store(self.catalog) as store:
            writer.store = store  # index the file through an open catalog (the lookup's one is closed)
            row = writer.index()
            record(self.holder.spec, store.catalog)
            store.catalog.upsert_dataset(self.data.name, self.key.split, fingerprint=self.full.fingerprint,
                                         modality=self.data.modality, num_examples=len(self.full),
                                         class_names=list(self.data.class_names), source=self.data.source)
            return store.load(row, verify=False), str(store.root / row.path)

    # -- one process ------------------------------------------------------------------------
    def run(self) -> ExtractResult:
        features, path, store = self.cached()
        if features is not None:
            return self.result(features, True, path)
        fm = self.holder.get()
        n = len(self.part)
        writer = None

        def sink(rows, values):
            nonlocal writer
            if writer is None:
                writer = store.writer(self.key, n, values.shape[1], "float32")
            writer.write(rows, values)

        try:
            self.compute(fm, 0, n, sink, progress=self.progress)
            writer.finish()  # fsync, checksum and rename before the catalog is opened, for the same reason
            features, path = self.index(writer)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return self.result(features, False, path, fm, self.batch_size or default_batch_size(self.holder.spec,
                                                                                              fm.device.type))

    # -- several processes (torchrun) -------------------------------------------------------
    def run_sharded(self, rank: int, world: int) -> ExtractResult:
        """Each rank computes a contiguous shard of the examples into a file of its own; rank 0 alone looks the
        key up, merges the shards in example order through the store's writer and indexes the result, so the
        file and its key are those of a single-process extraction and later look-ups hit it."""
        import torch.distributed as dist

        mine: dict[str, Any] = {}

        def look_up() -> tuple[str | None, str]:
            features, path, store = self.cached()
            mine.update(features=features, store=store)
            final = store.path_for(self.key)
            shards = final.parent / f".{final.stem}.shards"
            if features is None:
                shutil.rmtree(shards, ignore_errors=True)  # left by a job that was killed
            return path, str(shards)

        path, shards = _on_rank0(look_up, rank)
        if path is not None:
            features = mine["features"] if rank == 0 else np.load(path, mmap_mode="r", allow_pickle=False)
            return self.result(features, True, path)
        shards = Path(shards)
        try:
            rows = processes.shard(len(self.part), processes.Context(rank, world))
            start, stop = rows.start, rows.stop
            fm, dim, error = None, 0, None
            try:
                fm = self.holder.get()
                dim = self._compute_shard(fm, start, stop, shards / f"rank-{rank:05d}.npy", rank)
            except Exception as exc:  # noqa: BLE001 - reported to every rank below, so that all of them stop
                error = f"process {rank}: {type(exc).__name__}: {' '.join(str(exc).split())}"
            reports = [None] * world
            # Every rank reports before any merging: one failed shard fails the extraction on every rank.
            _collective(dist.all_gather_object, reports, (stop - start, dim, error))
            errors = [e for _, _, e in reports if e]
            if errors:
                raise ShardedExtractionError("; ".join(errors) + "; nothing was cached")

            def merge() -> str:
                mine["features"], merged = self._merge(mine["store"], shards, reports)
                return merged

            path = _on_rank0(merge, rank)
        except BaseException:
            shutil.rmtree(shards, ignore_errors=True)
            raise
        features = mine["features"] if rank == 0 else np.load(path, mmap_mode="r", allow_pickle=False)
        return self.result(features, False, path, fm, self.batch_size or default_batch_size(self.holder.spec,
                                                                                              fm.device.type))

    def _compute_shard(self, fm, start: int, stop: int, file: Path, rank: int) -> int:
        """Write this rank's rows into ``file``; return the feature width (0 for an empty shard)."""
        out = None

        def sink(rows, values):
            nonlocal out
            if out is None:
                file.parent.mkdir(parents=True, exist_ok=True)
                out = np.lib.format.open_memmap(file, mode="w+", dtype=np.float32,
                                                shape=(stop - start, values.shape[1]))
            out[rows] = values

        self.compute(fm, start, stop, sink, progress=self.progress and rank == 0)
        if out is None:
            return 0
        out.flush()
        return out.shape[1]

    def _merge(self, store: FeatureStore, shards: Path,
               reports: list[tuple[int, int, str | None]]) -> tuple[np.ndarray, str]:
        """Rank 0: the shards, in rank (so example) order, into one feature file; index it; return it and its path."""
        dims = {dim for rows, dim, _ in reports if rows}
        if len(dims) != 1:
            raise ShardedExtractionError(f"the processes computed features of different widths {sorted(dims)}; "
                                         "nothing was cached")
        writer = store.writer(self.key, len(self.part), dims.pop(), "float32")
        try:
            start = 0
            for rank, (rows, _, _) in enumerate(reports):
                if rows:
                    shard = np.load(shards / f"rank-{rank:05d}.npy", mmap_mode="r", allow_pickle=False)
                    for first in range(0, rows, MERGE_ROWS):  # bounded memory: the finite check copies a block
                        block = shard[first:first + MERGE_ROWS]
                        writer.write(slice(start + first, start + first + len(block)), block)
                start += rows
            writer.finish()
            return self.index(writer)
        except BaseException:
            writer.abort()
            raise
        finally:
            shutil.rmtree(shards, ignore_errors=True)


def _on_rank0(fn, rank: int):
    """``fn()`` on rank 0 only; its result on every rank, or its failure raised on every rank."""
    import torch.distributed as dist

    if rank == 0:
        try:
            box = [(True, fn())]
        except Exception as exc:
            _collective(dist.broadcast_object_list, [(False, f"process 0: {type(exc).__name__}: {exc}")], src=0)
            raise
    else:
        box = [None]
    _collective(dist.broadcast_object_list, box, src=0)
    ok, value = box[0]
    if not ok:
        raise ShardedExtractionError(f"{value}; nothing was cached")
    return value


def _resolve(model) -> ModelSpec:
    """``zoo.registry.resolve(model)``; in a multi-process job, rank 0's answer: a user's model may be recorded
    in the catalog, which the other processes do not open."""
    group = _process_group()
    return resolve(model) if group is None else _on_rank0(lambda: resolve(model), group[0])
