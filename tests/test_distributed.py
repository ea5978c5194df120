"""Distributed extraction and training, for real: `aftzoo launch` starts torchrun, which starts 2 CPU processes
talking over gloo, each with one thread, on a throw-away AFTZOO_HOME. The student is `resnet18-small` (32 px,
random initialisation), the teacher EfficientNet-Lite0 on digits: both offline."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import zoo
from app.launch_cli import torchrun_command
from storage.catalog import open_catalog
from storage.settings import reset_settings
from tests.helpers import AFTZOO, REPO, run_cli
from transfer.training import trainer

TEACHER, STUDENT = "efficientnet-lite0", "resnet18-small"
# One thread per process (2 processes on 2 cores); a peer that hangs is an error after 60 s, not 15 minutes.
ENV = {"OMP_NUM_THREADS": "1", "AFTZOO_DIST_TIMEOUT": "60"}
TWO = ("launch", "--nproc-per-node", "2", "--")
LIMIT_TRAIN = 96  # 3 batches of 32 an epoch, split 16 + 16 between the processes
KEY_COLUMNS = "model, dataset, split, fingerprint, settings_key, num_examples, dim, dtype"
TRANSFER = ("transfer", "-d", "digits", "-s", STUDENT, "-t", TEACHER, "--method", "aft", "--beta", "1",
            "--batch-size", "32", "--lr", "1e-3",
            "--limit-train", str(LIMIT_TRAIN), "--limit-test", "32", "--eval-every", "10", "--json")


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One home for the training tests, with the teacher's features extracted once (in this process)."""
    home = tmp_path_factory.mktemp("dist-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTZOO_HOME", str(home))
        reset_settings()
        zoo.extract(TEACHER, "digits", "train", limit=LIMIT_TRAIN, progress=False)
        yield home
    reset_settings()


def run_ids() -> list[str]:
    with open_catalog() as cat:
        return [r["id"] for r in cat.query("SELECT id FROM runs ORDER BY created_at")]


def metric_steps(run_id: str) -> list[int]:
    """Each logged step once per metric name, or the duplicates show."""
    with open_catalog() as cat:
        rows = cat.query("SELECT step, count(*) AS n FROM run_metrics WHERE run_id = ? GROUP BY step, name "
                         "ORDER BY step", [run_id])
    assert all(r["n"] == 1 for r in rows), rows
    return sorted({r["step"] for r in rows})


def worker_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launched process of ``rank``: a child of torchrun, which the launcher process became."""
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return int(pid)
            except OSError:  # it ended while we looked
                pass
    return None


def launch(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([AFTZOO, *args], stdout=subprocess.DEVNULL, stderr=out, cwd=REPO,
                                env={**os.environ, **ENV})


def kill_rank_1(launcher: subprocess.Popen) -> None:
    pid = worker_pid(launcher, 1)
    assert pid is not None, "no process of rank 1 under torchrun"
    os.kill(pid, signal.SIGKILL)


# -- extraction ---------------------------------------------------------------------------------

def test_sharded_extraction_equals_one_process_and_is_indexed_once(home, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:  # the reference: one process (this one), in a home of its own
        mp.setenv("AFTZOO_HOME", str(tmp_path / "one"))
        reset_settings()
        single = zoo.extract_info(TEACHER, "digits", "train", limit=40, progress=False)
        with open_catalog() as cat:
            expected = cat.query(f"SELECT {KEY_COLUMNS} FROM feature_sets")
    reset_settings()
    two = run_cli(*TWO, "extract", "-m", TEACHER, "-d", "digits", "--limit", "40", "--json", env=ENV)
    assert two.returncode == 0, two.stderr
    assert "torch.distributed.run --nproc-per-node 2" in two.stderr  # the launcher says what it runs
    (sharded,) = json.loads(two.stdout)  # one document: rank 0 alone printed its result
    assert sharded["cached"] is False and sharded["shape"] == [40, 1280]
    assert sharded["fingerprint"] == single.fingerprint
    # Float32 features of the same images in batches of other sizes (20 per process against 40): equal to
    # rounding; here they are bitwise equal, but convolution kernels may pick other algorithms per batch size.
    np.testing.assert_allclose(np.load(sharded["path"]), single.features, rtol=1e-5, atol=1e-5)
    with open_catalog() as cat:
        assert cat.query(f"SELECT {KEY_COLUMNS} FROM feature_sets") == expected  # one row, the same key
    assert Path(sharded["path"]).name == Path(single.path).name
    assert not [p for p in (home / "features").rglob("*") if p.name.startswith(".")]  # no shard or temporary file left
    # A later single-process request finds the sharded extraction's file.
    info = zoo.extract_info(TEACHER, "digits", "train", limit=40, progress=False)
    assert info.cached and info.path == sharded["path"]


@pytest.mark.slow  # ~20 s; the training kill below covers a lost process by default
def test_killing_one_extraction_process_fails_clearly_and_indexes_nothing(home, tmp_path):
    features = home / "features"
    launcher = launch(*TWO, "extract", "-m", TEACHER, "-d", "digits", "--limit", "400", "--batch-size", "4",
                      log=tmp_path / "err.log")
    deadline = time.monotonic() + 120
    while not list(features.rglob(".*.shards/rank-00001.npy")):  # rank 1 is writing its shard
        assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "err.log").read_text()
        time.sleep(0.1)
    kill_rank_1(launcher)
    assert launcher.wait(timeout=90) != 0
    log = (tmp_path / "err.log").read_text()
    assert "error: torchrun stopped process 0 of 2" in log or "error: ShardedExtractionError: lost contact" in log
    assert not [p for p in features.rglob("*") if p.is_file()]  # no shard, no temporary file, no feature file
    with open_catalog() as cat:
        assert cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"] == 0


# -- training -----------------------------------------------------------------------------------

STEP_CHECK = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from transfer.training import distributed
    from transfer.training.objectives import METHODS, make_objective
    from transfer.training.trainer import _Net, train_step

    class Toy(nn.Module):  # no BatchNorm: its statistics are per process by design
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x):
            phi = torch.tanh(self.body(x))
            return self.head(phi), phi

    g = torch.Generator().manual_seed(1)
    x, y, psi = torch.randn(7, 6, generator=g), torch.randint(0, 3, (7,), generator=g), torch.randn(7, 4, generator=g)
    BTUNE = dict(student_weights=torch.randn(3, 5, generator=g), teacher_weights=[torch.randn(3, 4, generator=g)],
                 teacher_scores=[0.0], teacher_slices=[(0, 4)])
    out = {}
    with distributed.session() as ctx:
        for method in METHODS:
            torch.manual_seed(0)
            student, objective = Toy(), make_objective(method, 5, 4, **(BTUNE if method == "btune" else {}))
            opt = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.5)
            net = distributed.wrap(_Net(student, objective, "cpu"))
            mine = distributed.shard(len(y))  # 4 + 3 rows: an uneven split
            losses = [train_step(student, objective, opt, torch.amp.GradScaler("cpu", enabled=False), x[mine],
                                 y[mine], psi, 2.0, 1.0, "cpu", net=net, batch_total=len(y))[0] for _ in range(3)]
            out[method] = {"losses": torch.tensor(losses), **student.state_dict(),
                           **{f"objective.{k}": v for k, v in objective.state_dict().items()}}
        if ctx.is_main:
            torch.save(out, sys.argv[1])
""")


def test_a_step_on_two_processes_is_the_step_on_the_whole_batch(tmp_path):
    """Every method: the gradients averaged by DDP, with the regulariser on the all-gathered batch, are the
    single-process gradients of the whole batch, so the parameters after 3 SGD steps agree to float rounding."""
    import torch

    from transfer.training.objectives import METHODS

    script = tmp_path / "step_check.py"
    script.write_text(STEP_CHECK)
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for args, out in (([str(script)], "one.pt"), ([*torchrun, str(script)], "two.pt")):
        done = subprocess.run([sys.executable, *args, str(tmp_path / out)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert set(one) == set(two) == set(METHODS)
    for method in METHODS:
        assert len(set(one[method]["losses"].tolist())) == 3, method  # the steps moved the parameters
        for name, value in one[method].items():
            torch.testing.assert_close(two[method][name], value, rtol=1e-5, atol=1e-6, msg=f"{method}: {name}")


# The launched worker, with every opening of the catalog outside rank 0 written down.
CATALOG_SPY = textwrap.dedent("""
    import os
    import sys
    from storage import catalog

    opened = catalog.Catalog.__init__

    def spy(self, *args, **kwargs):
        if os.environ["RANK"] != "0":
            with open(os.environ["CATALOG_SPY"], "a") as log:
                print(f"rank {os.environ['RANK']} opened the catalog", file=log)
        opened(self, *args, **kwargs)

    catalog.Catalog.__init__ = spy
    from app.launch_worker import worker
    sys.exit(worker(sys.argv[1:]))
""")


def test_a_two_process_aft_run_trains_and_is_recorded_once(shared_home, tmp_path):
    """Started with torchrun itself; the student is a user's model recorded in the catalog, which rank 1 learns
    from rank 0: it never opens the catalog."""
    from zoo.registry import get

    zoo.register(dataclasses.replace(get(STUDENT), name="dist-student"), persist=True)
    (tmp_path / "spy.py").write_text(CATALOG_SPY)
    before = run_ids()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "spy.py"), *TRANSFER, "-s", "dist-student", "--steps", "30"],
                          env={**os.environ, **ENV, "PYTHONPATH": str(REPO), "CATALOG_SPY": str(tmp_path / "spy")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "spy").exists(), (tmp_path / "spy").read_text()
    result = json.loads(done.stdout)  # one JSON document: rank 0 alone prints
    assert result["status"] == "completed" and result["steps"] == 30
    assert result["config"]["processes"] == 2 and result["config"]["batch_size_used"] == 32
    assert run_ids() == [*before, result["run_id"]]  # one row for the run
    assert metric_steps(result["run_id"]) == [10, 20, 30]
    h = trainer.history(result["run_id"])
    assert h["loss"].iloc[-1] < h["loss"].iloc[0]
    assert (h["reg"] > 0).all() and h["test_acc"].notna().all()
    with open_catalog() as cat:
        assert cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"] == 1  # the teacher's, read from the cache
        assert cat.get_run(result["run_id"])["test_accuracy"] == pytest.approx(result["test_accuracy"])


def test_killing_one_training_process_fails_the_run_clearly_and_it_resumes_in_one(shared_home, tmp_path):
    before = run_ids()
    launcher = launch(*TWO, *TRANSFER, "--steps", "45", "--checkpoint-every", "10", log=tmp_path / "err.log")
    deadline = time.monotonic() + 120
    while True:  # kill rank 1 once rank 0 has written a checkpoint
        new = [r for r in run_ids() if r not in before]
        if new and (row := trainer.check_resumable(new[0]))["step"] >= 10:
            break
        assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "err.log").read_text()[-3000:]
        time.sleep(0.3)
    kill_rank_1(launcher)
    assert launcher.wait(timeout=90) != 0
    (run_id,) = new
    log = (tmp_path / "err.log").read_text()
    assert "error: process 0 of 2 lost contact with another process" in log or \
        "error: torchrun stopped process 0 of 2 (SIGTERM)" in log, log[-3000:]
    assert f"--resume {run_id}" in log
    row = trainer.check_resumable(run_id)
    assert row["status"] == "failed" and "another process" in row["error"] and "--resume" in row["error"]
    assert 10 <= row["step"] < 45
    assert run_ids() == [*before, run_id]
    assert metric_steps(run_id)[-1] >= row["step"]

    # The checkpoint written by the 2-process run resumes in a single process, to the end, with no gap.
    result = trainer.resume(run_id, progress=False)
    assert result.status == "completed" and result.steps == 45
    assert metric_steps(run_id) == [10, 20, 30, 40, 45]


# -- sweeps -------------------------------------------------------------------------------------

def test_a_beta_sweep_runs_its_trials_in_parallel_jobs(shared_home):
    before = run_ids()
    done = run_cli("sweep", "-d", "digits", "-s", STUDENT, "-t", TEACHER, "--beta", "0.1,10", "--lr", "1e-3",
                   "--parallel", "2", "--steps", "15", "--batch-size", "32", "--limit-train", str(LIMIT_TRAIN),
                   "--json", env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    trials = out["trials"]
    assert sorted(t["beta"] for t in trials) == [0.1, 10.0] and all(t["state"] == "completed" for t in trials)
    assert all(t["evaluated_on"] == "holdout" and 0 <= t["accuracy"] <= 1 for t in trials)
    assert trials[0]["accuracy"] >= trials[1]["accuracy"] and out["best"] == trials[0]
    assert sorted(run_ids()) == sorted([*before, *(t["run_id"] for t in trials)])  # ordinary runs, one per trial
    with open_catalog() as cat:
        rows = [cat.get_run(t["run_id"]) for t in trials]
    assert all(r["config"]["holdout_fraction"] == 0.1 and r["status"] == "completed" for r in rows)
    # Parallel: the second trial started before the first one ended.
    first, second = sorted(rows, key=lambda r: r["created_at"])
    assert second["created_at"] < first["updated_at"]


def test_sweep_settings_are_checked_before_anything_runs():
    from transfer.jobs.queue import sweep_configs
    from transfer.training.trainer import TransferConfig, TransferError

    base = TransferConfig(dataset="digits", student=STUDENT, teachers=[TEACHER], method="aft")
    configs = sweep_configs(base, {"beta": [0.1, 1.0], "lr": [1e-3, 1e-4]})
    assert [(c.beta, c.lr) for c in configs] == [(0.1, 1e-3), (0.1, 1e-4), (1.0, 1e-3), (1.0, 1e-4)]
    assert {c.holdout_fraction for c in configs} == {0.1}
    with pytest.raises(TransferError, match="cannot sweep colour: not transfer settings"):
        sweep_configs(base, {"colour": [1]})
    with pytest.raises(TransferError, match="cannot sweep dataset: every trial"):
        sweep_configs(base, {"dataset": ["digits"]})
    with pytest.raises(TransferError, match="at least one value of each swept setting; got none for lr"):
        sweep_configs(base, {"beta": [1.0], "lr": []})
    with pytest.raises(TransferError, match="beta must be a finite number >= 0"):
        sweep_configs(base, {"beta": [-1.0]})


# -- the helpers, in this (single) process ------------------------------------------------------

def test_torchrun_variables_are_read_and_checked(monkeypatch):
    from transfer.training import distributed

    assert distributed.environment({}) == distributed.Context(0, 1, 0)
    assert distributed.environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == distributed.Context(3, 4, 1)
    for env, match in (({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer >= 1 .*got 'two'"),
                       ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK must be below WORLD_SIZE=2; got RANK=2")):
        with pytest.raises(distributed.DistributedError, match=match):
            distributed.environment(env)
    monkeypatch.setenv("AFTZOO_DIST_TIMEOUT", "0")
    reset_settings()  # the settings object is cached; it reads the variable again
    with pytest.raises(distributed.DistributedError, match="AFTZOO_DIST_TIMEOUT must be a number of seconds > 0"):
        distributed.timeout()
    monkeypatch.setenv("AFTZOO_DIST_TIMEOUT", "")
    reset_settings()
    assert distributed.timeout() == distributed.DEFAULT_TIMEOUT
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(distributed.DistributedError, match="MASTER_ADDR is not set: start the processes with"):
        distributed.init()


def test_shards_cover_every_example_once_in_order():
    import importlib

    from transfer.training import distributed
    extract = importlib.import_module("zoo.extract")  # the module; zoo.extract is also the function's name

    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [distributed.shard(n, distributed.Context(r, world)) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert [p.stop - p.start for p in parts] == distributed.shard_sizes(n, world)
    # One rule, not a restated copy: extraction shards with the trainer's function.
    assert extract.processes.shard is distributed.shard


def test_in_one_process_the_collectives_do_nothing():
    import torch

    from transfer.training import distributed

    x = torch.randn(3, 2)
    assert distributed.gather_rows(x, 3) is x and distributed.sum_over_ranks(x) is x
    assert distributed.broadcast("id") == "id" and distributed.on_main(lambda: 7) == 7
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module) is module


def test_lost_peers_are_told_from_other_errors():
    from transfer.training import distributed

    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:54659: Connection reset by peer. This is typically caused by a remote worker")
    said = distributed.lost_peer(gloo)
    assert "lost contact with another process" in said and "(Read error [127.0.0.1]:54659: Connection reset by " \
        "peer)" in said and "[/" not in said  # no rich-markup-like source location in a message people read
    assert distributed.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert distributed.lost_peer(distributed.JobStopped("torchrun stopped process 0 of 2")).startswith("torchrun")


def test_a_process_of_a_torchrun_job_outside_its_group_does_not_extract(home, monkeypatch):
    from zoo.extract import ShardedExtractionError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ShardedExtractionError, match="one of 2 started by torchrun .* start them with `aftzoo launch`"):
        zoo.extract(TEACHER, "digits", limit=4, progress=False)


def test_a_split_that_leaves_a_process_without_examples_is_refused():
    from transfer.training.trainer import TransferError, _check_split

    _check_split(96, 32, 2)
    _check_split(97, 32, 1)
    with pytest.raises(TransferError, match="batches of 32 from 97 training examples leave 1 in the last one"):
        _check_split(97, 32, 2)


# -- the launcher -------------------------------------------------------------------------------

def test_launch_builds_torchrun_commands_for_one_node_and_many():
    one = torchrun_command(["extract", "-m", TEACHER], nproc_per_node=2)
    assert one == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                   "--standalone", "-m", "app.launch_worker", "extract", "-m", TEACHER]
    many = torchrun_command(["transfer", "--json"], nproc_per_node=8, nnodes=4, node_rank=3,
                            rdzv_endpoint="node0.cluster:29500", rdzv_id="job-7", rdzv_backend="static")
    assert many[3:] == ["--nproc-per-node", "8", "--nnodes", "4", "--rdzv-backend", "static", "--rdzv-endpoint",
                        "node0.cluster:29500", "--rdzv-id", "job-7", "--node-rank", "3", "-m", "app.launch_worker",
                        "transfer", "--json"]
    c10d = torchrun_command(["transfer"], nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    assert "--node-rank" not in c10d and c10d[c10d.index("--rdzv-backend") + 1] == "c10d"
    for kwargs, match in ((dict(nnodes=2), "several nodes need --rdzv-endpoint"),
                          (dict(nnodes=2, node_rank=2, rdzv_endpoint="h:1"), "--node-rank must be in 0..1"),
                          (dict(rdzv_endpoint="no-port"), "must be HOST:PORT"),
                          (dict(rdzv_id="a b"), "--rdzv-id is letters"),
                          (dict(rdzv_backend="etcd"), "--rdzv-backend must be one of c10d, static")):
        with pytest.raises(ValueError, match=match):
            torchrun_command(["transfer"], nproc_per_node=1, **kwargs)
    with pytest.raises(ValueError, match="launch runs one of: extract, transfer; got rank -d digits"):
        torchrun_command(["rank", "-d", "digits"], nproc_per_node=1)


def test_launch_prints_its_command_and_refuses_other_commands():
    dry = run_cli("launch", "--nproc-per-node", "2", "--dry-run", "--", "extract", "-m", TEACHER, "-d", "digits")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().endswith("--standalone -m app.launch_worker extract -m efficientnet-lite0 -d digits")
    bad = run_cli("launch", "--dry-run", "--", "serve")
    assert bad.returncode == 2 and "launch runs one of: extract, transfer; got serve" in bad.stderr
