"""The feature store: feature matrices as ``.npy`` files, indexed by the catalog.

A file is written under a temporary name, fsynced and renamed into place, and only
then gets its catalog row, which records its size and checksum. A write killed midway
therefore leaves no row, and at most a temporary file that the next store sweeps away.
A file whose size or checksum no longer matches its row is reported, never read.
``.npy`` loads with ``mmap_mode="r"``, so a cache hit costs a checksum pass, not a copy.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storage.catalog import Catalog, FeatureSetRow
from storage.errors import AftzooError
from storage.files import replace_durably, sweep_temporaries, temporary_name


class FeatureStoreError(AftzooError, RuntimeError):
    """A feature file that cannot be written or read."""


class DamagedFeatureFile(FeatureStoreError):
    """A cached feature file is missing, truncated or altered since it was indexed."""


def file_checksum(path: Path, chunk: int = 1 << 23) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return "blake2b:" + digest.hexdigest()


def _slug(text: str) -> str:
    """One safe path component: never '.' or '..' (they would step out of the store), never too long."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    if not slug.strip("."):
        slug = slug.replace(".", "_") or "_"
    if len(slug.encode()) > 120:  # file systems allow 255 bytes a name; keep it unique with a hash
        slug = slug[:60] + "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return slug


def _no_room(folder: Path, exc: OSError) -> str:
    return (f"could not write features to {folder}: {exc.strerror or exc}; nothing was cached. "
            "Free disk space or set AFTZOO_HOME to another folder")


def _reserve(path: Path) -> None:
    """Allocate the whole file now. A memory-mapped write into a sparse file on a full disk kills
    the process with SIGBUS instead of raising; allocating first turns that into ENOSPC here."""
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no fallocate on this file system
                raise


@dataclass(frozen=True)
class FeatureKey:
    """What a feature matrix depends on: the model, the exact data, and how it was extracted."""

    model: str
    dataset: str
    split: str
    fingerprint: str
    settings: dict = field(default_factory=dict)

    @property
    def settings_key(self) -> str:
        blob = json.dumps(self.settings, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class FeatureWriter:
    """Fills a ``(num_examples, dim)`` matrix batch by batch, straight to disk.

    Rows may arrive in any order (text is extracted in length-sorted batches); ``commit``
    refuses a matrix with rows never written.
    """

    def __init__(self, store: "FeatureStore", key: FeatureKey, num_examples: int, dim: int, dtype: str):
        if num_examples < 1 or dim < 1:
            raise ValueError(f"a feature matrix needs at least one row and one column; got {num_examples} x {dim}")
        self.store, self.key, self.dtype = store, key, np.dtype(dtype)
        self.final = store.path_for(key)
        self.tmp = temporary_name(self.final)
        self._finished: tuple | None = None
        self._indexed = False
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=(num_examples, dim))
            _reserve(self.tmp)
        except OSError as exc:
            self.abort()
            raise FeatureStoreError(_no_room(self.final.parent, exc)) from None
        self._written = np.zeros(num_examples, dtype=bool)
        self._started = time.perf_counter()

    @property
    def shape(self) -> tuple[int, int]:
        return self._array.shape

    def write(self, rows: slice | np.ndarray, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self._array.shape[1]:
            raise ValueError(f"expected a batch of shape (n, {self._array.shape[1]}); got {values.shape}")
        if not np.isfinite(values).all():
            raise FeatureStoreError(f"{self.key.model} produced NaN or infinite features on {self.key.dataset}; "
                                    "nothing was cached")
        self._array[rows] = values
        self._written[rows] = True

    def finish(self) -> None:
        """Make the file durable and put it in place (fsync, checksum, rename); no catalog needed.

        Separate from ``index`` so that a caller can do this slow part (a checksum pass over the
        whole file) without holding the catalog, which other processes wait for.
        """
        if self._finished is not None:
            return
        missing = int((~self._written).sum())
        if missing:
            self.abort()
            raise FeatureStoreError(f"{missing} of {len(self._written)} feature rows were never written; "
                                    "nothing was cached")
        n, d = self._array.shape
        try:
            self._array.flush()
            del self._array
            size, checksum = self.tmp.stat().st_size, file_checksum(self.tmp)
            replace_durably(self.tmp, self.final)
        except OSError as exc:
            self.abort()
            raise FeatureStoreError(_no_room(self.final.parent, exc)) from None
        self._finished = (n, d, size, checksum, time.perf_counter() - self._started)

    def index(self) -> FeatureSetRow:
        """Record the finished file in ``self.store``'s catalog; return its row."""
        self.finish()
        n, d, size, checksum, seconds = self._finished
        # Killed here, the file is in place but unindexed: never read, and replaced by the next writer.
        try:
            self.store.catalog.add_feature_set(
                model=self.key.model, dataset=self.key.dataset, split=self.key.split, fingerprint=self.key.fingerprint,
                settings_key=self.key.settings_key, settings=self.key.settings, num_examples=n, dim=d,
                dtype=self.dtype.name, path=str(self.final.relative_to(self.store.root)), size_bytes=size,
                checksum=checksum, seconds=seconds)
        except BaseException:
            self.abort()
            raise
        self._indexed = True
        return self.store.catalog.find_feature_set(self.key.model, self.key.fingerprint, self.key.split,
                                                   self.key.settings_key)

    def commit(self) -> FeatureSetRow:
        """``finish`` then ``index``: the file in place, then its catalog row."""
        self.finish()
        return self.index()

    def abort(self) -> None:
        self.__dict__.pop("_array", None)
        self.tmp.unlink(missing_ok=True)
        if self._finished is not None and not self._indexed:
            self.final.unlink(missing_ok=True)  # in place but never indexed, so never read: it would only take room

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class FeatureStore:
    """Feature files under ``root``, indexed by ``catalog``."""

    def __init__(self, root: str | Path, catalog: Catalog):
        self.root = Path(root)
        self.catalog = catalog
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()

    def path_for(self, key: FeatureKey) -> Path:
        return (self.root / _slug(key.model) / _slug(key.dataset)
                / f"{_slug(key.split)}-{key.fingerprint[:16]}-{key.settings_key}.npy")

    def writer(self, key: FeatureKey, num_examples: int, dim: int, dtype: str = "float32") -> FeatureWriter:
        return FeatureWriter(self, key, num_examples, dim, dtype)

    def put(self, key: FeatureKey, features: np.ndarray) -> FeatureSetRow:
        """Store a matrix that is already in memory."""
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must be a 2-D (examples x dims) array; got shape {features.shape}")
        with self.writer(key, features.shape[0], features.shape[1], features.dtype.name) as w:
            w.write(slice(None), features)
            return w.commit()

    def lookup(self, key: FeatureKey) -> FeatureSetRow | None:
        return self.catalog.find_feature_set(key.model, key.fingerprint, key.split, key.settings_key)

    def load(self, row: FeatureSetRow, *, verify: bool = True) -> np.ndarray:
        """The indexed matrix, memory-mapped read-only; ``DamagedFeatureFile`` if it is not what was indexed."""
        path = self.root / row.path
        what = f"cached features of {row.model} on {row.dataset}/{row.split} ({path})"
        if not path.is_file():
            raise DamagedFeatureFile(f"{what} are missing; extract them again")
        if path.stat().st_size != row.size_bytes:
            raise DamagedFeatureFile(f"{what} have {path.stat().st_size} bytes, {row.size_bytes} were written; "
                                     "extract them again")
        if verify and file_checksum(path) != row.checksum:
            raise DamagedFeatureFile(f"{what} fail their checksum; extract them again")
        try:
            # allow_pickle=False: a feature file is numbers only, never objects to unpickle.
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DamagedFeatureFile(f"{what} cannot be read as a numeric array ({exc}); extract them again") from None
        if array.dtype.hasobject or array.shape != (row.num_examples, row.dim):
            raise DamagedFeatureFile(f"{what} have shape {array.shape}, expected {(row.num_examples, row.dim)}")
        return array

    def get(self, key: FeatureKey) -> np.ndarray | None:
        row = self.lookup(key)
        return None if row is None else self.load(row)

    def sweep(self) -> int:
        """Remove temporary files left by writers that died; return how many."""
        return sweep_temporaries(self.root, recursive=True)
