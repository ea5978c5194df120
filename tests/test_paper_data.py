"""The paper's data sets by name, from tiny copies the tests write in the libraries' own on-disk formats,
and users' image folders and pair tables: no network."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run_cli
from zoo import paper_data
from zoo.datasets import describe, list_datasets, load_dataset
from zoo.paper_data import DataMissing
from zoo.prompts import FIELD_SEP, format_prompt, prompt_for
from zoo.userdata import UploadError, import_upload


def _snapshot(cache, repo: str):
    repo_dir = cache / ("datasets--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / "9a8b7c"
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text("9a8b7c")
    return snapshot


def _cifar10(cache, sizes=(("train", 20), ("test", 4))) -> np.ndarray:
    """uoft-cs/cifar10 as the hub holds it: parquet, PNG bytes and labels, the class names in its metadata."""
    import io

    import duckdb
    from PIL import Image

    folder = _snapshot(cache, "uoft-cs/cifar10") / "plain_text"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = json.dumps({"info": {"features": {"img": {"_type": "Image"},
                                              "label": {"names": names, "_type": "ClassLabel"}}}})
    first = None
    for split, n in sizes:
        con = duckdb.connect()
        con.execute("CREATE TABLE t (img STRUCT(bytes BLOB, path VARCHAR), label BIGINT)")
        for i in range(n):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            first = pixels if first is None else first
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            con.execute("INSERT INTO t VALUES (?, ?)", [{"bytes": buf.getvalue(), "path": None}, i % 10])
        target = folder / f"{split}-00000-of-00001.parquet"
        con.execute(f"COPY t TO '{target}' (FORMAT parquet, KV_METADATA {{huggingface: '{meta}'}})")
    return first


def _png(path, size=(40, 30), colour=(200, 10, 10)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _dtd(root) -> None:
    base = root / "dtd" / "dtd"
    lines = {"train": [], "test": []}
    for c, cls in enumerate(("banded", "dotted", "striped")):
        for i in range(4):
            _png(base / "images" / cls / f"{cls}_{i}.jpg", colour=(60 * c, 10 * i, 90))
            lines["train" if i < 3 else "test"].append(f"{cls}/{cls}_{i}.jpg")
    (base / "labels").mkdir()
    for split, rows in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")


def _glue(cache, config: str, columns: dict, splits: dict) -> None:
    import duckdb

    snapshot = _snapshot(cache, "nyu-mll/glue")
    (snapshot / config).mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        con = duckdb.connect()
        values = ", ".join("(" + ", ".join([*(f"'{col} {i}'" for col in columns), str(i % 3)]) + ")" for i in range(n))
        con.execute(f"CREATE TABLE t AS SELECT * FROM (VALUES {values}) AS v({', '.join([*columns, 'label'])})")
        con.execute(f"COPY t TO '{snapshot / config / f'{split}-00000-of-00001.parquet'}' (FORMAT parquet)")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_the_papers_sets_are_listed_and_say_how_to_get_them(home, hf_cache):
    names = list_datasets()
    for name in ("cifar10", "cifar100", "flowers102", "oxford_pets", "dtd", "food101", "imdb", "sst2", "boolq",
                 "mnli", "mrpc", "qqp", "qnli", "rte"):
        assert name in names and describe(name)["present"] is False
    with pytest.raises(DataMissing) as info:
        load_dataset("mnli")
    message = str(info.value)
    assert "\n" not in message and "hf download nyu-mll/glue --repo-type dataset --include 'mnli/*'" in message
    with pytest.raises(DataMissing, match="AFTZOO_OFFLINE=0"):
        load_dataset("dtd")


def test_cifar10_from_the_hubs_parquet_copy(home, hf_cache):
    first = _cifar10(hf_cache)
    ds = load_dataset("cifar10")
    assert (len(ds.split("train")), len(ds.split("test"))) == (20, 4)
    images = ds.split("train").inputs
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert ds.class_names[1] == "automobile" and ds.num_classes == 10
    assert any(np.array_equal(image, first) for image in images)  # PNG is lossless: the same pixels
    assert describe("cifar10")["present"] is True


def test_dtd_is_read_lazily_from_its_files(home):
    _dtd(home / "data")
    ds = load_dataset("dtd")
    train = ds.split("train")
    assert ds.class_names == ["banded", "dotted", "striped"] and len(train) == 9 and len(ds.split("test")) == 3
    assert not isinstance(train.inputs, np.ndarray)  # nothing decoded yet
    batch = train.inputs[0:2]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.uint8
    assert train.fingerprint == load_dataset("dtd").split("train").fingerprint
    assert len(train.head(4)) == 4 and train.head(4).fingerprint != train.fingerprint


def test_a_glue_pair_task_keeps_its_fields_for_the_prompt(home, hf_cache):
    _glue(hf_cache, "mnli", ["premise", "hypothesis"], {"train": 30, "validation_matched": 9})
    ds = load_dataset("mnli")
    assert ds.class_names == ["entailment", "neutral", "contradiction"]
    assert (len(ds.split("train")), len(ds.split("test"))) == (30, 9)
    example = ds.split("train").inputs[0]
    assert example.count(FIELD_SEP) == 1
    text = format_prompt(prompt_for("mnli"), example)
    assert text.startswith("Premise: premise ") and "\nHypothesis: hypothesis " in text and FIELD_SEP not in text
    plain = format_prompt("{text}", example)
    assert plain.startswith("premise ") and "\nhypothesis " in plain
    assert sorted(set(ds.split("train").labels.tolist())) == [0, 1, 2]
    assert describe("mnli")["present"] is True


def test_a_pair_set_extracts_with_a_text_model(home, hf_cache):
    from zoo import extract

    _glue(hf_cache, "rte", ["sentence1", "sentence2"], {"train": 12, "validation": 6})
    features = extract("minilm-l6", "rte", split="test", progress=False)
    assert features.shape == (6, 384) and np.isfinite(features).all()


def test_an_image_folder_imports_as_it_is(home, tmp_path):
    folder = tmp_path / "photos"
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(3 if split == "train" else 1):
                _png(folder / split / cls / f"{i}.png", colour=(100 * c, 20 * i, 0))
    (folder / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = import_upload(folder, "photos")
    assert ds.class_names == ["cat", "dog"] and len(ds.split("train")) == 6 and len(ds.split("test")) == 2
    assert ds.split("train").inputs.shape[1:] == (30, 30, 3)
    assert any("notes.txt" in w for w in ds.extra["warnings"])


def test_several_text_columns_joined_by_a_template(home, tmp_path):
    table = tmp_path / "pairs.csv"
    rows = ["premise,hypothesis,label"] + [f"A man {i} walks.,Someone {i} moves.,{'yes' if i % 2 else 'no'}"
                                            for i in range(20)]
    table.write_text("\n".join(rows) + "\n")
    ds = import_upload(table, "pairs", text_column="premise,hypothesis", label_column="label",
                       template="Premise: {premise} Hypothesis: {hypothesis}")
    texts = ds.split("train").inputs + ds.split("test").inputs
    assert "Premise: A man 3 walks. Hypothesis: Someone 3 moves." in texts
    plain = import_upload(table, "pairs2", text_column="premise,hypothesis")
    assert "A man 3 walks.\nSomeone 3 moves." in plain.split("train").inputs + plain.split("test").inputs
    with pytest.raises(UploadError, match="not among the text columns"):
        import_upload(table, "pairs3", text_column="premise,hypothesis", template="{premise} {label}")


def test_cli_lists_the_papers_sets_with_on_this_machine(home, hf_cache):
    _cifar10(hf_cache)
    out = run_cli("datasets", "--json", env={"HF_HUB_CACHE": str(hf_cache)})
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["cifar10"]["present"] is True and rows["imdb"]["present"] is False
    assert "hf download stanfordnlp/imdb" in rows["imdb"]["how_to_get"]
    from typer.testing import CliRunner

    from app.cli import app

    table = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "250"})  # in process: the loaded sets are cached
    assert table.exit_code == 0 and "on this machine" in table.output and "food101" in table.output
    fetch = run_cli("datasets", "--fetch", "imdb")
    assert fetch.returncode != 0 and "AFTZOO_OFFLINE=0" in fetch.stderr and "Traceback" not in fetch.stderr
    assert paper_data.is_present("cifar10")
