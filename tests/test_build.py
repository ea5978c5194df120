"""``aftzoo build``: the choice rule, the budget, and whole builds on digits (CLI, kill -9 and resume, noise)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import AFTZOO, REPO, run_cli
from transfer.build import budget
from transfer.build.config import BuildConfig, BuildError, to_toml
from transfer.build.flow import choose, standard_error


def cand(method, acc, beta=None, n=200):
    return {"run_id": f"r-{method}-{beta}", "method": method, "beta": beta, "label": f"{method} {beta}",
            "holdout_accuracy": acc, "holdout_n": n, "holdout_se": standard_error(acc, n)}


# ---------------------------------------------------------------------------------------------
# The rule and the budget (no training)
# ---------------------------------------------------------------------------------------------
def test_a_lead_inside_the_noise_ships_the_simpler_stl_and_says_so():
    chosen, why = choose([cand("stl", 0.80), cand("aft", 0.82, 1.0), cand("kd", 0.79, 10.0)])
    assert chosen["method"] == "stl"
    assert "inside the noise" in why and "no teacher helped" in why


def test_a_clear_lead_ships_the_simplest_candidate_within_one_standard_error_of_the_best():
    chosen, why = choose([cand("stl", 0.70), cand("aft", 0.90, 1.0), cand("kd", 0.89, 10.0), cand("kd", 0.88, 1.0)])
    assert (chosen["method"], chosen["beta"]) == ("kd", 1.0)  # simpler method, then smaller beta
    assert "simpler" in why


def test_never_below_stl_and_stl_must_have_finished():
    chosen, _ = choose([cand("stl", 0.90), cand("kd", 0.89, 1.0), cand("aft", 0.60, 1.0)])
    assert chosen["method"] == "stl"
    with pytest.raises(BuildError, match="STL trial did not complete"):
        choose([cand("stl", 0.9) | {"holdout_accuracy": None}, cand("kd", 0.89, 1.0)])


def test_the_budget_gives_way_in_the_stated_order_and_keeps_stl():
    costs = budget.Costs(step_seconds=1.0, batch_size=100, holdout_fraction=0.2,
                         extract_per_example={"t1": 0.05, "t2": 0.1}, ranked_examples=300)
    full = budget.Plan(["stl", "kd", "aft"], {"kd": [1.0, 10.0, 100.0, 1000.0], "aft": [0.1, 1.0, 10.0]},
                       ["t1", "t2"], 400, 1000)  # 8 steps per epoch on the 800 left after the hold-out
    assert budget.fit(full, costs, None).degraded == []
    small = budget.fit(full, costs, 20 * 60)
    assert small.fits and small.estimate_seconds <= 20 * 60
    kinds = [d.split(":")[0].split(" ")[0] for d in small.degraded]
    assert kinds[:5] == ["kd", "kd", "aft", "kd", "aft"]  # betas first, the widest grid first
    assert small.betas == {"kd": [10.0], "aft": [1.0]}  # the middle of each grid stays
    assert "teacher t2 left out" in small.degraded and small.examples == 1000
    tiny = budget.fit(full, costs, 60)
    assert not tiny.fits and tiny.methods == ["stl", "kd"] and tiny.teachers == ["t1"]
    assert tiny.examples == 300 and tiny.trials() == [("stl", None), ("kd", 10.0)]
    assert tiny.degraded[-1] == "the first 300 training examples (those ranked)"
    assert budget.estimate(tiny, costs) < budget.estimate(budget.Plan.from_dict({**tiny.to_dict(), "examples": 1000}),
                                                          costs)


def test_bad_settings_say_what_is_wrong():
    with pytest.raises(BuildError, match="unknown method 'magic'"):
        BuildConfig("digits", methods=["stl", "magic"]).validate()
    with pytest.raises(BuildError, match="budget_minutes must be a positive number"):
        BuildConfig("digits", budget_minutes=0).validate()
    with pytest.raises(BuildError, match="unknown build settings"):
        BuildConfig.from_dict({"dataset": "digits", "beta": 1})
    assert BuildConfig("digits").build_id() == BuildConfig("digits", parallel=4).build_id()
    assert BuildConfig("digits").build_id() != BuildConfig("digits", steps=7).build_id()


def test_the_cli_reports_a_bad_name_in_one_line(tmp_path):
    res = run_cli("build", "-d", "no-such-data", env={"AFTZOO_HOME": str(tmp_path)})
    assert res.returncode != 0 and "Traceback" not in res.stderr and "no-such-data" in res.stderr


def test_a_model_registered_in_an_earlier_session_builds_by_name(home, clean_registry):
    """The build looks models up as every entry point does: a model an earlier session registered
    (recorded in the catalog) is found by name (the slow kill -9 test's noise teacher once was not)."""
    from transfer.build.flow import _resolve
    from zoo.registry import noise_spec, register, unregister

    name = register(noise_spec(64, "image"), persist=True).name
    unregister(name)  # a new session: only the catalog knows it
    plan = _resolve(BuildConfig(dataset="digits", teachers=[name], methods=["stl", "kd"]))
    assert plan["teachers"] == [name] and plan["methods"] == ["stl", "kd"]


# ---------------------------------------------------------------------------------------------
# Whole builds on digits (real data, real models, real processes)
# ---------------------------------------------------------------------------------------------
TINY = {"steps": 4, "limit_train": 120, "limit_test": 64, "parallel": 2}


def _config(tmp_path, **settings) -> str:
    path = tmp_path / "build.toml"
    path.write_text(to_toml(BuildConfig(**settings)))
    return str(path)


def _catalog(home):
    from storage.catalog import open_catalog
    from storage.settings import Settings

    return open_catalog(Settings(home=home))


@pytest.mark.slow
def test_a_build_through_the_cli_exports_decides_int8_and_its_card_matches_the_catalog(tmp_path):
    home = tmp_path / "home"
    toml = _config(tmp_path, dataset="digits", teachers=["efficientnet-lite0"], methods=["stl", "kd"],
                   betas={"kd": [1.0]}, **TINY)
    res = run_cli("build", "--config", toml, "--json", env={"AFTZOO_HOME": str(home)}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout)
    assert [c["method"] for c in s["candidates"]] == ["stl", "kd"]
    assert s["ranking"][0]["model"] == "efficientnet-lite0" and s["ranking"][0]["n"] == 120
    export = s["export"]
    assert export["shipped"] in ("int8", "fp32") and "ships" in export["decision"]
    assert (home / "builds" / s["build_id"] / export["shipped"] / "manifest.json").is_file()
    assert export["fp32"]["parity"]["passed"]
    assert os.path.getsize(export["zip"]) > 1_000_000
    card = (home / "builds" / s["build_id"] / "report.md").read_text()
    assert (home / "builds" / s["build_id"] / "report.html").read_text().startswith("<!doctype html>")

    with _catalog(home) as cat:  # every number on the card is the catalog's
        build_row = cat.get_run(s["build_id"])
        rows = {c["run_id"]: cat.get_run(c["run_id"]) for c in s["candidates"]}
        test_acc = {rid: cat.metrics(rid)["test_acc"].dropna().iloc[-1] for rid in rows}
        final = cat.get_run(s["final"]["run_id"])
    assert build_row["status"] == "completed" and build_row["config"]["chosen"]["run_id"] == s["chosen"]["run_id"]
    n = s["candidates"][0]["holdout_n"]
    assert n == 24  # 20% of 120
    for c in s["candidates"]:
        acc = rows[c["run_id"]]["test_accuracy"]
        assert rows[c["run_id"]]["config"]["holdout_fraction"] == 0.2 and c["holdout_accuracy"] == acc
        assert f"{100 * acc:.1f} ± {100 * standard_error(acc, n):.1f}%" in card
        assert f"{100 * test_acc[c['run_id']]:.1f}%" in card
    assert final["config"]["holdout_fraction"] == 0.0 and final["method"] == s["chosen"]["method"]
    assert f"test accuracy {100 * final['test_accuracy']:.1f}%" in card
    assert export["decision"] in card and export["serve_command"] in card

    again = run_cli("build", "--config", toml, "--json", env={"AFTZOO_HOME": str(home)}, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {c["how"] for c in json.loads(again.stdout)["candidates"]} == {"reused"}


@pytest.mark.slow
def test_a_teacher_of_pure_noise_does_not_beat_stl(home, clean_registry):
    from transfer.build.flow import run_build
    from zoo.registry import noise_spec, register

    register(noise_spec(256, "image"), persist=True)
    s = run_build({"dataset": "digits", "teachers": ["noise-image-256"], "methods": ["stl", "kd", "aft"],
                   "betas": {"kd": [1000.0], "aft": [10.0]}, **TINY, "steps": 8})
    stl = next(c for c in s["candidates"] if c["method"] == "stl")
    assert s["chosen"]["method"] == "stl", s["why"]
    assert all(c["holdout_accuracy"] <= stl["holdout_accuracy"] + c["holdout_se"] for c in s["candidates"])
    assert "No teacher helped" in s["card"]["text"]
    assert (home / "builds" / s["build_id"] / "report.md").is_file()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill_9_mid_build_then_the_same_build_resumes_without_repeating_a_trial(tmp_path):
    from transfer.build.config import BuildConfig as BC

    home = tmp_path / "home"
    env = {**os.environ, "AFTZOO_HOME": str(home)}
    subprocess.run([sys.executable, "-c", "from zoo.registry import noise_spec, register; "
                    "register(noise_spec(64, 'image'), persist=True)"], env=env, cwd=REPO, check=True)
    settings = dict(dataset="digits", teachers=["noise-image-64"], methods=["stl", "kd"], betas={"kd": [1.0]},
                    steps=40, limit_train=120, limit_test=64, parallel=1, checkpoint_every=2)
    toml, build_id = _config(tmp_path, **settings), BC(**settings).build_id()
    status = home / "builds" / build_id / "status.json"

    def kd_is_training():
        try:
            state = json.loads(status.read_text())
        except (OSError, ValueError):
            return None
        steps = re.search(r"(\d+)/(\d+) steps", state["message"]) if state["stage"] == "trials" else None
        return steps is not None and int(steps.group(1)) >= 40 + 6  # STL's 40 done, KD past a few checkpoints

    proc = subprocess.Popen([AFTZOO, "build", "--config", toml, "--json"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(kd_is_training, 600, "the KD trial to pass a few checkpoints")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    stl_id, kd_id = f"{build_id}-stl", f"{build_id}-kd-b1"

    def stopped():
        with _catalog(home) as cat:
            row = cat.get_run(kd_id)
        return row if row and row["status"] != "running" else None

    kd_row = _wait_for(stopped, 120, "the orphaned KD worker to stop")  # SIGTERM from the kernel, then a checkpoint
    assert kd_row["status"] == "cancelled" and 0 < kd_row["step"] < kd_row["total_steps"]
    with _catalog(home) as cat:
        stl_before = cat.get_run(stl_id)
    assert stl_before["status"] == "completed"

    res = run_cli("build", "--config", toml, "--json", env={"AFTZOO_HOME": str(home)}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    how = {c["run_id"]: c["how"] for c in json.loads(res.stdout)["candidates"]}
    assert how[stl_id] == "reused" and how[kd_id].startswith("resumed")
    with _catalog(home) as cat:
        stl_after, kd_after = cat.get_run(stl_id), cat.get_run(kd_id)
        ids = [r["id"] for r in cat.query("SELECT id FROM runs WHERE id LIKE ?", [f"{build_id}%"])]
        steps = cat.metrics(kd_id)["step"].tolist()
    assert stl_after["updated_at"] == stl_before["updated_at"]  # not trained again
    assert kd_after["status"] == "completed" and kd_after["step"] == kd_after["total_steps"]
    assert sorted(ids) == sorted([build_id, stl_id, kd_id, f"{build_id}-final-{json.loads(res.stdout)['chosen']['method']}"
                                  + ("" if json.loads(res.stdout)["chosen"]["beta"] is None else "-b1")])
    assert len(steps) == len(set(steps))  # one history, no step logged twice
