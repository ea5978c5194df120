"""ONNX export of real trained students (a tiny ResNet on digits, MiniLM on Rotten Tomatoes),
parity with PyTorch, `aftzoo predict` where torch cannot be imported, tampering, int8."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storage.catalog import open_catalog
from tests.helpers import REPO, exported, run_cli, trained_run
from transfer.serving import runtime
from transfer.export.onnx import ExportFailed, export_run, list_exports
from zoo.datasets import load_dataset
from zoo.models import random_spec

def _no_torch(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter in which `import torch` fails."""
    code = ("import sys; sys.modules['torch'] = None; from app.cli import main; "
            f"main({list(args)!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def _check_folder(result: dict, modality: str) -> dict:
    folder = Path(result["path"])
    names = {p.name for p in folder.iterdir()}
    expected = {"model.onnx", "model.onnx.data", "preprocess.json", "classes.json", "manifest.json"}
    if modality == "text":
        expected.add("tokenizer.json")
    assert names == expected
    manifest = runtime.verify_export(folder)
    assert set(manifest["files"]) == expected - {"manifest.json"}
    for name, info in manifest["files"].items():
        assert info["sha256"] == runtime.sha256_file(folder / name)
    assert {"aftzoo", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["run_id"] == result["run_id"] and manifest["opset"] == result["opset"] >= 17
    return manifest


def _check_parity(parity: dict) -> None:
    assert parity["examples"] == 64 and sum(parity["batches"]) == 64 and parity["batches"][0] == 1
    assert parity["model"]["max_abs_logit_diff"] < 1e-3
    assert parity["model"]["top1_agreement"] == 1.0
    assert parity["end_to_end"]["top1_agreement"] >= 0.95
    assert parity["end_to_end"]["max_abs_logit_diff"] < 1e-2
    assert parity["passed"] is True


def _catalog_row(path: str) -> dict:
    rows = [r for r in list_exports() if r["path"] == path]
    assert rows, f"no catalog row for {path}"
    return rows[0]


def test_image_export_is_self_contained_and_matches_pytorch():
    result = exported("image")
    manifest = _check_folder(result, "image")
    _check_parity(result["parity"])
    assert result["parity"]["end_to_end"]["max_abs_input_diff"] < 1e-4
    pre = json.loads((Path(result["path"]) / "preprocess.json").read_text())
    assert pre["image_size"] == 32 and len(pre["mean"]) == 3 and pre["interpolation"] == "bilinear"
    assert json.loads((Path(result["path"]) / "classes.json").read_text()) == [str(d) for d in range(10)]
    row = _catalog_row(result["path"])
    assert row["run_id"] == result["run_id"] and row["quantize"] is None and row["opset"] == result["opset"]
    assert row["parity"]["parity"] == result["parity"] and row["manifest"]["files"] == manifest["files"]

    # Dynamic batch: one model, batches of 1 and 5, the same answers as PyTorch's preprocessing + network.
    model = runtime.load_export(result["path"])
    assert model.provider == "CPUExecutionProvider"
    images = load_dataset("digits").split("test").inputs[:5]
    assert model.logits(images[:1]).shape == (1, 10) and model.logits(images).shape == (5, 10)


def test_text_export_carries_its_tokenizer_and_matches_pytorch():
    result = exported("text")
    _check_folder(result, "text")
    _check_parity(result["parity"])
    assert result["parity"]["end_to_end"]["token_match"] >= 0.95
    pre = json.loads((Path(result["path"]) / "preprocess.json").read_text())
    assert pre["prompt"] == 'Review: "{sentence}"\nSentiment:' and pre["max_length"] == 256
    model = runtime.load_export(result["path"])
    feeds = model.prepare(["short", "a much longer text than the first one"])
    assert feeds["input_ids"].dtype == np.int64 and feeds["attention_mask"][0].sum() < feeds["attention_mask"][1].sum()
    assert _catalog_row(result["path"])["parity"]["parity"]["end_to_end"]["token_match"] >= 0.95


def test_text_truncation_matches_the_student_tokenisation():
    """Texts too long for the prompt are cut the same way as TextFeatureModel does it (max length 12 here)."""
    from transfer.export.onnx import _build, _load_run

    student, _, data = _build(_load_run(trained_run("text")))
    student.backbone.max_length = 12
    prompt = 'Review: "{sentence}"\nSentiment:'
    cfg = {**json.loads((Path(exported("text")["path"]) / "preprocess.json").read_text()), "max_length": 12}
    mine = runtime.TextPreprocessor(Path(exported("text")["path"]) / "tokenizer.json", cfg)
    texts = data.split("test").inputs[:24] + ["ok", "x " * 40]
    theirs = student.preprocess(texts, prompt)
    ours = mine(texts)
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"].numpy())
    assert ours["input_ids"].shape[1] <= 12


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_image_preprocessing_matches_torch_for_any_size(interpolation):
    from zoo.feature_models import ImageFeatureModel
    from zoo.registry import WeightsSource

    spec = random_spec("resnet", name="prep-check", image_size=32).replace(interpolation=interpolation,
                                                                           mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    fm = ImageFeatureModel(spec, torch.nn.Identity(), WeightsSource("random"), 1)
    mine = runtime.ImagePreprocessor(32, spec.mean, spec.std, interpolation)
    rng = np.random.default_rng(0)
    for shape in [(8, 8), (50, 70), (32, 32), (97, 31, 3), (16, 200, 3), (33, 33, 4)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        theirs = fm.preprocess(image[None]).numpy()
        ours = mine([image])
        assert ours.shape == theirs.shape == (1, 3, 32, 32)
        assert np.abs(ours - theirs).max() < 1e-4, shape


def test_predict_runs_without_torch(tmp_path):
    image_dir, text_dir = exported("image")["path"], exported("text")["path"]
    test = load_dataset("digits").split("test")
    png = tmp_path / "digit.png"
    Image.fromarray(test.inputs[0]).save(png)
    rgb = tmp_path / "digit.jpg"
    Image.fromarray(test.inputs[1]).convert("RGB").save(rgb, quality=95)
    proc = _no_torch("predict", image_dir, str(png), str(rgb), "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["provider"] == "CPUExecutionProvider" and out["modality"] == "image"
    assert [p["input"] for p in out["predictions"]] == [str(png), str(rgb)]
    assert all(len(p["top_k"]) == 3 for p in out["predictions"])
    expected = runtime.load_export(image_dir).predict(test.inputs[:1], top_k=3)[0]
    assert [t["label"] for t in out["predictions"][0]["top_k"]] == [t["label"] for t in expected]
    assert out["predictions"][0]["top_k"][0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-5)

    lines = tmp_path / "texts.txt"
    lines.write_text("a waste of two hours\n\nwarm, funny and wise\n")
    proc = _no_torch("predict", text_dir, "A gorgeous, witty film.", f"@{lines}", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [p["input"] for p in out["predictions"]] == ["A gorgeous, witty film.", "a waste of two hours",
                                                        "warm, funny and wise"]
    assert {t["label"] for t in out["predictions"][0]["top_k"]} == {"rotten", "fresh"}
    proc = _no_torch("predict", text_dir, "plain output")
    assert proc.returncode == 0 and proc.stdout.startswith("plain output: ")


def test_tampered_export_is_refused(tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(exported("image")["path"], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(runtime.TamperedExport, match="model.onnx: sha256 differs"):
        runtime.load_export(copy)
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    proc = _no_torch("predict", str(copy), str(png))
    assert proc.returncode == 1 and "checksum" in proc.stderr and "model.onnx" in proc.stderr
    (copy / "model.onnx.data").unlink()
    with pytest.raises(runtime.TamperedExport, match="model.onnx.data: missing"):
        runtime.verify_export(copy)


def test_int8_quantisation_reports_the_accuracy_change():
    result = export_run(trained_run("image"), quantize="int8", eval_limit=96)
    assert result["path"].endswith("-int8") and result["quantize"] == "int8"
    q = result["quantization"]
    assert q["eval_examples"] == 96 and q["eval_limited"] is True
    assert 0 <= q["accuracy_fp32"] <= 1 and 0 <= q["accuracy_int8"] <= 1
    assert q["accuracy_change"] == pytest.approx(q["accuracy_int8"] - q["accuracy_fp32"])
    assert q["bytes_int8"] < q["bytes_fp32"] / 2 and q["quantized_ops"]
    _check_parity(result["parity"])  # the float32 model it was quantised from
    row = _catalog_row(result["path"])
    assert row["quantize"] == "int8" and row["parity"]["quantization"]["accuracy_int8"] == q["accuracy_int8"]
    model = runtime.load_export(result["path"])
    assert model.manifest["quantize"] == "int8" and model.logits(load_dataset("digits").split("test").inputs[:3]).shape == (3, 10)


@pytest.mark.slow
def test_int8_quantisation_of_the_text_student():
    result = export_run(trained_run("text"), quantize="int8", eval_limit=128)
    q = result["quantization"]
    assert q["bytes_int8"] < q["bytes_fp32"] / 3 and "MatMulInteger" in q["quantized_ops"]
    assert q["parity_int8_vs_torch"]["model"]["top1_agreement"] >= 0.9


def test_export_command_in_another_process(tmp_path):
    """`aftzoo export` rebuilds the student from the catalog in a fresh process."""
    out = tmp_path / "cli-export"
    proc = run_cli("export", trained_run("image"), "--out", str(out), "--json", "--parity-examples", "16")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["path"] == str(out.resolve()) and result["parity"]["passed"]
    assert runtime.verify_export(out)["name"] == "cli-export"


def test_export_errors_are_clear(tmp_path):
    with pytest.raises(ExportFailed, match="no run 'nope'"):
        export_run("nope")
    with pytest.raises(ExportFailed, match="--quantize must be one of int8"):
        export_run(trained_run("image"), quantize="int4")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ExportFailed, match="not an earlier export"):
        export_run(trained_run("image"), out=occupied)
    assert (occupied / "notes.txt").read_text() == "mine"
    proc = run_cli("export", "nope")
    assert proc.returncode == 1 and "no run 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    # An opset the exporter cannot convert to fails clearly, leaving nothing behind.
    with pytest.raises(ExportFailed, match="could not convert .* to opset 13"):
        export_run(trained_run("image"), out=tmp_path / "old-opset", opset=13)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


def test_exports_are_listed_in_the_catalog():
    exported("image")
    with open_catalog() as cat:
        n = cat.query("SELECT count(*) AS n FROM exports WHERE run_id = ?", [trained_run("image")])[0]["n"]
    assert n >= 1


def test_prompts_with_several_fields_take_json_objects(tmp_path):
    copy = tmp_path / "pairs"
    shutil.copytree(exported("text")["path"], copy)
    cfg = json.loads((copy / "preprocess.json").read_text())
    cfg["prompt"] = "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:"
    (copy / "preprocess.json").write_text(json.dumps(cfg))
    with pytest.raises(runtime.TamperedExport):
        runtime.load_export(copy)
    model = runtime.load_export(copy, verify=False)
    assert model.text_fields == ["premise", "hypothesis"]
    pair = model.parse_text('{"premise": "It rains.", "hypothesis": "The street is wet."}')
    assert pair == {"premise": "It rains.", "hypothesis": "The street is wet."}
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(copy / "tokenizer.json")).encode(
        "Premise: It rains.\nHypothesis: The street is wet.\nAnswer:").ids
    assert model.prepare([pair])["input_ids"][0].tolist() == ids
    with pytest.raises(runtime.InputError, match="needs the field"):
        model.prepare(["just one text"])


def test_exports_are_readable_by_other_users():
    """The server may run as another user than the exporter (Dockerfile.serve): with umask 022 every file is 0644."""
    folder = Path(exported("image")["path"])
    mask = os.umask(0)
    os.umask(mask)
    if mask & 0o044:
        pytest.skip(f"umask {mask:04o} keeps files from others")
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert all(m & 0o044 == 0o044 for m in modes.values()), modes  # model.onnx.data was written 0600
    assert folder.stat().st_mode & 0o055 == 0o055


def test_an_export_on_a_full_disk_says_no_space_left_and_keeps_nothing(tmp_path):
    """A real full file system: a 256 KiB tmpfs in a private user and mount namespace (skipped where unshare
    cannot mount one); the exporter's own message used to reach the user."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    run_id = trained_run("image")
    mount = tmp_path / "disk"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import json, os, sys
        from transfer.export.onnx import ExportFailed, export_run
        try:
            export_run({run_id!r}, out=os.path.join(sys.argv[1], "exp"), parity_examples=4)
            print(json.dumps({{"error": None}}))
        except ExportFailed as exc:
            print(json.dumps({{"error": str(exc), "left": os.listdir(sys.argv[1])}}))
    """)
    proc = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs "$1" || exit 77; exec "$2" -c "$3" "$1"',
         "sh", str(mount), sys.executable, script], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode == 77 or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] and out["error"].startswith("no space left on the disk of "), out
    assert "bytes free" in out["error"] and "--out" in out["error"]
    assert "torch.onnx" not in out["error"] and "Error" not in out["error"]
    assert out["left"] == []
