"""Users' own data sets: a table (CSV, JSONL, Parquet) or a zip of class folders.

An upload is untrusted input, so everything about it is checked before anything is
stored, and a refusal is one ``UploadError`` saying what is wrong and what to do:

* tables: one text and one label column (guessed, or named), labels as strings or
  whole numbers, an optional ``split`` column (train/test), else a stratified 80/20
  split with the bundled sets' seed. Rows without a text or a label are dropped and
  counted; over-long texts are cut; odd Unicode (emoji, RTL marks, combining marks,
  zero-width characters, NUL) is kept as it is.
* image zips: ``<class>/<file>`` or ``train|test/<class>/<file>``, one wrapping folder
  allowed. Entries are decoded with PIL straight from the archive in memory; nothing is
  ever extracted to disk. The archive is refused whole on a zip-slip entry name, and on
  zip-bomb signs (too many entries, too many bytes declared or actually inflated, an
  entry compressed too well, an image with too many pixels).

An imported set lives in ``$AFTZOO_HOME/datasets/<name>/`` (``meta.json`` and the
splits), is indexed in the catalog's ``datasets`` table with source
``upload:<file name>``, and loads through ``zoo.datasets.load_dataset(name)`` like a
bundled one. It is written to a temporary folder beside its final place and renamed
into it in the same step as the catalog rows are committed, so a failed or killed
import leaves nothing half-written, and a failed overwrite leaves the old set intact.
"""
from __future__ import annotations

import codecs
import io
import json
import math
import os
import re
import shutil
import stat
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from zoo import datasets as _datasets
from zoo.datasets import DATASETS, Dataset, Split

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
LABEL_NAMES = ("label", "labels", "class", "category", "target")
MAX_SIDE = 224
META = "meta.json"
FORMAT = 1
# Modes PIL decodes greyscale files into; a set is stored as (N, S, S) only when all are.
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_CHUNK = 1 << 20
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class UploadError(ValueError):
    """An upload (or a data set name) that cannot be imported as asked; the message says what to do."""


class DamagedDataset(RuntimeError):
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
    return name


def datasets_dir() -> Path:
    from storage.settings import get_settings

    return get_settings().home / "datasets"


def _user_dir(name: str) -> Path | None:
    # Only a valid name reaches the file system: load_dataset('../x') must not look outside the folder.
    if not isinstance(name, str) or not NAME_RE.match(name) or name in DATASETS:
        return None
    return datasets_dir() / name


def list_user_datasets() -> list[str]:
    """Names of the imported data sets in this ``AFTZOO_HOME``."""
    root = datasets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if NAME_RE.match(p.name) and p.name not in DATASETS and (p / META).is_file())


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
        raise _datasets.UnknownDataset(_unknown(name))
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("modality") not in ("text", "image"):
            raise ValueError(f"unknown format {meta.get('format')!r}")
    except (OSError, ValueError) as exc:
        raise _damaged(name, f"meta.json: {exc}") from None
    return meta


def _unknown(name: str) -> str:
    return f"unknown data set {name!r}; choose one of: {', '.join(_datasets.list_datasets())}"


def _damaged(name: str, why: str) -> DamagedDataset:
    return DamagedDataset(f"the imported data set {name!r} is damaged ({why}); remove it with "
                          f"`aftzoo remove-dataset {name}` and import it again")


# -- loading ----------------------------------------------------------------------------------

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
                images = np.load(folder / f"{split}_images.npy", allow_pickle=False)
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


def describe_user(name: str) -> dict:
    """``zoo.datasets.describe`` for an imported set: the same keys as for a bundled one."""
    try:
        meta = read_meta(name)
    except DamagedDataset as exc:
        return {"name": name, "modality": "?", "description": "imported data set", "pack": None,
                "present": False, "how_to_get": str(exc)}
    row = {"name": name, "modality": meta["modality"], "description": meta["description"], "pack": None}
    try:
        ds = _datasets.load_dataset(name)
    except DamagedDataset as exc:
        return {**row, "present": False, "how_to_get": str(exc)}
    return _datasets.present_row(row, ds)


# -- a cheap look -----------------------------------------------------------------------------

def inspect_upload(path, *, limits: Limits = Limits()) -> dict:
    """What an upload holds, before importing it; refuses the same bad files ``import_upload`` does.

    Tables: ``kind="table"``, ``columns``, ``rows``, the guessed ``text_column`` and
    ``label_column`` (None where no column fits), ``has_splits`` and ``preview`` (the first
    10 rows as a DataFrame). Image zips: ``kind="images"``, ``classes``,
    ``files_per_class``, ``skipped`` ((entry, reason) pairs), ``has_splits`` and
    ``files_per_split`` (None without train/test folders); only the entry names are read
    here, so a damaged image is found by the import itself. Both give ``file`` and
    ``size_bytes``.
    """
    path, kind = _check_file(path, limits)
    base = {"file": path.name, "size_bytes": path.stat().st_size}
    if kind == "zip":
        with _open_zip(path, limits) as zf:
            layout = _layout(zf)
        counts: dict[str, int] = {}
        for entry in layout.entries:
            counts[entry.label] = counts.get(entry.label, 0) + 1
        per_split = {s: sum(e.split == s for e in layout.entries) for s in ("train", "test")}
        return {**base, "kind": "images", "classes": sorted(counts), "files_per_class": dict(sorted(counts.items())),
                "skipped": list(layout.skipped), "has_splits": layout.has_splits,
                "files_per_split": per_split if layout.has_splits else None}
    frame = _read_table(path, kind, limits)
    split_col = _split_column(frame)
    label, text = _guess_columns(frame, split_col)
    return {**base, "kind": "table", "format": kind, "columns": [str(c) for c in frame.columns], "rows": len(frame),
            "text_column": text, "label_column": label, "has_splits": split_col is not None,
            "preview": frame.head(10).copy()}


# -- import and removal -----------------------------------------------------------------------

def import_upload(path, name: str, *, text_column: str | None = None, label_column: str | None = None,
                  overwrite: bool = False, limits: Limits = Limits(), source_name: str | None = None) -> Dataset:
    """Import a table or an image zip as the data set ``name``, loadable with ``load_dataset(name)``.

    ``source_name`` is the file name to record when ``path`` is a temporary copy (a web
    upload); it defaults to ``path``'s own name. Dropped rows, cut texts and skipped zip
    entries are listed in the returned set's ``extra["warnings"]``.
    """
    name = check_name(name)
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a zoo.userdata.Limits; got {type(limits).__name__}")
    _refuse_existing(name, overwrite)
    path, kind = _check_file(path, limits)
    source_name = _clean_source_name(source_name or path.name)
    if kind == "zip":
        if text_column is not None or label_column is not None:
            raise UploadError(f"{path.name} is an image zip: its classes are its folders, so text_column and "
                              "label_column do not apply; leave them out")
        content = _images_content(path, limits)
    else:
        content = _table_content(path, kind, text_column, label_column, limits)
    content.update(name=name, source_name=source_name)
    _commit(name, content, overwrite)
    return _datasets.load_dataset(name)  # read back: what is returned is what was stored


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
    from storage.catalog import open_catalog

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
        _fsync_dir(root)
    shutil.rmtree(trash, ignore_errors=True)
    _datasets.clear_cache()


# -- files ------------------------------------------------------------------------------------

def _check_file(path, limits: Limits) -> tuple[Path, str]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*TABLE_SUFFIXES, ".zip"):
        raise UploadError(f"cannot import {path.name!r}: aftzoo reads tables (.csv, .jsonl, .parquet) and image "
                          "folders zipped (.zip); save the data as one of these")
    if not path.exists():
        raise UploadError(f"no file at {path}")
    if not path.is_file():
        raise UploadError(f"{path} is not a file; for an image folder, zip it first")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise UploadError(f"{path.name} is {_human(size)}, more than the upload limit of "
                          f"{_human(limits.max_upload_bytes)} (Limits.max_upload_bytes); use a smaller sample "
                          "or raise the limit")
    if size == 0:
        raise UploadError(f"{path.name} is empty (0 bytes); upload a file with data in it")
    return path, suffix[1:]


def _clean_source_name(name: str) -> str:
    # Recorded and shown, never used as a path: keep it printable and on one line.
    name = PurePosixPath(str(name).replace("\\", "/")).name
    return "".join(ch if ch.isprintable() else "?" for ch in name)[:200] or "upload"


def _human(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


# -- tables -----------------------------------------------------------------------------------

def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8, naming the line, before pandas gives a less helpful error."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk[:max(exc.start, 0)].count(b"\n")
                byte = chunk[exc.start] if 0 <= exc.start < len(chunk) else None
                what = f"byte 0x{byte:02x}" if byte is not None else "a byte"
                raise UploadError(f"{path.name} is not UTF-8 text ({what} on line {line}); save it as UTF-8 "
                                  "(Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8) and upload it again") from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UploadError(f"{path.name} is not UTF-8 text (it ends inside a character); save it as UTF-8 "
                              "and upload it again") from None


def _read_table(path: Path, kind: str, limits: Limits):
    import pandas as pd

    if kind == "csv":
        _check_utf8(path)
        try:
            # Every field as text and only empty fields missing: a review that says "NA" or "None" is a text.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                                compression=None, engine="c")
        except pd.errors.EmptyDataError:
            raise UploadError(f"{path.name} is empty: no header and no rows; a table needs a header line "
                              "naming its columns, then one row per example") from None
        except (pd.errors.ParserError, ValueError) as exc:
            raise UploadError(f"cannot read {path.name} as CSV ({_first_line(exc)}); check its quoting and "
                              "that every row has the header's number of fields") from None
    elif kind == "jsonl":
        frame = pd.DataFrame.from_records(list(_jsonl_rows(path)))
    else:
        frame = _read_parquet(path, limits)
    frame.columns = [str(c) for c in frame.columns]
    if frame.shape[1] == 0 or len(frame) == 0:
        raise UploadError(f"{path.name} has no rows; a table needs one row per example, with a text and a label")
    return frame


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UploadError(f"{path.name} is not UTF-8 text (line {number}); save it as UTF-8 and upload "
                                  "it again") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise UploadError(f"line {number} of {path.name} is not valid JSON ({_first_line(exc)}); write one "
                                  'object per line, like {"text": "...", "label": "..."}') from None
            if not isinstance(row, dict):
                raise UploadError(f"line {number} of {path.name} is a JSON {type(row).__name__}, not an object; "
                                  'write one object per line, like {"text": "...", "label": "..."}')
            yield row


def _read_parquet(path: Path, limits: Limits):
    # DuckDB (already the catalog's engine) reads Parquet, so no pyarrow is needed.
    import duckdb

    con = duckdb.connect()
    try:
        declared = con.execute("SELECT coalesce(sum(total_uncompressed_size), 0) FROM parquet_metadata(?)",
                               [str(path)]).fetchone()[0]
        if declared > limits.max_unpacked_bytes:
            raise UploadError(f"{path.name} declares {_human(declared)} of data uncompressed, more than "
                              f"{_human(limits.max_unpacked_bytes)} (Limits.max_unpacked_bytes); use a smaller "
                              "sample or raise the limit")
        return con.execute("SELECT * FROM read_parquet(?)", [str(path)]).df()
    except duckdb.Error as exc:
        raise UploadError(f"cannot read {path.name} as Parquet ({_first_line(exc)}); write it again with "
                          "pandas' to_parquet or export it as CSV") from None
    finally:
        con.close()


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _split_column(frame) -> str | None:
    named = [c for c in frame.columns if c.strip().lower() == "split"]
    return named[0] if named else None


def _distinct(values) -> int | None:
    try:
        return len({v for v in values if not _missing(v) and not (isinstance(v, str) and not v.strip())})
    except TypeError:  # lists or dicts in the column: not labels
        return None


def _guess_columns(frame, split_col: str | None, label: str | None = None) -> tuple[str | None, str | None]:
    """(label, text) guesses: a named label column or the one with fewest distinct values; the longest texts.

    A ``label`` already chosen is kept, and only the text column is guessed around it.
    """
    cols = [c for c in frame.columns if c != split_col]
    if label is None:
        label = next((c for want in LABEL_NAMES for c in cols if c.strip().lower() == want), None)
    if label is None:
        few = max(2, len(frame) // 2)  # a label repeats: at most one distinct value for every two rows
        scored = []
        for i, c in enumerate(cols):
            values = frame[c].tolist()
            if any(isinstance(v, (float, np.floating)) and not _missing(v) and not float(v).is_integer()
                   for v in values):
                continue  # scores and measurements are not classes
            n = _distinct(values)
            if n is not None and 2 <= n <= min(few, 1000):
                # Ties (repeated texts can have as few distinct values as labels) go to the shorter values.
                length = sum(len(str(v)) for v in values) / max(len(values), 1)
                scored.append((n, length, i, c))
        label = min(scored)[3] if scored else None
    best, text = 0.0, None
    for c in cols:
        if c == label:
            continue
        values = [v for v in frame[c].tolist() if not _missing(v)]
        strings = [v for v in values if isinstance(v, str)]
        if values and len(strings) >= 0.9 * len(values):
            mean = sum(map(len, strings)) / len(strings)
            if mean > best:
                best, text = mean, c
    return label, text


def _pick_column(frame, path: Path, given: str | None, guessed: str | None, role: str) -> str:
    columns = ", ".join(repr(c) for c in frame.columns)
    option = f"{role}_column= (--{role}-column)"
    if given is not None:
        if given not in frame.columns:
            close = [c for c in frame.columns if c.lower() == str(given).lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UploadError(f"{path.name} has no column {given!r}{hint}; its columns are {columns}")
        return given
    if guessed is None:
        sep = next((s for s in (";", "\t", "|") if len(frame.columns) == 1 and s in frame.columns[0]), None)
        hint = (f"; it looks separated by {sep!r}: aftzoo reads comma-separated files" if sep else "")
        what = "the labels (a column with a few distinct values)" if role == "label" else "the texts"
        raise UploadError(f"cannot tell which column of {path.name} holds {what}; its columns are {columns}{hint}; "
                          f"name it with {option}")
    return guessed


def _text_values(frame, column: str, path: Path) -> list:
    out = []
    for row, v in enumerate(frame[column].tolist(), 1):
        if _missing(v) or (isinstance(v, str) and not v.strip()):
            out.append(None)
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, (bool, int, float, np.number, np.bool_)):
            out.append(str(v))
        else:
            raise UploadError(f"row {row} of column {column!r} in {path.name} holds a {type(v).__name__}, not a "
                              "text; name the text column with text_column= (--text-column)")
    return out


def _label_values(frame, column: str, path: Path) -> list:
    """Each label as an int or a str, None where missing."""
    out: list = []
    for row, v in enumerate(frame[column].tolist(), 1):
        if _missing(v):
            out.append(None)
        elif isinstance(v, (bool, np.bool_)):
            out.append(str(bool(v)).lower())
        elif isinstance(v, (int, np.integer)):
            out.append(int(v))
        elif isinstance(v, (float, np.floating)):
            out.append(int(v) if float(v).is_integer() else repr(float(v)))
        elif isinstance(v, str):
            out.append(v.strip() or None)
        else:
            raise UploadError(f"the label column {column!r} of {path.name} holds a {type(v).__name__} (row {row}); "
                              "labels must be strings or whole numbers; name the right column with "
                              "label_column= (--label-column)")
    present = [v for v in out if v is not None]
    if present and all(isinstance(v, int) or _NUMBER.fullmatch(v) for v in present):
        # Numbers (as a CSV spells them too): whole ones are classes sorted as numbers (2 before 10);
        # fractions mean the column holds scores or measurements, not classes.
        fraction = next(((row, v) for row, v in enumerate(out, 1)
                         if isinstance(v, str) and not float(v).is_integer()), None)
        if fraction is not None:
            raise UploadError(f"the label column {column!r} of {path.name} holds {fraction[1]} (row {fraction[0]}); "
                              "labels name classes, so they must be strings or whole numbers; "
                              "name the right column with label_column= (--label-column)")
        return [None if v is None else int(v) if isinstance(v, int) or v.strip('+-').isdigit() else int(float(v))
                for v in out]
    return [None if v is None else str(v) for v in out]


def _fix_text(text: str, limit: int, counts: dict) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (from JSON escapes) cannot be stored or hashed as UTF-8
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        counts["surrogates"] += 1
    if len(text) > limit:
        text = text[:limit]
        counts["cut"] += 1
    return text


def _table_content(path: Path, kind: str, text_column, label_column, limits: Limits) -> dict:
    frame = _read_table(path, kind, limits)
    split_col = _split_column(frame)
    guessed_label = _guess_columns(frame, split_col)[0] if label_column is None else None
    label_col = _pick_column(frame, path, label_column, guessed_label, "label")
    guessed_text = _guess_columns(frame, split_col, label=label_col)[1] if text_column is None else None
    text_col = _pick_column(frame, path, text_column, guessed_text, "text")
    if text_col == label_col:
        raise UploadError(f"the text and the label column are both {text_col!r}; name two different columns")
    texts = _text_values(frame, text_col, path)
    labels = _label_values(frame, label_col, path)
    splits = ([None if _missing(v) else str(v).strip().lower() for v in frame[split_col].tolist()]
              if split_col is not None else [None] * len(frame))

    notes: list[str] = []
    keep = [i for i in range(len(frame)) if texts[i] is not None and labels[i] is not None]
    dropped = len(frame) - len(keep)
    if dropped:
        first = next(i for i in range(len(frame)) if texts[i] is None or labels[i] is None) + 1
        notes.append(f"dropped {dropped} row(s) without a text or a label (first: data row {first})")
    if not keep:
        raise UploadError(f"no row of {path.name} has both a text ({text_col!r}) and a label ({label_col!r}); "
                          "check the column names")
    counts = {"surrogates": 0, "cut": 0}
    texts = [_fix_text(texts[i], limits.max_text_chars, counts) for i in keep]
    labels = [labels[i] for i in keep]
    splits = [splits[i] for i in keep]
    if counts["cut"]:
        notes.append(f"cut {counts['cut']} text(s) longer than {limits.max_text_chars:,} characters "
                     "(Limits.max_text_chars)")
    if counts["surrogates"]:
        notes.append(f"replaced unpaired surrogate characters with U+FFFD in {counts['surrogates']} text(s)")
    repeats = len(texts) - len(set(texts))
    if repeats:
        notes.append(f"{repeats} text(s) repeat an earlier one; repeats may land on both sides of the split")

    keys = sorted(set(labels))
    class_names = [str(k) for k in keys]
    index = {k: i for i, k in enumerate(keys)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    where = f"the label column {label_col!r} of {path.name}"
    if split_col is not None:
        parts = _given_splits(texts, y, splits, class_names, where, split_col, notes)
    else:
        _check_stratifiable(y, class_names, where, "add a 'split' column (train/test)")
        parts = _datasets._stratified(texts, y)
    return {"modality": "text", "kind": "table", "class_names": class_names, "splits": parts, "warnings": notes,
            "description_tail": f"{len(texts):,} texts", "columns": {"text": text_col, "label": label_col}}


def _given_splits(inputs, y: np.ndarray, which: list, class_names: list[str], where: str, column: str,
                  notes: list[str]) -> dict[str, Split]:
    bad = sorted({"" if w is None else w for w in which} - {"train", "test"})
    if bad:
        raise UploadError(f"the {column!r} column has values other than train and test ({', '.join(map(repr, bad))}); "
                          "use train or test on every row, or drop the column for a stratified 80/20 split")
    _check_classes(y, class_names, where)
    rng = np.random.default_rng(_datasets._SPLIT_SEED)
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


def _check_classes(y: np.ndarray, class_names: list[str], where: str) -> None:
    if len(class_names) < 2:
        only = f" ({class_names[0]!r})" if class_names else ""
        raise UploadError(f"{where} has only one class{only}; a classifier needs at least 2 classes")


def _check_stratifiable(y: np.ndarray, class_names: list[str], where: str, alternative: str) -> None:
    _check_classes(y, class_names, where)
    counts = np.bincount(y, minlength=len(class_names))
    thin = [f"{class_names[k]!r} ({counts[k]})" for k in np.flatnonzero(counts < 2)]
    if thin:
        raise UploadError(f"class(es) {', '.join(thin[:10])}{' ...' if len(thin) > 10 else ''} in {where} have fewer "
                          "than 2 examples, so they cannot be stratified into train and test; add examples, "
                          f"remove those classes, or {alternative}")
    n, k = len(y), len(class_names)
    n_test = math.ceil(n * _datasets._TEST_FRACTION)
    if n_test < k or n - n_test < k:
        raise UploadError(f"{n} examples in {k} classes are too few for a stratified 80/20 split (its test part of "
                          f"{n_test} must hold every class at least once); add examples or {alternative}")


# -- image zips -------------------------------------------------------------------------------

@dataclass
class _Entry:
    info: zipfile.ZipInfo
    split: str | None
    label: str


@dataclass
class _Layout:
    entries: list[_Entry]
    skipped: list[tuple[str, str]]
    has_splits: bool


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    return (norm.startswith("/") or bool(re.match(r"^[A-Za-z]:", norm)) or "\x00" in norm
            or any(part == ".." for part in norm.split("/")))


@contextmanager
def _open_zip(path: Path, limits: Limits) -> Iterator[zipfile.ZipFile]:
    """The archive, opened only after its directory passes the zip-slip and zip-bomb checks."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise UploadError(f"{path.name} is not a readable zip archive ({_first_line(exc)}); zip the folder "
                          "again") from None
    try:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise UploadError(f"{path.name} has {len(infos):,} entries, more than {limits.max_files:,} "
                              "(Limits.max_files); upload fewer files or raise the limit")
        for info in infos:
            if _unsafe(info.filename):
                # Never extracted, but a name that climbs out of the folder only comes from a crafted archive.
                raise UploadError(f"{path.name} has an unsafe entry {info.filename!r} (an absolute path, a drive "
                                  "letter or a '..' component); the whole archive is refused: zip the folder "
                                  "again from inside it")
        total = sum(i.file_size for i in infos)
        if total > limits.max_unpacked_bytes:
            raise UploadError(f"{path.name} unpacks to {_human(total)}, more than {_human(limits.max_unpacked_bytes)} "
                              "(Limits.max_unpacked_bytes); upload fewer or smaller images, or raise the limit")
        for info in infos:
            if info.file_size >= limits.ratio_floor_bytes:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > limits.max_ratio:
                    raise UploadError(f"{path.name} looks like a zip bomb: entry {info.filename!r} inflates "
                                      f"{ratio:,.0f} times ({_human(info.compress_size)} to {_human(info.file_size)}), "
                                      f"more than {limits.max_ratio:g} (Limits.max_ratio); the archive is refused")
        yield zf
    finally:
        zf.close()


def _layout(zf: zipfile.ZipFile) -> _Layout:
    """Which entries are images of which class (and split); why each other entry is skipped."""
    skipped: list[tuple[str, str]] = []
    images: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        if info.is_dir():
            continue
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
        if not parts:
            continue
        if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            skipped.append((info.filename, "system file (macOS metadata or hidden)"))
        elif stat.S_ISLNK(info.external_attr >> 16):
            skipped.append((info.filename, "symbolic link"))
        elif PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((info.filename, "not an image file"))
        else:
            images.append((info, parts))
    # One wrapping folder (zip tools add the folder's own name) is dropped when class folders remain below it.
    tops = {parts[0] for _, parts in images}
    if len(tops) == 1 and any(len(parts) >= 3 for _, parts in images):
        images = [(info, parts[1:]) for info, parts in images]
    has_splits = {parts[0].lower() for _, parts in images if len(parts) >= 3} >= {"train", "test"}
    entries = []
    for info, parts in images:
        split = parts[0].lower() if has_splits and len(parts) >= 2 else None
        rest = parts[1:] if has_splits else parts
        if has_splits and split not in ("train", "test"):
            skipped.append((info.filename, "outside the train/ and test/ folders"))
        elif len(rest) < 2:
            skipped.append((info.filename, "not inside a class folder"))
        else:
            entries.append(_Entry(info, split, rest[0]))
    return _Layout(entries, skipped, has_splits)


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int]) -> bytes:
    """The entry's bytes, counted as they inflate: a header that lies about sizes gains nothing."""
    out = bytearray()
    with zf.open(info) as f:
        while chunk := f.read(_CHUNK):
            out += chunk
            budget[0] -= len(chunk)
            if len(out) > info.file_size:
                raise UploadError(f"entry {info.filename!r} inflates past the {info.file_size:,} bytes its header "
                                  "declares; the archive is refused")
            if budget[0] < 0:
                raise UploadError("the archive inflates past Limits.max_unpacked_bytes while being read; "
                                  "it is refused")
    return bytes(out)


@contextmanager
def _pil_guard(limit: int):
    """PIL's own decompression-bomb check at our limit, its warning raised as an error."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _bomb(path: Path, entry: str, pixels, limits: Limits) -> UploadError:
    """The refusal of an image past the pixel limit; ``pixels`` is a count or PIL's own exception."""
    if isinstance(pixels, BaseException):
        found = re.search(r"\((\d+) pixels\)", str(pixels))
        pixels = int(found.group(1)) if found else None
    has = f"has {pixels:,} pixels" if pixels is not None else "has too many pixels"
    return UploadError(f"{path.name}: image {entry!r} {has}, more than {limits.max_image_pixels:,} "
                       "(Limits.max_image_pixels); the archive is refused: shrink the image or raise the limit")


def _to_array(img, side: int, grey: bool) -> np.ndarray:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if a.max(initial=0) > 255:  # 16-bit scans: keep the range, not a saturated copy
            a = a / 257.0
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels shown on white, as a viewer would
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("L" if grey else "RGB")
    w, h = img.size
    if (w, h) != (side, side):
        # Short side to `side`, then the centre square: what models' own eval preprocessing does.
        scale = side / min(w, h)
        nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - side) // 2, (nh - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8)


def _images_content(path: Path, limits: Limits) -> dict:
    from PIL import Image, UnidentifiedImageError

    # Any failure to decode one untrusted file skips that file (with its reason); bombs and limits refuse all.
    decode_errors = (UnidentifiedImageError, Exception)
    notes: list[str] = []
    with _open_zip(path, limits) as zf, _pil_guard(limits.max_image_pixels):
        layout = _layout(zf)
        skipped = list(layout.skipped)
        # Pass 1, headers only: sizes and modes decide the array's shape before anything is decoded.
        heads = []
        for entry in layout.entries:
            try:
                with zf.open(entry.info) as f, Image.open(f) as img:
                    size, mode = img.size, img.mode
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb(path, entry.info.filename, exc, limits) from None
            except decode_errors as exc:
                skipped.append((entry.info.filename, f"not a readable image ({_first_line(exc)})"))
                continue
            if size[0] * size[1] > limits.max_image_pixels:
                raise _bomb(path, entry.info.filename, size[0] * size[1], limits)
            heads.append((entry, size, mode))
        if not heads:
            raise UploadError(f"{path.name} has no usable images ({_skipped_summary(skipped)}); zip a folder with "
                              "one sub-folder of images per class")
        side = int(min(MAX_SIDE, max(1, np.median([min(s) for _, s, _ in heads]))))
        grey = all(m in _GREY_MODES for _, _, m in heads)
        shape = (len(heads), side, side) if grey else (len(heads), side, side, 3)
        need = math.prod(shape)
        if need > limits.max_array_bytes:
            raise UploadError(f"{path.name}'s {len(heads):,} images at {side}x{side} would take {_human(need)} in "
                              f"memory, more than {_human(limits.max_array_bytes)} (Limits.max_array_bytes); "
                              "upload fewer images or raise the limit")
        # Pass 2: decode each image in full (a truncated file fails here) into one preallocated array.
        pixels = np.empty(shape, dtype=np.uint8)
        kept: list[_Entry] = []
        budget = [limits.max_unpacked_bytes]
        for entry, _, _ in heads:
            name = entry.info.filename
            try:
                data = _read_entry(zf, entry.info, budget)
                with Image.open(io.BytesIO(data)) as img:
                    if img.format == "JPEG":  # decode at a reduced scale when it is far larger than needed
                        w, h = img.size
                        scale = side / min(w, h)
                        img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))
                    img.load()
                    pixels[len(kept)] = _to_array(img, side, grey)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb(path, name, exc, limits) from None
            except UploadError:
                raise
            except decode_errors as exc:
                skipped.append((name, f"not a readable image ({_first_line(exc)})"))
                continue
            kept.append(entry)
    if not kept:
        raise UploadError(f"{path.name} has no usable images ({_skipped_summary(skipped)}); zip a folder with one "
                          "sub-folder of images per class")
    pixels = pixels[:len(kept)]
    for entry, reason in skipped:
        notes.append(f"skipped {entry!r}: {reason}")
    class_names = sorted({e.label for e in kept})
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[e.label] for e in kept], dtype=np.int64)
    lost = sorted({e.label for e in layout.entries} - set(class_names))
    if lost:
        notes.append(f"class folder(s) {', '.join(map(repr, lost))} had no readable image and were left out")
    where = f"{path.name}"
    if layout.has_splits:
        parts = _given_splits(pixels, y, [e.split for e in kept], class_names, where, "train/test folders", notes)
    else:
        _check_stratifiable(y, class_names, where, "use train/ and test/ folders")
        parts = _datasets._stratified(pixels, y)
    colour = "grey" if grey else "RGB"
    return {"modality": "image", "kind": "images", "class_names": class_names, "splits": parts, "warnings": notes,
            "description_tail": f"{len(kept):,} {colour} images {side}x{side}", "image_size": side}


def _skipped_summary(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return "no image files in class folders"
    shown = "; ".join(f"{e!r}: {r}" for e, r in skipped[:3])
    return f"skipped {len(skipped)}: {shown}{' ...' if len(skipped) > 3 else ''}"


# -- storing ----------------------------------------------------------------------------------

def _refuse_existing(name: str, overwrite: bool) -> None:
    folder = _user_dir(name)
    if not overwrite and folder is not None and folder.is_dir():
        try:
            meta = read_meta(name)
            when = f" (imported from {meta.get('source_file')} on {meta.get('created', '?')[:10]})"
        except (DamagedDataset, _datasets.UnknownDataset):
            when = ""
        raise UploadError(f"a data set named {name!r} already exists{when}; pass overwrite=True (--overwrite) to "
                          "replace it, or choose another name")


def _scratch_name(kind: str, name: str) -> str:
    return f"{kind}-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _sweep(root: Path, *, max_age: float = 24 * 3600) -> None:
    """Tidy what killed imports left: temp folders go; an overwritten set whose new copy never landed comes back."""
    for p in root.iterdir():
        if not p.name.startswith((".tmp-", ".old-", ".del-")) or not p.is_dir():
            continue
        try:
            kind_name, pid, _ = p.name.rsplit("-", 2)
            kind, name = kind_name.split("-", 1)
            alive = _pid_alive(int(pid)) and time.time() - p.stat().st_mtime < max_age
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _commit(name: str, content: dict, overwrite: bool) -> None:
    """Write the set beside its place, then rename it in while the catalog rows commit: all or nothing."""
    from storage.catalog import open_catalog

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
        _fsync_dir(tmp)
        with _lock(root):
            _sweep(root)
            if final.exists():
                if not overwrite:
                    _refuse_existing(name, overwrite)
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
                _fsync_dir(root)
    except BaseException:
        if moved:
            os.rename(final, tmp)
        if old is not None and old.exists() and not final.exists():
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _datasets.clear_cache()
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
