"""The evidence scripts (benchmarks/evidence): their statistics, and one script end to end at its tiny size."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.evidence import common
from tests.helpers import REPO


def test_mean_se_is_the_sample_standard_error():
    mean, se = common.mean_se([0.80, 0.82, 0.87])
    assert mean == pytest.approx(0.83)
    # sample standard deviation (n - 1) over sqrt(n)
    assert se == pytest.approx(np.std([0.80, 0.82, 0.87], ddof=1) / math.sqrt(3))
    assert se == pytest.approx(math.sqrt(((0.03 ** 2 + 0.01 ** 2 + 0.04 ** 2) / 2) / 3))
    assert common.mean_se([0.5, 0.5]) == (0.5, 0.0)
    one = common.mean_se([0.7])
    assert one[0] == 0.7 and math.isnan(one[1])
    with pytest.raises(ValueError):
        common.mean_se([])


def test_formatting_and_error_reduction():
    assert common.pm(0.8123, 0.0041) == "81.2 ± 0.4"
    assert common.pm(0.8, float("nan")) == "80.0 (1 seed)"
    assert common.pm(0.4321, 0.0123, scale=1, digits=3) == "0.432 ± 0.012"
    # the paper's "cuts STL's error by 15%": 80% -> 83% accuracy is 20% -> 17% error
    assert common.error_reduction(0.83, 0.80) == pytest.approx(0.15)
    assert common.error_reduction(0.78, 0.80) == pytest.approx(-0.10)
    table = common.markdown_table(["a", "long header"], [["x", 1], ["yy", 22]]).splitlines()
    assert len(table) == 4 and len({len(line) for line in table}) == 1
    assert table[0].startswith("| a ") and set(table[1]) <= {"|", "-"}


def test_identical_runs_share_a_key_and_different_ones_do_not():
    s = common.SETTINGS[("image", "tiny")]
    a = s.config("aft", ["efficientnet-lite0"], 0, 1.0).to_dict()
    assert common._key({**a, "eval_every": 5, "device": "cpu", "parent": "x", "teacher_slices": {}}) == common._key(a)
    assert common._key({**a, "beta": 1}) == common._key(a)
    for change in ({"seed": 1}, {"beta": 10.0}, {"teachers": ["efficientnet-lite2"]}, {"lr": 0.1},
                   {"limit_train": 50}, {"holdout_fraction": 0.1}):
        assert common._key({**a, **change}) != common._key(a), change
    auto = s.config("aft", ["efficientnet-lite0"], 0, "auto").to_dict()
    assert common._key({**auto, "beta_grid": [1.0, 3.0]}) != common._key(auto)   # the grid matters when searched
    assert common._key({**a, "beta_grid": [1.0, 3.0]}) == common._key(a)         # and only then


def test_every_size_is_defined_for_both_modalities():
    for modality in ("image", "text"):
        for size in ("tiny", "small", "full"):
            s = common.SETTINGS[(modality, size)]
            assert s.modality == modality and len(set(s.teachers)) == 2 and s.seeds >= 2
    text = common.SETTINGS[("text", "full")]   # the setting
    assert (text.limit_train, text.limit_test, text.seeds, text.student, text.teachers[0]) == (
        1000, None, 3, "minilm-l6", "mpnet-base")
    assert text.beta_grid == common.FULL_GRID
    from transfer.training.objectives import BETA_GRIDS
    from transfer.training.trainer import BETA_GRID

    assert tuple(BETA_GRID) == BETA_GRIDS["aft"]


def _run_script(name: str, out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"benchmarks.evidence.{name}", "--tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ))


def test_noise_script_end_to_end_writes_json_png_and_catalog_runs(home, tmp_path):
    proc = _run_script("noise", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| STL" in proc.stdout and "mean learned weight" in proc.stdout
    payload = json.loads((tmp_path / "noise_tiny.json").read_text())
    assert payload["size"] == "tiny" and payload["command"].startswith("python -m benchmarks.evidence.noise")
    assert set(payload["results"]) == {"stl", "kd", "kd+noise", "aft", "aft+noise"}
    aft_noise = payload["results"]["aft+noise"]
    assert aft_noise["teachers"] == ["efficientnet-lite0", "noise-image-1280"] and aft_noise["n"] == 2
    assert len(payload["aft_weights"]["real"]) == len(payload["aft_weights"]["noise"]) == 2
    assert all(0 < w < 1 for w in payload["aft_weights"]["noise"])
    assert (tmp_path / "noise_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every run is in this home's catalog (the app's Runs page reads it), with its accuracy.
    from storage.catalog import open_catalog

    with open_catalog() as cat:
        runs = cat.query("SELECT id, method, teachers, status, test_accuracy FROM runs")
    assert len(runs) == 10 and all(r["status"] == "completed" for r in runs)
    ids = {rid for r in payload["results"].values() for rid in r["runs"]}
    assert ids == {r["id"] for r in runs}
    assert sum("noise-image-1280" in r["teachers"] for r in runs) == 4

    # An identical configuration is found in the catalog instead of being trained again (the scripts share runs).
    s = common.SETTINGS[("image", "tiny")]
    aft = payload["results"]["aft+noise"]
    done = common._find_completed(s.config("aft", aft["teachers"], 1, aft["beta"]))
    assert done is not None and done["id"] == aft["runs"][1] and done["accuracy"] == aft["accuracy"][1]
    assert common._find_completed(s.config("aft", aft["teachers"], 2, aft["beta"])) is None   # no seed 2 yet


def test_beta_flag_takes_one_value_or_a_grid():
    import argparse

    assert common._betas("1") == (1.0,)
    assert common._betas("1, 0.01,0.1,1") == (0.01, 0.1, 1.0)     # sorted, duplicates dropped
    for bad in ("", "x", "0.1,-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            common._betas(bad)


def test_decisive_script_tiny_prints_per_seed_accuracies_as_json(home, tmp_path):
    # The issue-20 experiment at smoke size: 2 seeds of STL and AFT (beta from its grid on unused training texts).
    proc = subprocess.run([sys.executable, "-m", "benchmarks.evidence.decisive", "--tiny", "--json", "--methods",
                           "stl,aft", "--seed-offset", "3", "--out", str(tmp_path / "d.json")],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"stl", "aft", "betas"} and len(out["stl"]) == len(out["aft"]) == 2
    from transfer.training.objectives import BETA_GRIDS

    assert out["betas"]["aft"] in BETA_GRIDS["aft"]
    saved = json.loads((tmp_path / "d.json").read_text())
    assert len(saved["trials"]["aft"]) == len(BETA_GRIDS["aft"])
    from storage.catalog import open_catalog

    with open_catalog() as cat:
        seeds = {r["seed"] for r in cat.query("SELECT CAST(json_extract(config, '$.seed') AS INT) AS seed FROM runs")}
    assert seeds == {3, 4}
