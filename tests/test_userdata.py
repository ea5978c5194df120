"""Users' own data sets: real tables and zips made here, good and hostile, imported and used downstream."""
import csv
import io
import json
import os
import struct
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from storage.catalog import open_catalog
from tests.helpers import run_cli
from zoo import userdata, userstore
from zoo.datasets import UnknownDataset, describe, list_datasets, load_dataset
from zoo.userdata import (
    DamagedDataset,
    Limits,
    UploadError,
    import_upload,
    inspect_upload,
    remove_dataset,
)

ODD = ["emoji 😀👍🏽 ok", "עברית RTL \u202eevil\u202c", "e\u0301 combining", "zero\u200bwidth\u200d", "nul\x00inside",
       "two\nlines, \"quoted\"", "NA", "None", "tab\there", "{braces} and 'quotes'",
       "line\u2028separator\u0085next\rreturn"]


def png(shape=(12, 16, 3), seed=0, value=None) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path, entries: dict) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return str(path)


def class_zip(path, classes=("cat", "dog"), n=6, prefix="", shape=(12, 16, 3), extra=None) -> str:
    entries = {f"{prefix}{c}/{i}.png": png(shape, seed=10 * k + i) for k, c in enumerate(classes) for i in range(n)}
    return make_zip(path, {**entries, **(extra or {})})


def texts_csv(path, n=20, labels=("neg", "pos"), **columns) -> str:
    frame = pd.DataFrame({"text": [f"example number {i} " + "word " * (i % 5) for i in range(n)],
                          "label": [labels[i % len(labels)] for i in range(n)], **columns})
    frame.to_csv(path, index=False)
    return str(path)


def stored(home) -> list[str]:
    root = home / "datasets"
    return sorted(p.name for p in root.iterdir() if p.name != ".lock") if root.exists() else []


def catalog_rows(name) -> list[dict]:
    with open_catalog() as cat:
        return cat.query("SELECT split, fingerprint, source FROM datasets WHERE name = ? ORDER BY split", [name])


def refused(fragment, path, name="mine", home=None, **kw):
    with pytest.raises(UploadError, match=fragment) as info:
        import_upload(path, name, **kw)
    if home is not None:
        assert name not in stored(home) and name not in userdata.list_user_datasets()
    return str(info.value)


# -- tables -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_table_round_trips_odd_unicode_and_counts_what_it_dropped(home, tmp_path, fmt):
    texts = [*ODD, *[f"plain text {i}" for i in range(10)], "x" * 50, None, "has no label"]
    labels = [(10, 2)[i % 2] for i in range(len(texts) - 1)] + [None]
    frame = pd.DataFrame({"text": texts, "label": labels}).astype({"label": "Int64"})
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "csv":  # quoted, as spreadsheets write it: pandas leaves a bare \r unquoted otherwise
        frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({k: (None if pd.isna(v) else (int(v) if k == "label" else v))
                                            for k, v in row.items()}, ensure_ascii=False) + "\n"
                                for row in frame.to_dict(orient="records")), encoding="utf-8")
    else:  # no pyarrow here: DuckDB writes the Parquet file, as it reads it
        import duckdb

        con = duckdb.connect()
        con.register("frame", frame)
        con.execute(f"COPY frame TO '{path}' (FORMAT parquet)")
        con.close()
    ds = import_upload(path, "mine", limits=Limits(max_text_chars=40))
    assert ds.modality == "text" and ds.source == f"upload:reviews.{fmt}"
    assert ds.class_names == ["2", "10"]  # whole numbers sort as numbers
    assert sum(map(len, ds.splits.values())) == len(texts) - 2
    assert any(f"dropped 2 row(s) without a text or a label (first: data row {len(texts) - 1})" in w
               for w in ds.extra["warnings"])
    assert any("cut 1 text(s) longer than 40 characters" in w for w in ds.extra["warnings"])
    load_dataset.cache_clear()
    again = load_dataset("mine")
    got = {*again.split("train").inputs, *again.split("test").inputs}
    assert got == {*ODD, *[f"plain text {i}" for i in range(10)], "x" * 40}
    by_text = dict(zip(texts, labels))
    for split in again.splits.values():
        for text, y in zip(split.inputs, split.labels):
            if text in by_text:
                assert again.class_names[y] == str(by_text[text])
    rows = catalog_rows("mine")
    assert [r["split"] for r in rows] == ["test", "train"] and rows[0]["source"] == f"upload:reviews.{fmt}"
    assert rows[1]["fingerprint"] == again.split("train").fingerprint


def test_inspect_guesses_columns_and_previews(home, tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"id": range(30), "review": [f"a long review text {i}" for i in range(30)],
                  "stars": [i % 3 for i in range(30)], "source": ["web"] * 30}).to_csv(path, index=False)
    info = inspect_upload(path)
    assert info["kind"] == "table" and info["rows"] == 30 and info["columns"] == ["id", "review", "stars", "source"]
    assert (info["text_column"], info["label_column"]) == ("review", "stars")
    assert list(info["preview"].columns) == info["columns"] and len(info["preview"]) == 10
    named = tmp_path / "named.csv"
    pd.DataFrame({"category": ["a", "b"] * 10, "body": [f"text {i}" for i in range(20)]}).to_csv(named, index=False)
    assert inspect_upload(named)["label_column"] == "category" and inspect_upload(named)["text_column"] == "body"
    ds = import_upload(path, "stars")  # the guesses are what import uses
    assert ds.class_names == ["0", "1", "2"] and "stars" in list_datasets()
    # A label named by hand: the text is guessed around it, never the label column itself.
    other = tmp_path / "other.csv"
    pd.DataFrame({"kind": [f"a much longer kind name {i % 2}" for i in range(20)],
                  "note": [f"note {i}" for i in range(20)]}).to_csv(other, index=False)
    assert import_upload(other, "other", label_column="kind").class_names == [
        "a much longer kind name 0", "a much longer kind name 1"]
    assert describe("other")["sizes"] == {"train": 16, "test": 4}
    with pytest.raises(ValueError, match="Limits.max_files must be a positive number; got 0"):
        Limits(max_files=0)


def test_split_column_is_honoured_and_checked(home, tmp_path):
    path = texts_csv(tmp_path / "s.csv", n=20, split=["train"] * 15 + ["TEST "] * 5)
    ds = import_upload(path, "mine")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 15, "test": 5}
    bad = texts_csv(tmp_path / "bad.csv", n=20, split=["train"] * 15 + ["val"] * 5)
    refused("values other than train and test \\('val'\\)", bad, name="other", home=home)
    only = texts_csv(tmp_path / "only.csv", n=20, split=["train"] * 20)
    refused("no row is marked 'test'", only, name="other", home=home)


# -- image zips -------------------------------------------------------------------------------

def test_image_zip_with_wrapper_junk_and_a_truncated_png(home, tmp_path):
    broken = png((20, 20, 3), seed=99)[:-30]
    path = class_zip(tmp_path / "pets.zip", prefix="pets/", n=6, shape=(12, 16, 3), extra={
        "pets/README.md": b"# my pets", "pets/cat/notes.txt": b"not an image", "pets/.DS_Store": b"\0" * 64,
        "__MACOSX/pets/cat/._0.png": b"junk", "pets/dog/broken.png": broken, "pets/loose.png": png(seed=5)})
    info = inspect_upload(path)
    assert info["kind"] == "images" and info["classes"] == ["cat", "dog"] and not info["has_splits"]
    assert info["files_per_class"] == {"cat": 6, "dog": 7}  # names only: the broken PNG is found by the import
    reasons = dict(info["skipped"])
    assert reasons["pets/README.md"] == "not an image file" and reasons["pets/cat/notes.txt"] == "not an image file"
    assert "system file" in reasons["pets/.DS_Store"] and "system file" in reasons["__MACOSX/pets/cat/._0.png"]
    assert reasons["pets/loose.png"] == "not inside a class folder"
    ds = import_upload(path, "pets")
    train = ds.split("train").inputs
    assert train.dtype == np.uint8 and train.shape[1:] == (12, 12, 3)  # square, the median short side
    assert sum(map(len, ds.splits.values())) == 12 and ds.class_names == ["cat", "dog"]
    assert any("'pets/dog/broken.png': not a readable image" in w for w in ds.extra["warnings"])
    assert any("'pets/README.md': not an image file" in w for w in ds.extra["warnings"])
    assert ds.source == "upload:pets.zip"


def test_grey_train_test_folders_and_the_224_cap(home, tmp_path):
    entries = {f"{split}/{c}/{i}.png": png((300, 260), seed=i + 7 * k)
               for split, n in (("train", 5), ("test", 2)) for k, c in enumerate("ab") for i in range(n)}
    path = make_zip(tmp_path / "grey.zip", entries)
    assert inspect_upload(path)["has_splits"] is True
    ds = import_upload(path, "grey")
    assert ds.split("train").inputs.shape == (10, 224, 224) and ds.split("test").inputs.shape == (4, 224, 224)
    same = class_zip(tmp_path / "same.zip", shape=(32, 32, 3), n=5)
    original = np.asarray(Image.open(io.BytesIO(png((32, 32, 3), seed=0))))
    kept = import_upload(same, "same")
    images = np.concatenate([kept.split("train").inputs, kept.split("test").inputs])
    assert any(np.array_equal(original, im) for im in images)  # one shared size <= 224: pixels kept as they were


# -- refusals ---------------------------------------------------------------------------------

def test_unknown_extension_too_big_and_empty(home, tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    refused("aftzoo reads tables \\(.csv, .jsonl, .parquet\\) and image folders zipped", tmp_path / "data.xlsx",
            home=home)
    big = texts_csv(tmp_path / "big.csv")
    refused("more than the upload limit of 100 bytes \\(Limits.max_upload_bytes\\)", big, home=home,
            limits=Limits(max_upload_bytes=100))
    (tmp_path / "empty.csv").write_bytes(b"")
    refused("empty.csv is empty \\(0 bytes\\)", tmp_path / "empty.csv", home=home)
    (tmp_path / "header.csv").write_text("text,label\n")
    refused("header.csv has no rows", tmp_path / "header.csv", home=home)
    (tmp_path / "blank.csv").write_text("\n\n")
    refused("blank.csv is empty: no header and no rows", tmp_path / "blank.csv", home=home)
    refused("no file at", tmp_path / "nothing.csv", home=home)


def test_missing_columns_list_the_ones_present(home, tmp_path):
    path = tmp_path / "nolabel.csv"
    pd.DataFrame({"text": [f"unique text {i}" for i in range(20)]}).to_csv(path, index=False)
    refused("cannot tell which column of nolabel.csv holds the labels .*; its columns are 'text'; "
            "name it with label_column= \\(--label-column\\)", path, home=home)
    refused("nolabel.csv has no column 'label'; its columns are 'text'", path, home=home, label_column="label")
    two = texts_csv(tmp_path / "two.csv")
    refused("has no column 'Texte'; its columns are 'text', 'label'", two, home=home, text_column="Texte")
    refused("has no column 'Label' \\(did you mean 'label'\\?\\)", two, home=home, label_column="Label")
    semi = tmp_path / "semi.csv"
    semi.write_text("text;label\n" + "".join(f"t{i};{i % 2}\n" for i in range(10)))
    refused("looks separated by ';'", semi, home=home)


def test_one_class_thin_class_and_too_few_rows(home, tmp_path):
    refused("the label column 'label' of one.csv has only one class \\('pos'\\); a classifier needs at least 2",
            texts_csv(tmp_path / "one.csv", labels=("pos",)), home=home)
    thin = tmp_path / "thin.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(11)], "label": ["a"] * 5 + ["b"] * 5 + ["c"]}).to_csv(thin,
                                                                                                      index=False)
    refused("class\\(es\\) 'c' \\(1\\) .* have fewer than 2 examples, so they cannot be stratified", thin,
            home=home, label_column="label")
    refused("6 examples in 3 classes are too few for a stratified 80/20 split",
            texts_csv(tmp_path / "few.csv", n=6, labels=("a", "b", "c")), home=home)
    refused("only one class \\('cat'\\)", class_zip(tmp_path / "cat.zip", classes=("cat",)), home=home)


def test_non_utf8_csv_is_a_clear_error(home, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncafe,a\ncaf\u00e9 cr\u00e8me,b\n".encode("latin-1"))
    refused("latin1.csv is not UTF-8 text \\(byte 0xe9 on line 3\\); save it as UTF-8", path, home=home)
    latin_json = tmp_path / "latin1.jsonl"
    latin_json.write_bytes('{"text": "ok", "label": 1}\n{"text": "caf\u00e9", "label": 2}\n'.encode("latin-1"))
    refused("latin1.jsonl is not UTF-8 text \\(line 2\\)", latin_json, home=home)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
    refused("line 2 of bad.jsonl is not valid JSON", bad_json, home=home)
    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text('["a", 1]\n')
    refused("line 1 of list.jsonl is a JSON list, not an object", not_obj, home=home)
    scores = tmp_path / "scores.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [0.5 + i for i in range(10)]}).to_csv(scores,
                                                                                                    index=False)
    refused("holds 0.5 \\(row 1\\); labels name classes", scores, home=home, label_column="label")


def test_lone_surrogates_from_json_escapes_are_replaced(home, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"text": f"broken \ud800 {i}" if i == 0 else f"fine {i}",
                                        "label": i % 2}) + "\n" for i in range(10)))
    ds = import_upload(path, "mine")
    texts = {*ds.split("train").inputs, *ds.split("test").inputs}
    assert "broken \ufffd 0" in texts
    assert any("unpaired surrogate" in w for w in ds.extra["warnings"])


@pytest.mark.parametrize("entry", ["../evil.png", "/etc/evil.png", "C:/evil.png", "cat\\..\\..\\evil.png",
                                   "cat/../../evil.png"])
def test_zip_slip_refuses_the_whole_archive(home, tmp_path, entry):
    path = class_zip(tmp_path / "slip.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(zipfile.ZipInfo(entry), png())  # ZipInfo keeps the name exactly as given
    with zipfile.ZipFile(path) as zf:
        assert entry in zf.namelist()
    message = refused("has an unsafe entry .* the whole archive is refused", path, home=home)
    assert repr(entry) in message
    with pytest.raises(UploadError, match="unsafe entry"):
        inspect_upload(path)
    assert not list(tmp_path.glob("**/evil.png")) and not os.path.exists("/etc/evil.png")


def test_zip_bombs_are_refused(home, tmp_path):
    bomb = class_zip(tmp_path / "bomb.zip", extra={"cat/zeros.png": b"\0" * (4 << 20)})
    refused("looks like a zip bomb: entry 'cat/zeros.png' inflates", bomb, home=home)
    refused("unpacks to .* more than 4.0 MiB \\(Limits.max_unpacked_bytes\\)", bomb, home=home,
            limits=Limits(max_unpacked_bytes=4 << 20, max_ratio=1e9))
    many = class_zip(tmp_path / "many.zip", n=6)
    refused("has 12 entries, more than 10 \\(Limits.max_files\\)", many, home=home, limits=Limits(max_files=10))


def _lie_about_size(path, entry: str, declared: int) -> None:
    """Patch both headers of ``entry`` to declare ``declared`` bytes uncompressed."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    name = entry.encode()
    local = data.index(b"PK\x03\x04")  # the first local header
    while data[local + 30: local + 30 + len(name)] != name:
        local = data.index(b"PK\x03\x04", local + 4)
    struct.pack_into("<I", data, local + 22, declared)
    central = data.rindex(name) - 46
    assert data[central:central + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, central + 24, declared)
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_a_header_that_lies_about_sizes_gains_nothing(home, tmp_path):
    # 8 MiB behind a real PNG header, declared as 1,000 bytes: the ratio check sees nothing odd,
    # so reading must stop at the declared size and the entry fails its checksum.
    path = class_zip(tmp_path / "liar.zip", extra={"cat/liar.png": png((8, 8, 3)) + b"\0" * (8 << 20)})
    _lie_about_size(path, "cat/liar.png", 1000)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("cat/liar.png").file_size == 1000
    ds = import_upload(path, "mine")
    assert sum(map(len, ds.splits.values())) == 12
    assert any("'cat/liar.png': not a readable image" in w and "CRC" in w for w in ds.extra["warnings"])


def test_image_with_too_many_pixels_is_refused(home, tmp_path):
    path = class_zip(tmp_path / "px.zip", extra={"dog/huge.png": png((2000, 1500), value=0)})
    saved = Image.MAX_IMAGE_PIXELS
    # PIL warns past its limit and raises past twice it: both refuse the archive.
    for limit in (2_000_000, 1_000_000):
        refused(f"px.zip: image 'dog/huge.png' has 3,000,000 pixels, more than {limit:,} \\(Limits.max_image_pixels\\); "
                "the archive is refused", path, home=home, limits=Limits(max_image_pixels=limit))
    assert Image.MAX_IMAGE_PIXELS == saved  # the guard is put back
    assert import_upload(path, "mine", limits=Limits(max_image_pixels=3_000_000)).num_classes == 2


def test_no_usable_images_and_not_a_zip(home, tmp_path):
    junk = make_zip(tmp_path / "junk.zip", {"cat/a.txt": b"x", "dog/b.png": b"not a png"})
    refused("junk.zip has no usable images", junk, home=home)
    (tmp_path / "fake.zip").write_bytes(b"this is not a zip archive")
    refused("fake.zip is not a readable zip archive", tmp_path / "fake.zip", home=home)
    refused("text_column and label_column do not apply", class_zip(tmp_path / "z.zip"), home=home,
            text_column="x")


@pytest.mark.parametrize("name, fragment", [
    ("; rm -rf /", "data set name '; rm -rf /' is not allowed: use 1 to 64 characters"),
    ("MyReviews", "is not allowed \\(did you mean 'myreviews'\\?\\)"),
    ("..", "data set name '..' is not allowed"),
    ("two words", "is not allowed: use"),
    ("a" * 65, "is not allowed"),
    ("", "a data set needs a name"),
    ("digits", "'digits' is a bundled data set; choose another name"),
])
def test_bad_names_are_refused(home, tmp_path, name, fragment):
    refused(fragment, texts_csv(tmp_path / "t.csv"), name=name, home=home)
    assert stored(home) == []


# -- storage: overwrite, failures, leftovers, removal -------------------------------------------

def test_overwrite_needs_consent_and_a_failed_one_keeps_the_old_set(home, tmp_path):
    first = import_upload(texts_csv(tmp_path / "a.csv"), "mine")
    refused("a data set named 'mine' already exists \\(imported from a.csv on .*\\); pass overwrite=True",
            texts_csv(tmp_path / "b.csv", n=30), name="mine")
    refused("only one class", texts_csv(tmp_path / "c.csv", labels=("x",)), name="mine", overwrite=True)
    load_dataset.cache_clear()
    assert load_dataset("mine").split("train").fingerprint == first.split("train").fingerprint
    second = import_upload(texts_csv(tmp_path / "b.csv", n=30), "mine", overwrite=True)
    assert sum(map(len, second.splits.values())) == 30 and load_dataset("mine") is not first
    assert catalog_rows("mine")[1]["fingerprint"] == second.split("train").fingerprint
    assert stored(home) == ["mine"]


@pytest.mark.parametrize("where", ["write", "catalog"])
def test_a_crash_mid_import_leaves_nothing_and_the_old_set_intact(home, tmp_path, monkeypatch, where):
    old = import_upload(texts_csv(tmp_path / "a.csv"), "mine")
    before = catalog_rows("mine")

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    if where == "write":
        real = userstore._write_split
        calls = []
        monkeypatch.setattr(userstore, "_write_split", lambda *a: calls.append(1) or (real(*a) if len(calls) < 2
                                                                                      else boom()))
    else:
        from storage.catalog import Catalog

        monkeypatch.setattr(Catalog, "upsert_dataset", boom)
    for name, overwrite in (("fresh", False), ("mine", True)):
        with pytest.raises(RuntimeError, match="disk on fire"):
            import_upload(texts_csv(tmp_path / "b.csv", n=30), name, overwrite=overwrite)
    assert stored(home) == ["mine"] and catalog_rows("fresh") == [] and catalog_rows("mine") == before
    load_dataset.cache_clear()
    assert load_dataset("mine").split("test").fingerprint == old.split("test").fingerprint
    assert "fresh" not in list_datasets()


def test_leftovers_of_a_killed_import_are_ignored_then_swept(home, tmp_path):
    root = home / "datasets"
    (root / ".tmp-ghost-999999999-abcd1234").mkdir(parents=True)
    (root / ".tmp-ghost-999999999-abcd1234" / "meta.json").write_text("{}")
    lost = root / ".old-kept-999999999-abcd1234"  # an overwrite killed between its two renames
    lost.mkdir()
    assert list_datasets().count("ghost") == 0
    import_upload(texts_csv(tmp_path / "a.csv"), "mine")
    assert stored(home) == ["kept", "mine"]


def test_remove_refuses_bundled_and_unknown_and_forgets_the_rest(home, tmp_path):
    import_upload(texts_csv(tmp_path / "a.csv"), "mine")
    assert load_dataset("mine").num_classes == 2
    with pytest.raises(UploadError, match="'digits' is a bundled data set and cannot be removed"):
        remove_dataset("digits")
    with pytest.raises(UploadError, match="no imported data set named 'nope'; imported ones: mine"):
        remove_dataset("nope")
    with pytest.raises(UploadError, match="no imported data set named '../mine'"):
        remove_dataset("../mine")
    remove_dataset("mine")
    assert stored(home) == [] and catalog_rows("mine") == [] and "mine" not in list_datasets()
    with pytest.raises(UnknownDataset, match="unknown data set 'mine'; choose one of: digits"):
        load_dataset("mine")
    with pytest.raises(UnknownDataset):
        load_dataset("../../etc")


def test_damaged_files_are_reported_not_served(home, tmp_path):
    import_upload(texts_csv(tmp_path / "a.csv"), "mine")
    train = home / "datasets" / "mine" / "train.jsonl"
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, another order
    load_dataset.cache_clear()  # a cached set was checked when it was read; a fresh read checks again
    with pytest.raises(DamagedDataset, match="'mine' is damaged .* remove it with `aftzoo remove-dataset mine`"):
        load_dataset("mine")
    row = describe("mine")
    assert row["present"] is False and "damaged" in row["how_to_get"]
    assert set(row) >= {"name", "modality", "description", "pack"}


def test_describe_has_the_bundled_keys(home, tmp_path):
    import_upload(class_zip(tmp_path / "z.zip"), "pics")
    mine, bundled = describe("pics"), describe("digits")
    assert set(mine) == set(bundled)
    assert mine["pack"] is None and mine["modality"] == "image" and mine["sizes"] == {"train": 9, "test": 3}


# -- downstream and the command line -----------------------------------------------------------

def test_imported_sets_extract_and_rank_downstream(home, tmp_path, clean_registry):
    import zoo
    from transfer.ranking import rank
    from zoo.models import random_spec

    # Two colours with noise: classes a random network can still tell apart.
    rng = np.random.default_rng(0)
    entries = {}
    for c, base in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for i in range(15):
            arr = np.clip(np.array(base) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "PNG")
            entries[f"colours/{c}/{i}.png"] = buf.getvalue()
    import_upload(make_zip(tmp_path / "colours.zip", entries), "colours")
    zoo.register(random_spec("resnet", name="ud-tiny-resnet", hub_id="test_resnet", image_size=32), overwrite=True)
    frame = rank("colours", ["ud-tiny-resnet"], metrics=["logme", "probe"], progress=False)
    assert frame.loc[0, "n"] == 24 and np.isfinite(frame.loc[0, "logme"])

    import_upload(texts_csv(tmp_path / "t.csv", n=20), "tiny-texts")
    zoo.register(random_spec("bert", name="ud-tiny-bert"), overwrite=True)
    features = zoo.extract("ud-tiny-bert", "tiny-texts", "test", progress=False)
    assert features.shape == (4, 32)
    with open_catalog() as cat:
        sets = cat.query("SELECT DISTINCT dataset FROM feature_sets")
    assert {r["dataset"] for r in sets} == {"colours", "tiny-texts"}


def test_cli_add_and_remove(home, tmp_path):
    path = texts_csv(tmp_path / "reviews.csv", n=20)
    out = run_cli("add-dataset", path, "--name", "cli-set", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["name"] == "cli-set" and row["sizes"] == {"train": 16, "test": 4} and row["warnings"] == []
    again = run_cli("add-dataset", path, "--name", "cli-set")
    assert again.returncode == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr
    bad = run_cli("add-dataset", path, "--name", "; rm -rf /")
    assert bad.returncode == 1 and "is not allowed" in bad.stderr
    bundled = run_cli("remove-dataset", "digits")
    assert bundled.returncode == 1 and "cannot be removed" in bundled.stderr
    for result in (again, bad, bundled):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert describe("cli-set")["sizes"] == row["sizes"]  # the CLI stored it in this home
    gone = run_cli("remove-dataset", "cli-set")
    assert gone.returncode == 0 and stored(home) == []
