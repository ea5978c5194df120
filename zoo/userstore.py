"""Where users' own data sets live: names, folders, reading back, and the all-or-nothing write.

An imported set lives in ``$AFTZOO_HOME/datasets/<name>/`` (``meta.json`` and the splits),
indexed in the catalog's ``datasets`` table. It is written to a temporary folder beside its
final place and renamed into it in the same step as the catalog rows are committed, so a
failed or killed import leaves nothing half-written, and a failed overwrite leaves the old set
intact. The importers (``zoo.tableimport``, ``zoo.imageimport``) build what ``commit`` stores.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from storage.catalog import open_catalog
from storage.errors import AftzooError
from storage.files import fsync_dir, pid_alive
from storage.settings import get_settings
from zoo.bundled import BUNDLED as DATASETS
from zoo.datatypes import SPLIT_SEED, TEST_FRACTION, Dataset, Split, UnknownDataset
from zoo.paper_data import PAPER

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
META = "meta.json"
FORMAT = 1


class UploadError(AftzooError, ValueError):
    """An upload (or a data set name) that cannot be imported as asked; the message says what to do."""


class DamagedDataset(AftzooError, RuntimeError):
    """An imported data set whose stored files no longer match what was imported."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what an upload may cost; the defaults suit a laptop, raise them for bigger sets."""

    max_upload_bytes: int = 1 << 30        # the uploaded file itself
    max_unpacked_bytes: int = 2 << 30      # a zip's entries, declared and actually inflated
    max_files: int = 100_000               # entries in a zip
    max_ratio: float = 100.0               # uncompressed / compressed size of one zip entry
    ratio_floor_bytes: int = 1 << 20       # entries smaller than this skip the ratio check
    max_image_pixels: int = 50_000_000     # one image, width x height
    max_text_chars: int = 20_000           # longer texts are cut
    max_array_bytes: int = 4 << 30         # the decoded image array held in memory

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"Limits.{name} must be a positive number; got {value!r}")


# -- names and places -------------------------------------------------------------------------

def check_name(name) -> str:
    """``name`` if it can name a new user data set, else ``UploadError`` saying why and what would do."""
    rule = "use 1 to 64 characters from a-z, 0-9, '_' and '-', starting with a letter or a digit"
    if not isinstance(name, str) or not name:
        raise UploadError(f"a data set needs a name; {rule}")
    if not NAME_RE.match(name):
        lower = name.lower()
        hint = f" (did you mean {lower!r}?)" if NAME_RE.match(lower) else ""
        raise UploadError(f"data set name {name!r} is not allowed{hint}: {rule}")
    if name in DATASETS:
        raise UploadError(f"{name!r} is a bundled data set; choose another name for yours "
                          f"(bundled: {', '.join(sorted(DATASETS))})")
    if name in PAPER:
        raise UploadError(f"{name!r} names one of the paper's data sets; choose another name for yours")
    return name


def datasets_dir() -> Path:
    return get_settings().home / "datasets"


def _user_dir(name: str) -> Path | None:
    # Only a valid name reaches the file system: load_dataset('../x') must not look outside the folder.
    if not isinstance(name, str) or not NAME_RE.match(name) or name in DATASETS or name in PAPER:
        return None
    return datasets_dir() / name


def list_user_datasets() -> list[str]:
    """Names of the imported data sets in this ``AFTZOO_HOME``."""
    root = datasets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if NAME_RE.match(p.name) and p.name not in DATASETS and p.name not in PAPER
                  and (p / META).is_file())


def stamp(name: str) -> tuple | None:
    """What changes when ``name`` is imported again or removed (for ``load_dataset``'s cache), or None."""
    folder = _user_dir(name)
    if folder is None:
        return None
    try:
        st = (folder / META).stat()
    except OSError:
        return None
    return str(folder), st.st_ino, st.st_mtime_ns, st.st_size


def read_meta(name: str) -> dict:
    folder = _user_dir(name)
    if folder is None or not (folder / META).is_file():
        raise UnknownDataset(_unknown(name))
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("modality") not in ("text", "image"):
            raise ValueError(f"unknown format {meta.get('format')!r}")
    except (OSError, ValueError) as exc:
        raise _damaged(name, f"meta.json: {exc}") from None
    return meta


def _unknown(name: str) -> str:
    return f"unknown data set {name!r}; choose one of: {', '.join(sorted({*DATASETS, *list_user_datasets()}))}"


def _damaged(name: str, why: str) -> DamagedDataset:
    return DamagedDataset(f"the imported data set {name!r} is damaged ({why}); remove it with "
                          f"`aftzoo remove-dataset {name}` and import it again")


# -- loading ----------------------------------------------------------------------------------

def _mapped(path: Path) -> np.ndarray:
    """The array memory-mapped (copy on write): a large set is paged in as it is read, never loaded whole."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="c")
    except ValueError:  # an object array cannot be mapped: the plain load refuses it in numpy's own words
        return np.load(path, allow_pickle=False)


def load_user_dataset(name: str) -> Dataset:
    """Read an imported set back, checking it against the fingerprints recorded at import."""
    meta = read_meta(name)
    folder = _user_dir(name)
    splits = {}
    try:
        for split in meta["sizes"]:
            if meta["modality"] == "text":
                texts, labels = [], []
                with open(folder / f"{split}.jsonl", encoding="utf-8") as f:
                    for line in f:
                        row = json.loads(line)
                        texts.append(row["text"])
                        labels.append(row["label"])
                splits[split] = Split(texts, np.asarray(labels, dtype=np.int64))
            else:
                images = _mapped(folder / f"{split}_images.npy")
                labels = np.load(folder / f"{split}_labels.npy", allow_pickle=False)
                splits[split] = Split(images, labels)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(name, f"{type(exc).__name__}: {exc}") from None
    for split, data in splits.items():
        if len(data) != meta["sizes"][split] or data.fingerprint != meta["fingerprints"][split]:
            raise _damaged(name, f"the {split} split does not match its recorded fingerprint")
    return Dataset(name, meta["modality"], list(meta["class_names"]), splits, source=meta["source"],
                   description=meta["description"],
                   extra={"warnings": list(meta.get("warnings", [])), "user": True,
                          "source_file": meta.get("source_file"), "created": meta.get("created")})


# -- removal ------------------------------------------------------------------------------------

def remove_dataset(name: str) -> None:
    """Delete an imported data set and its catalog rows; bundled sets cannot be removed.

    Features extracted from it stay in the feature store: they are keyed by the data's
    fingerprint, so importing the same data again reuses them.
    """
    if isinstance(name, str) and name in DATASETS:
        raise UploadError(f"{name!r} is a bundled data set and cannot be removed; only imported ones can "
                          f"({', '.join(list_user_datasets()) or 'none imported yet'})")
    folder = _user_dir(name)
    if folder is None or not folder.is_dir():
        raise UploadError(f"no imported data set named {name!r}; imported ones: "
                          f"{', '.join(list_user_datasets()) or 'none'}")
    root = folder.parent
    with _lock(root):
        if not folder.is_dir():  # removed by another process while this one waited
            raise UploadError(f"no imported data set named {name!r}")
        trash = root / _scratch_name(".del", name)
        os.rename(folder, trash)  # gone for readers at once; deleted for good below
        try:
            with open_catalog() as cat, cat.transaction() as cur:
                cur.execute("DELETE FROM datasets WHERE name = ?", [name])
        except BaseException:
            os.rename(trash, folder)
            raise
        fsync_dir(root)
    shutil.rmtree(trash, ignore_errors=True)



# -- shared by the importers ------------------------------------------------------------------

def clean_source_name(name: str) -> str:
    # Recorded and shown, never used as a path: keep it printable and on one line.
    name = PurePosixPath(str(name).replace("\\", "/")).name
    return "".join(ch if ch.isprintable() else "?" for ch in name)[:200] or "upload"


def human(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


# -- tables -----------------------------------------------------------------------------------

def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def given_splits(inputs, y: np.ndarray, which: list, class_names: list[str], where: str, column: str,
                  notes: list[str]) -> dict[str, Split]:
    bad = sorted({"" if w is None else w for w in which} - {"train", "test"})
    if bad:
        raise UploadError(f"the {column!r} column has values other than train and test ({', '.join(map(repr, bad))}); "
                          "use train or test on every row, or drop the column for a stratified 80/20 split")
    check_classes(y, class_names, where)
    rng = np.random.default_rng(SPLIT_SEED)
    parts = {}
    for split in ("train", "test"):
        # Shuffled once with the bundled sets' seed: Split.head(n) takes the first n as a sample.
        idx = np.flatnonzero(np.array([w == split for w in which]))
        if len(idx) == 0:
            raise UploadError(f"no row is marked {split!r} in the {column!r} column; mark some rows {split}, or drop "
                              "the column for a stratified 80/20 split")
        idx = idx[rng.permutation(len(idx))]
        take = inputs[idx] if isinstance(inputs, np.ndarray) else [inputs[i] for i in idx]
        parts[split] = Split(take, y[idx])
    missing = [class_names[k] for k in range(len(class_names)) if not (parts["train"].labels == k).any()]
    if missing:
        notes.append(f"class(es) {', '.join(map(repr, missing))} have no training examples")
    return parts


def check_classes(y: np.ndarray, class_names: list[str], where: str) -> None:
    if len(class_names) < 2:
        only = f" ({class_names[0]!r})" if class_names else ""
        raise UploadError(f"{where} has only one class{only}; a classifier needs at least 2 classes")


def check_stratifiable(y: np.ndarray, class_names: list[str], where: str, alternative: str) -> None:
    check_classes(y, class_names, where)
    counts = np.bincount(y, minlength=len(class_names))
    thin = [f"{class_names[k]!r} ({counts[k]})" for k in np.flatnonzero(counts < 2)]
    if thin:
        raise UploadError(f"class(es) {', '.join(thin[:10])}{' ...' if len(thin) > 10 else ''} in {where} have fewer "
                          "than 2 examples, so they cannot be stratified into train and test; add examples, "
                          f"remove those classes, or {alternative}")
    n, k = len(y), len(class_names)
    n_test = math.ceil(n * TEST_FRACTION)
    if n_test < k or n - n_test < k:
        raise UploadError(f"{n} examples in {k} classes are too few for a stratified 80/20 split (its test part of "
                          f"{n_test} must hold every class at least once); add examples or {alternative}")


# -- storing ----------------------------------------------------------------------------------

def refuse_existing(name: str, overwrite: bool) -> None:
    folder = _user_dir(name)
    if not overwrite and folder is not None and folder.is_dir():
        try:
            meta = read_meta(name)
            when = f" (imported from {meta.get('source_file')} on {meta.get('created', '?')[:10]})"
        except (DamagedDataset, UnknownDataset):
            when = ""
        raise UploadError(f"a data set named {name!r} already exists{when}; pass overwrite=True (--overwrite) to "
                          "replace it, or choose another name")


def _scratch_name(kind: str, name: str) -> str:
    return f"{kind}-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _sweep(root: Path, *, max_age: float = 24 * 3600) -> None:
    """Tidy what killed imports left: temp folders go; an overwritten set whose new copy never landed comes back."""
    for p in root.iterdir():
        if not p.name.startswith((".tmp-", ".old-", ".del-")) or not p.is_dir():
            continue
        try:
            kind_name, pid, _ = p.name.rsplit("-", 2)
            kind, name = kind_name.split("-", 1)
            alive = pid_alive(int(pid)) and time.time() - p.stat().st_mtime < max_age
        except (ValueError, OSError):
            continue
        if alive:
            continue  # another import, in this process or another, is still writing it
        if kind == ".old" and NAME_RE.match(name) and not (root / name).exists():
            os.rename(p, root / name)
        else:
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One importer or remover at a time for this home, across threads and processes."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux: renames still keep each set whole
        yield
        return
    with open(root / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _write_split(folder: Path, split: str, data: Split, modality: str) -> None:
    if modality == "text":
        def write(f):
            for text, label in zip(data.inputs, data.labels.tolist()):
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False).encode("utf-8") + b"\n")
        _write_file(folder / f"{split}.jsonl", write)
    else:
        _write_file(folder / f"{split}_images.npy", lambda f: np.save(f, data.inputs, allow_pickle=False))
        _write_file(folder / f"{split}_labels.npy", lambda f: np.save(f, data.labels, allow_pickle=False))


def commit(name: str, content: dict, overwrite: bool) -> None:
    """Write the set beside its place, then rename it in while the catalog rows commit: all or nothing."""
    root = datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Split] = content["splits"]
    source = f"upload:{content['source_name']}"
    meta = {
        "format": FORMAT, "name": name, "modality": content["modality"], "kind": content["kind"],
        "class_names": content["class_names"], "source": source, "source_file": content["source_name"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "description": f"imported from {content['source_name']}: {content['description_tail']}, "
                       f"{len(content['class_names'])} classes",
        "warnings": content["warnings"], "sizes": {k: len(v) for k, v in splits.items()},
        "fingerprints": {k: v.fingerprint for k, v in splits.items()},
        **({"columns": content["columns"]} if "columns" in content else {}),
        **({"image_size": content["image_size"]} if "image_size" in content else {}),
    }
    tmp = root / _scratch_name(".tmp", name)
    tmp.mkdir()
    final, old = root / name, None
    moved = False
    try:
        for split, data in splits.items():
            _write_split(tmp, split, data, content["modality"])
        _write_file(tmp / META, lambda f: f.write(json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8")))
        fsync_dir(tmp)
        with _lock(root):
            _sweep(root)
            if final.exists():
                if not overwrite:
                    refuse_existing(name, overwrite)
                old = root / _scratch_name(".old", name)
            with open_catalog() as cat, cat.transaction() as cur:
                cur.execute("DELETE FROM datasets WHERE name = ?", [name])
                for split, data in splits.items():
                    cat.upsert_dataset(name, split, fingerprint=data.fingerprint, modality=content["modality"],
                                       num_examples=len(data), class_names=content["class_names"], source=source)
                if old is not None:
                    os.rename(final, old)
                os.rename(tmp, final)
                moved = True
                fsync_dir(root)
    except BaseException:
        if moved:
            os.rename(final, tmp)
        if old is not None and old.exists() and not final.exists():
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
