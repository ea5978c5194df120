"""Users' own data sets: a table (CSV, JSONL, Parquet), a zip of class folders, or such a folder.

The front of three rooms: ``zoo.tableimport`` and ``zoo.imageimport`` read and check an
upload, ``zoo.userstore`` keeps what they build.

An upload is untrusted input, so everything about it is checked before anything is
stored, and a refusal is one ``UploadError`` saying what is wrong and what to do:

* tables: one text and one label column (guessed, or named; several text columns joined
  by a template), labels as strings or
  whole numbers, an optional ``split`` column (train/test), else a stratified 80/20
  split with the bundled sets' seed. Rows without a text or a label are dropped and
  counted; over-long texts are cut; odd Unicode (emoji, RTL marks, combining marks,
  zero-width characters, NUL) is kept as it is.
* image zips and folders: ``<class>/<file>`` or ``train|test/<class>/<file>``, one wrapping
  folder allowed. Entries are decoded with PIL straight from the archive in memory; nothing is
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

from pathlib import Path

from zoo import userstore
from zoo.datasets import clear_cache, load_dataset
from zoo.datatypes import Dataset
from zoo.imageimport import IMAGE_SUFFIXES, MAX_SIDE, images_content, layout_of, open_images  # noqa: F401
from zoo.tableimport import (LABEL_NAMES, TABLE_SUFFIXES, guess_columns, read_table,  # noqa: F401
                             split_column, table_content)
from zoo.userstore import (FORMAT, META, NAME_RE, DamagedDataset, Limits, UploadError,  # noqa: F401
                           check_name, clean_source_name, datasets_dir, human, list_user_datasets,
                           load_user_dataset, read_meta, refuse_existing, stamp, commit)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size


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
    base = {"file": path.name, "size_bytes": _size(path)}
    if kind in ("zip", "folder"):
        with open_images(path, limits) as zf:
            layout = layout_of(zf)
        counts: dict[str, int] = {}
        for entry in layout.entries:
            counts[entry.label] = counts.get(entry.label, 0) + 1
        per_split = {s: sum(e.split == s for e in layout.entries) for s in ("train", "test")}
        return {**base, "kind": "images", "classes": sorted(counts), "files_per_class": dict(sorted(counts.items())),
                "skipped": list(layout.skipped), "has_splits": layout.has_splits,
                "files_per_split": per_split if layout.has_splits else None}
    frame = read_table(path, kind, limits)
    split_col = split_column(frame)
    label, text = guess_columns(frame, split_col)
    return {**base, "kind": "table", "format": kind, "columns": [str(c) for c in frame.columns], "rows": len(frame),
            "text_column": text, "label_column": label, "has_splits": split_col is not None,
            "preview": frame.head(10).copy()}


# -- import and removal -----------------------------------------------------------------------

def import_upload(path, name: str, *, text_column: str | list[str] | None = None, label_column: str | None = None,
                  overwrite: bool = False, limits: Limits = Limits(), source_name: str | None = None,
                  template: str | None = None) -> Dataset:
    """Import a table or an image zip as the data set ``name``, loadable with ``load_dataset(name)``.

    ``source_name`` is the file name to record when ``path`` is a temporary copy (a web
    upload); it defaults to ``path``'s own name. ``text_column="premise,hypothesis"`` joins
    several text columns into one text with ``template`` (``"Premise: {premise} Hypothesis:
    {hypothesis}"``). Dropped rows, cut texts and skipped zip entries are listed in the
    returned set's ``extra["warnings"]``.
    """
    name = check_name(name)
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a zoo.userdata.Limits; got {type(limits).__name__}")
    refuse_existing(name, overwrite)
    path, kind = _check_file(path, limits)
    source_name = clean_source_name(source_name or path.name)
    if kind in ("zip", "folder"):
        if text_column is not None or label_column is not None or template is not None:
            raise UploadError(f"{path.name} is an image {kind}: its classes are its folders, so template, "
                              "text_column and label_column do not apply; leave them out")
        content = images_content(path, limits)
    else:
        content = table_content(path, kind, text_column, label_column, limits, template)
    content.update(name=name, source_name=source_name)
    try:
        commit(name, content, overwrite)
    finally:
        clear_cache()
    return load_dataset(name)  # read back: what is returned is what was stored


def remove_dataset(name: str) -> None:
    """Delete an imported data set and its catalog rows; bundled sets cannot be removed.

    Features extracted from it stay in the feature store: they are keyed by the data's
    fingerprint, so importing the same data again reuses them.
    """
    try:
        userstore.remove_dataset(name)
    finally:
        clear_cache()



# -- files ------------------------------------------------------------------------------------

def _check_file(path, limits: Limits) -> tuple[Path, str]:
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() and not path.is_symlink():
        return path, "folder"  # its files are counted and sized by zoo.imageimport's checks
    if suffix not in (*TABLE_SUFFIXES, ".zip"):
        raise UploadError(f"cannot import {path.name!r}: aftzoo reads tables (.csv, .jsonl, .parquet) and image "
                          "folders zipped (.zip) or as they are (one sub-folder per class); save the data as one "
                          "of these")
    if not path.exists():
        raise UploadError(f"no file at {path}")
    if not path.is_file():
        raise UploadError(f"{path} is not a file or a folder; import a table, an image folder or a zip of one")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise UploadError(f"{path.name} is {human(size)}, more than the upload limit of "
                          f"{human(limits.max_upload_bytes)} (Limits.max_upload_bytes); use a smaller sample "
                          "or raise the limit")
    if size == 0:
        raise UploadError(f"{path.name} is empty (0 bytes); upload a file with data in it")
    return path, suffix[1:]


