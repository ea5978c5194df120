"""Import a table (CSV, JSONL, Parquet) of texts and labels as a user's data set.

One label column and one text column (guessed, or named), or several text columns
(``text_column="premise,hypothesis"``) written into one text by a ``template``
(``"Premise: {premise} Hypothesis: {hypothesis}"``; default: the columns one per line);
labels as strings or whole numbers; an optional ``split`` column (train/test), else a
stratified 80/20 split with the bundled sets' seed. Rows without a text or a label are
dropped and counted; over-long texts are cut; odd Unicode (emoji, RTL marks, combining
marks, zero-width characters, NUL) is kept as it is.
"""
from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from zoo.datatypes import stratified
from zoo.userstore import (Limits, UploadError, check_stratifiable, first_line, given_splits, human)

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
LABEL_NAMES = ("label", "labels", "class", "category", "target")
_CHUNK = 1 << 20
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


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


def read_table(path: Path, kind: str, limits: Limits):
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
            raise UploadError(f"cannot read {path.name} as CSV ({first_line(exc)}); check its quoting and "
                              "that every row has the header's number of fields") from None
    elif kind == "jsonl":
        frame = pd.DataFrame.from_records(list(_jsonl_rows(path)))
    else:
        frame = _read_parquet(path, limits)
    frame.columns = [str(c) for c in frame.columns]
    if frame.shape[1] == 0 or len(frame) == 0:
        raise UploadError(f"{path.name} has no rows; a table needs one row per example, with a text and a label")
    return frame


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
                raise UploadError(f"line {number} of {path.name} is not valid JSON ({first_line(exc)}); write one "
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
            raise UploadError(f"{path.name} declares {human(declared)} of data uncompressed, more than "
                              f"{human(limits.max_unpacked_bytes)} (Limits.max_unpacked_bytes); use a smaller "
                              "sample or raise the limit")
        return con.execute("SELECT * FROM read_parquet(?)", [str(path)]).df()
    except duckdb.Error as exc:
        raise UploadError(f"cannot read {path.name} as Parquet ({first_line(exc)}); write it again with "
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


def split_column(frame) -> str | None:
    named = [c for c in frame.columns if c.strip().lower() == "split"]
    return named[0] if named else None


def _distinct(values) -> int | None:
    try:
        return len({v for v in values if not _missing(v) and not (isinstance(v, str) and not v.strip())})
    except TypeError:  # lists or dicts in the column: not labels
        return None


def guess_columns(frame, split_col: str | None, label: str | None = None) -> tuple[str | None, str | None]:
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


def text_columns(text_column) -> list[str] | None:
    """``"premise,hypothesis"`` or a list -> the column names; None for "guess one"."""
    if text_column is None:
        return None
    names = [c.strip() for c in text_column.split(",")] if isinstance(text_column, str) else list(text_column)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise UploadError(f"text_column must name one column or several separated by commas; got {text_column!r}")
    return names


def _joined_texts(frame, columns: list[str], template: str | None, path: Path) -> list:
    """Several text columns written into one text per row by ``template`` (``{column}`` fields)."""
    template = template or "\n".join(f"{{{c}}}" for c in columns)
    unknown = [f for f in re.findall(r"\{([^{}]+)\}", template) if f not in columns]
    if unknown:
        raise UploadError(f"the template names {', '.join(map(repr, unknown))}, which are not among the text "
                          f"columns {', '.join(map(repr, columns))}; use {{column}} fields of those columns")
    values = {c: _text_values(frame, c, path) for c in columns}
    out = []
    for row in range(len(frame)):
        if any(values[c][row] is None for c in columns):
            out.append(None)
            continue
        text = template
        for c in columns:
            text = text.replace(f"{{{c}}}", values[c][row])
        out.append(text)
    return out


def table_content(path: Path, kind: str, text_column, label_column, limits: Limits,
                   template: str | None = None) -> dict:
    frame = read_table(path, kind, limits)
    split_col = split_column(frame)
    guessed_label = guess_columns(frame, split_col)[0] if label_column is None else None
    label_col = _pick_column(frame, path, label_column, guessed_label, "label")
    several = text_columns(text_column)
    if several is not None and len(several) > 1:
        text_cols = [_pick_column(frame, path, c, None, "text") for c in several]
        if label_col in text_cols:
            raise UploadError(f"{label_col!r} is named as a text column and is the label column; name it once")
        text_col = ",".join(text_cols)
        texts = _joined_texts(frame, text_cols, template, path)
    else:
        if template is not None:
            raise UploadError("a template joins several text columns; name them with text_column='a,b' "
                              "(--text-column a,b), or leave the template out")
        guessed_text = guess_columns(frame, split_col, label=label_col)[1] if several is None else None
        text_col = _pick_column(frame, path, several[0] if several else None, guessed_text, "text")
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
        parts = given_splits(texts, y, splits, class_names, where, split_col, notes)
    else:
        check_stratifiable(y, class_names, where, "add a 'split' column (train/test)")
        parts = stratified(texts, y)
    return {"modality": "text", "kind": "table", "class_names": class_names, "splits": parts, "warnings": notes,
            "description_tail": f"{len(texts):,} texts",
            "columns": {"text": text_col, "label": label_col, **({"template": template} if template else {})}}


