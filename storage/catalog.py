"""The DuckDB catalog: one file indexing models, data sets, features, rankings, runs and exports.

Sharing within a process: ``open_catalog`` hands every caller of a process the same
``Catalog``, which holds one DuckDB connection, and every thread that uses it gets its
own cursor (DuckDB's documented way for threads to share a database: a connection
object must not be used by two threads at once; two connections to one file in one
process conflict, "Unique file handle conflict"). The connection closes when its last
user closes it, so other processes can take the file between uses. Reads run
concurrently. Writes take one process-wide lock, because DuckDB's optimistic
concurrency would otherwise abort one of two transactions that touch the same row.

Across processes DuckDB allows one writer: a second process that opens the file gets
``CatalogBusyError`` naming the holder, not a corrupt file.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from storage.errors import AftzooError
from storage.migrations import MIGRATIONS, SCHEMA_VERSION


class CatalogError(AftzooError, RuntimeError):
    """A catalog that cannot be opened or used as asked."""


class CatalogBusyError(CatalogError):
    """Another process holds the catalog's write lock."""


class CatalogWriteError(CatalogError):
    """A write the disk refused (full, over a size limit, read-only); nothing of it was stored."""


# DuckDB reports a refused write as an IOException, or as a TransactionException when the
# write-ahead log cannot be written at commit; these words tell it from a constraint error.
_DISK_WORDS = ("could not write", "no space left", "file too large", "disk quota", "read-only file system",
               "could not truncate", "could not fsync")


def _disk_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, duckdb.IOException) or (
        isinstance(exc, duckdb.Error) and any(w in text for w in _DISK_WORDS))


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def migrate(con: duckdb.DuckDBPyConnection, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations that ``con``'s schema lacks, up to ``target``; return the new version."""
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target schema version must be in 0..{SCHEMA_VERSION}; got {target}")
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP DEFAULT current_timestamp)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise CatalogError(f"the catalog has schema version {current}, newer than this aftzoo "
                           f"understands ({SCHEMA_VERSION}); upgrade aftzoo or point AFTZOO_HOME elsewhere")
    for version in range(current + 1, target + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except BaseException as exc:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:  # a failed COMMIT has already ended the transaction
                pass
            if not isinstance(exc, duckdb.Error):
                raise
            raise CatalogError(f"could not migrate the catalog from schema version {version - 1} to {version} "
                               f"({_short(exc)}); it was left at version {version - 1} with all its rows. "
                               + ("Free disk space, then open it again" if _disk_error(exc) else
                                  "Fix the cause above, then open it again")) from None
    return max(current, target)


@dataclass(frozen=True)
class FeatureSetRow:
    id: int
    model: str
    dataset: str
    split: str
    fingerprint: str
    settings_key: str
    num_examples: int
    dim: int
    dtype: str
    path: str
    size_bytes: int
    checksum: str


class RunCatalog:
    """Runs and their metric history (mixed into ``Catalog``)."""

    def create_run(self, run_id: str, *, dataset: str, student: str, teachers: list[str], method: str,
                   config: dict, total_steps: int, status: str = "running") -> None:
        self.execute("INSERT INTO runs (id, dataset, student, teachers, method, config, status, total_steps) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     [run_id, dataset, student, json.dumps(teachers), method, json.dumps(config, default=str),
                      status, total_steps])

    def update_run(self, run_id: str, **fields) -> None:
        allowed = {"status", "step", "total_steps", "checkpoint", "test_accuracy", "wall_seconds", "error", "config"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update run fields {sorted(bad)}; allowed: {sorted(allowed)}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"], default=str)
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.execute(f"UPDATE runs SET {cols}, updated_at = current_timestamp WHERE id = ?", [*fields.values(), run_id])

    def get_run(self, run_id: str) -> dict | None:
        rows = self.query("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            return None
        row = rows[0]
        row["config"] = json.loads(row["config"]) if row["config"] else {}
        row["teachers"] = json.loads(row["teachers"]) if row["teachers"] else []
        return row

    def log_metrics(self, run_id: str, rows: list[tuple[int, str, float]], *, step: int | None = None,
                    **run_fields) -> None:
        """Append ``(step, name, value)`` rows and, in the same transaction, move the run's progress."""
        with self.transaction() as cur:
            if rows:
                cur.executemany("INSERT OR REPLACE INTO run_metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                                [(run_id, s, n, v) for s, n, v in rows])
            if step is not None or run_fields:
                fields = {**({"step": step} if step is not None else {}), **run_fields}
                cols = ", ".join(f"{k} = ?" for k in fields)
                cur.execute(f"UPDATE runs SET {cols}, updated_at = current_timestamp WHERE id = ?",
                            [*fields.values(), run_id])

    def truncate_metrics(self, run_id: str, after_step: int) -> None:
        """Forget metrics logged after a checkpoint: a resumed run logs them again."""
        self.execute("DELETE FROM run_metrics WHERE run_id = ? AND step > ?", [run_id, after_step])

    def metrics(self, run_id: str) -> pd.DataFrame:
        """The run's history, one row per step, one column per metric."""
        long = self.df("SELECT step, name, value FROM run_metrics WHERE run_id = ? ORDER BY step", [run_id])
        if long.empty:
            return pd.DataFrame(columns=["step"])
        return long.pivot(index="step", columns="name", values="value").reset_index()

    def runs(self) -> pd.DataFrame:
        return self.df("SELECT id, dataset, student, teachers, method, status, step, total_steps, test_accuracy, "
                       "wall_seconds, created_at, error FROM runs ORDER BY created_at")


class Catalog(RunCatalog):
    """An open catalog file. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            held = re.search(r"PID (\d+)", str(exc))
            if held or "lock" in str(exc).lower():
                who = f"process {held.group(1)}" if held else "another process"
                raise CatalogBusyError(f"the catalog {self.path} is open for writing in {who}; "
                                       "stop it or set AFTZOO_HOME to another folder") from None
            raise CatalogError(f"cannot open the catalog {self.path}: {exc}") from None
        self._write_lock = threading.RLock()
        self._local = threading.local()
        try:
            if not read_only:
                with self._write_lock:
                    self.schema_version = migrate(self._con)
            else:
                self.schema_version = self._con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        except BaseException as exc:
            # An open connection keeps the file locked for this whole process: let it go.
            self._con.close()
            if isinstance(exc, CatalogError):
                raise CatalogError(f"{self.path}: {exc}") from None
            raise

    # -- plumbing ---------------------------------------------------------------------------
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._con.cursor()
        return cur

    def query(self, sql: str, params: list | tuple | None = None) -> list[dict[str, Any]]:
        cur = self._cursor().execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def df(self, sql: str, params: list | tuple | None = None) -> pd.DataFrame:
        return self._cursor().execute(sql, params or []).df()

    def _write_failed(self, exc: BaseException) -> CatalogWriteError:
        return CatalogWriteError(f"could not write to the catalog {self.path}: {_short(exc)}; nothing of this change "
                                 "was stored and the catalog is as it was. Free disk space or set AFTZOO_HOME to "
                                 "another folder")

    def execute(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        """Run one write statement under the process's write lock."""
        with self._write_lock:
            try:
                return self._cursor().execute(sql, params or []).fetchall()
            except duckdb.Error as exc:
                if _disk_error(exc):
                    raise self._write_failed(exc) from None
                raise

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Several writes that land together or not at all."""
        with self._write_lock:
            cur = self._cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:  # a COMMIT that failed writing has already rolled back
                    pass
                if isinstance(exc, duckdb.Error) and _disk_error(exc):
                    raise self._write_failed(exc) from None
                raise

    def close(self) -> None:
        """Let go of the catalog; a shared one (from ``open_catalog``) closes when its last user lets go."""
        if getattr(self, "_shared_key", None) is not None and not _release(self):
            return
        self._con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models and data sets ---------------------------------------------------------------
    def upsert_model(self, name: str, *, family: str, modality: str, role: str, source: str,
                     hub_id: str | None, params: int | None, feature_dim: int | None, spec: dict) -> None:
        self.execute(
            "INSERT OR REPLACE INTO models (name, family, modality, role, source, hub_id, params, feature_dim, spec) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, family, modality, role, source, hub_id, params, feature_dim, json.dumps(spec, default=str)])

    def upsert_dataset(self, name: str, split: str, *, fingerprint: str, modality: str, num_examples: int,
                       class_names: list[str], source: str) -> None:
        self.execute(
            "INSERT OR REPLACE INTO datasets (name, split, fingerprint, modality, num_examples, num_classes, class_names, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [name, split, fingerprint, modality, num_examples, len(class_names), json.dumps(class_names), source])

    # -- feature sets -----------------------------------------------------------------------
    def find_feature_set(self, model: str, fingerprint: str, split: str, settings_key: str) -> FeatureSetRow | None:
        rows = self.query(
            "SELECT id, model, dataset, split, fingerprint, settings_key, num_examples, dim, dtype, path, size_bytes, checksum "
            "FROM feature_sets WHERE model = ? AND fingerprint = ? AND split = ? AND settings_key = ?",
            [model, fingerprint, split, settings_key])
        return FeatureSetRow(**rows[0]) if rows else None

    def add_feature_set(self, *, model: str, dataset: str, split: str, fingerprint: str, settings_key: str,
                        settings: dict, num_examples: int, dim: int, dtype: str, path: str, size_bytes: int,
                        checksum: str, seconds: float | None) -> int:
        with self.transaction() as cur:
            # A row for the same key can only be stale (its file was damaged or removed).
            cur.execute("DELETE FROM feature_sets WHERE model = ? AND fingerprint = ? AND split = ? AND settings_key = ?",
                        [model, fingerprint, split, settings_key])
            return cur.execute(
                "INSERT INTO feature_sets (model, dataset, split, fingerprint, settings_key, settings, num_examples, dim, "
                "dtype, path, size_bytes, checksum, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [model, dataset, split, fingerprint, settings_key, json.dumps(settings, sort_keys=True, default=str),
                 num_examples, dim, dtype, path, size_bytes, checksum, seconds]).fetchone()[0]

    def delete_feature_set(self, feature_set_id: int) -> None:
        self.execute("DELETE FROM feature_sets WHERE id = ?", [feature_set_id])

    def feature_sets(self) -> pd.DataFrame:
        return self.df("SELECT id, model, dataset, split, num_examples, dim, dtype, size_bytes, seconds, created_at "
                       "FROM feature_sets ORDER BY created_at")


def open_catalog(settings=None, *, read_only: bool = False, wait: float = 10.0) -> Catalog:
    """Open the catalog of ``settings`` (default: the environment's).

    Long jobs in separate processes (a training run, the CLI) open the catalog for each
    batch of writes and close it again, so another process may hold it for a moment:
    wait up to ``wait`` seconds for it before raising ``CatalogBusyError``.
    """
    from storage.settings import get_settings

    settings = settings or get_settings()
    deadline = time.monotonic() + wait
    delay = 0.02
    while True:
        try:
            return _acquire(Path(settings.catalog_path), read_only)
        except CatalogBusyError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


# The process's open catalogs, by file: (catalog, users). A catalog opened before a fork belongs to the
# parent (its pid is checked), so a forked child opens its own.
_SHARED: dict[Path, tuple[Catalog, int]] = {}
_SHARED_LOCK = threading.Lock()


def _acquire(path: Path, read_only: bool) -> Catalog:
    """The process's open catalog of ``path`` with one more user, opened if none is.

    A read-only request shares a writable catalog already open; a writable request while a
    read-only one is open is busy (one file, one configuration per process): ``open_catalog``
    waits for it as for another process.
    """
    key = path.resolve()
    with _SHARED_LOCK:
        held = _SHARED.get(key)
        if held is not None and held[0]._pid != os.getpid():
            del _SHARED[key]  # inherited through fork: the parent's connection, not ours
            held = None
        if held is None:
            cat = Catalog(path, read_only=read_only)
            cat._shared_key, cat._pid = key, os.getpid()
            _SHARED[key] = (cat, 1)
            return cat
        cat, users = held
        if read_only or not cat.read_only:
            _SHARED[key] = (cat, users + 1)
            return cat
    raise CatalogBusyError(f"the catalog {path} is open read-only in this process; close it to write")


def _release(cat: Catalog) -> bool:
    """One user fewer; True when it was the last (the caller closes the connection)."""
    with _SHARED_LOCK:
        held = _SHARED.get(cat._shared_key)
        if held is None or held[0] is not cat:
            return True
        if held[1] > 1:
            _SHARED[cat._shared_key] = (cat, held[1] - 1)
            return False
        del _SHARED[cat._shared_key]
        return True
