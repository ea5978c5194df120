import json

from storage.catalog import Catalog
from storage.settings import get_settings
from tests.helpers import run_cli


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("doctor", "datasets", "demo"):
        assert command in out.stdout


def test_doctor_reports_everything_present(home):
    out = run_cli("doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    assert rep["problems"] == []
    assert rep["settings"]["home"] == str(home)
    assert rep["catalog"]["ok"] and rep["catalog"]["path"] == str(home / "catalog.duckdb")
    assert {r["pack"] for r in rep["packs"] if r["present"]} == {
        "minilm-l6", "mpnet-base", "efficientnet-lite0", "efficientnet-lite2",
        "rotten-tomatoes", "mnist5k", "digits", "fashion-mnist"}
    assert all(d["present"] for d in rep["datasets"])
    assert rep["device"]["resolved"] in ("cpu", "cuda")
    assert "CPUExecutionProvider" in rep["device"]["onnxruntime_providers"]
    human = run_cli("doctor")
    assert human.returncode == 0 and "all checks passed" in human.stdout


def test_doctor_fails_with_reasons(home):
    import torch

    with Catalog(get_settings().catalog_path):  # held by this process: the doctor cannot open it
        out = run_cli("doctor", env={"AFTZOO_DEVICE": "cpu" if torch.cuda.is_available() else "cuda"})
    assert out.returncode == 1
    assert "open for writing in process" in out.stderr
    if not torch.cuda.is_available():
        assert "AFTZOO_DEVICE=cuda but no CUDA device" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_setting_is_one_clear_error(home):
    out = run_cli("doctor", env={"AFTZOO_DEVICE": "tpu"})
    assert out.returncode != 0
    assert "AFTZOO_DEVICE=" in out.stderr and "auto" in out.stderr and "Traceback" not in out.stderr


def test_datasets_json():
    out = run_cli("datasets", "--json")
    assert out.returncode == 0
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["digits"]["sizes"] == {"train": 1437, "test": 360}
    assert rows["rotten_tomatoes"]["class_names"] == ["rotten", "fresh"]


def test_demo_extracts_then_reads_the_cache(home):
    first = run_cli("demo", "--limit", "200", "--json")
    assert first.returncode == 0, first.stderr
    a = json.loads(first.stdout)
    assert a["cached"] == {"train": False, "test": False}
    assert a["probe_accuracy"] > 0.6  # two balanced-ish classes: chance is about 0.55
    second = json.loads(run_cli("demo", "--limit", "200", "--json").stdout)
    assert second["cached"] == {"train": True, "test": True}
    assert second["probe_accuracy"] == a["probe_accuracy"]
    with Catalog(home / "catalog.duckdb") as cat:
        assert cat.query("SELECT count(*) AS n FROM feature_sets WHERE model = 'minilm-l6'")[0]["n"] == 2


def test_transfer_runs_and_rank_commands(home):
    import zoo
    from zoo.models import random_spec

    # persist=True records the spec in the catalog, so the CLI's own process finds it.
    zoo.register(random_spec("resnet", name="cli-tiny-resnet", hub_id="test_resnet", image_size=32),
                 overwrite=True, persist=True)
    out = run_cli("transfer", "--dataset", "digits", "--student", "cli-tiny-resnet", "--method", "stl",
                  "--steps", "6", "--lr", "0.01", "--batch-size", "32", "--limit-train", "96", "--limit-test", "48",
                  "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "completed" and result["steps"] == 6 and 0 <= result["test_accuracy"] <= 1
    assert result["config"]["student"] == "cli-tiny-resnet" and result["wall_seconds"] > 0
    listed = json.loads(run_cli("runs", "--json").stdout)
    assert result["run_id"] in {r["id"] for r in listed}

    ranked = run_cli("rank", "--dataset", "digits", "--models", "efficientnet-lite0", "--metrics", "logme,probe",
                     "--limit", "100", "--json")
    assert ranked.returncode == 0, ranked.stderr
    (row,) = json.loads(ranked.stdout)
    assert row["model"] == "efficientnet-lite0" and row["logme"] > 0 and row["probe"] > 0.5


def test_transfer_command_errors_are_one_line(home):
    bad_beta = run_cli("transfer", "--dataset", "digits", "--student", "resnet18-small", "--beta", "lots")
    assert bad_beta.returncode == 2 and "--beta must be a number or 'auto'" in bad_beta.stderr
    unknown = run_cli("transfer", "--dataset", "digits", "--student", "resnet18-small", "--method", "distill")
    assert unknown.returncode == 1 and "choose one of: stl, aft" in unknown.stderr
    assert "Traceback" not in unknown.stderr + bad_beta.stderr
    missing = run_cli("transfer", "--resume", "no-such-run")
    assert missing.returncode == 1 and "no run 'no-such-run'" in missing.stderr
