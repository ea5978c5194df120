"""Faults, for real: processes killed with SIGKILL at chosen moments, a full disk, failed writes, old catalogs.

Each test kills or starves a real process (training, extraction, a catalog writer, a job-queue worker),
then opens the same DuckDB file and feature folder afresh and checks that nothing half-done is visible
and that running the work again completes. tests/test_trainer.py already kills a run between two
checkpoints; here the kills land inside a checkpoint write, inside a catalog transaction, between a
feature file's rename and its catalog row, and in a job-queue worker.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from storage.catalog import Catalog, CatalogError, migrate, open_catalog
from storage.features import FeatureKey, FeatureStore
from storage.migrations import MIGRATIONS, SCHEMA_VERSION
from storage.settings import get_settings
from tests.helpers import AFTZOO, REPO, run_cli, tiny_student, tiny_student_code

STUDENT = "faults-tiny-resnet"
REGISTER = tiny_student_code(STUDENT, persist=True)  # for the subprocesses
# A short real run: 192 digits, batches of 32 = 6 steps an epoch; metrics every 4 steps, checkpoints every 8.
RUN = dict(dataset="digits", student=STUDENT, method="stl", teachers=[], steps=36, lr=1e-2, batch_size=32,
           limit_train=192, limit_test=96, log_every=4, eval_every=8, checkpoint_every=8, flush_seconds=0.0)


def python(code: str, **kwargs) -> subprocess.Popen:
    """A fresh interpreter running ``code`` in the repository, with this test's AFTZOO_HOME."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, **kwargs)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
        assert time.monotonic() < deadline, f"no {prefix!r} line in {timeout} s"
    raise AssertionError(f"the process ended (status {proc.wait()}) before printing {prefix!r}")


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def run_row(run_id: str) -> dict:
    with open_catalog() as cat:
        return cat.get_run(run_id)


def logged_steps(run_id: str) -> list[int]:
    with open_catalog() as cat:
        return [r["step"] for r in cat.query("SELECT DISTINCT step FROM run_metrics WHERE run_id = ? ORDER BY step",
                                             [run_id])]


@pytest.fixture
def one_thread(monkeypatch):
    """One compute thread per process (this one and the ones it starts). On a shared 2-core machine two
    processes spinning two OpenMP threads each train 4x slower; what is tested here does not change."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def student(home, one_thread):
    tiny_student(STUDENT, persist=True)  # persisted in this test's catalog: subprocesses find the student there


# -- training -----------------------------------------------------------------------------------

def test_training_killed_inside_a_checkpoint_write_and_again_mid_run_resumes_to_the_end(home, student):
    """Kill 1 lands after the checkpoint's temporary file is written, before its rename; kill 2 lands
    between checkpoints of the resumed run (started with the CLI). The last resume ends at the
    configured step count with one metric row per logged step: no gap, no duplicate."""
    from transfer.training import trainer

    run_id = "faults-killed-twice"
    proc = python(f"""
        import os, time, torch
        {REGISTER}
        from transfer.training import recorder, trainer
        real, calls = recorder.save_checkpoint, []

        def save(path, state):
            calls.append(state["step"])
            if len(calls) == 2:  # the second checkpoint: its temporary file is written, then the kill comes
                torch.save(state, path.with_name(f".{{path.name}}.{{os.getpid()}}.tmp"))
                print("MIDWRITE", state["step"], flush=True)
                time.sleep(600)
            real(path, state)

        recorder.save_checkpoint = save
        trainer.run({RUN!r}, run_id={run_id!r}, progress=False)
    """)
    assert wait_for_line(proc, "MIDWRITE") == "MIDWRITE 16"
    kill(proc)
    run_dir = trainer._run_dir(run_id)
    assert [p.name for p in run_dir.glob(".checkpoint.pt.*.tmp")], "the kill should leave a half-written checkpoint"
    assert trainer.load_checkpoint(run_dir / "checkpoint.pt")["step"] == 8  # the rename never happened
    row = run_row(run_id)
    assert row["status"] == "running" and row["step"] == 16  # metrics reach 16, the checkpoint file says 8

    # Resume with the CLI, as a user would, and kill it again between checkpoints.
    cli = subprocess.Popen([AFTZOO, "transfer", "--resume", run_id], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    shown = b""
    while not re.search(rb"\b(2[6-9]|3[0-5])/36\b", shown):  # its progress bar on stderr says where it is
        chunk = cli.stderr.read1(4096)
        assert chunk, f"the resumed run ended before step 26: {shown[-500:]!r}"
        shown += chunk
    kill(cli)
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp"))  # swept by the resume (its writer was dead)
    killed_at = trainer.load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert killed_at in (24, 32)

    seen = []
    result = trainer.resume(run_id, progress=False, on_step=lambda m: seen.append(m["step"]))
    assert result.status == "completed" and result.steps == 36
    assert seen[0] == killed_at + 4  # continued from the last checkpoint, not from the start
    assert logged_steps(run_id) == list(range(4, 37, 4))  # no gap, no duplicate
    with open_catalog() as cat:
        per_step = cat.query("SELECT step, count(*) AS n FROM run_metrics WHERE run_id = ? AND name = 'loss' "
                             "GROUP BY step", [run_id])
    assert all(r["n"] == 1 for r in per_step) and len(per_step) == 9
    assert run_row(run_id)["status"] == "completed"


def test_a_failed_checkpoint_write_is_a_clear_error_and_the_run_resumes(home, student, monkeypatch):
    """torch.save hits a full disk at the second checkpoint (injected): one clear error naming the cause
    and the checkpoint kept, the run marked failed (not left "running"), and a resume finishes it."""
    import errno

    import torch

    from transfer.training import trainer

    real, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            with open(f, "wb") as partial:  # what a full disk leaves: the start of a file
                partial.write(b"PK\x03\x04")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(trainer.CheckpointError) as info:
        trainer.run(dict(RUN), run_id="faults-full-disk", progress=False)
    message = str(info.value)
    assert "No space left on device" in message and "bytes free on its disk" in message
    assert "aftzoo transfer --resume faults-full-disk" in message and "checkpoint of step 8 is kept" in message
    row = run_row("faults-full-disk")
    assert row["status"] == "failed" and "No space left on device" in row["error"]
    run_dir = trainer._run_dir("faults-full-disk")
    assert not list(run_dir.glob(".*.tmp"))  # the partial file was removed
    assert trainer.load_checkpoint(run_dir / "checkpoint.pt")["step"] == 8

    monkeypatch.undo()  # the disk has room again
    result = trainer.resume("faults-full-disk", progress=False)
    assert result.status == "completed" and result.steps == 36
    assert logged_steps("faults-full-disk") == list(range(4, 37, 4))


@pytest.mark.slow  # two worker processes start and train: tests/test_jobs.py covers the queue's resume by default
def test_a_job_worker_killed_with_sigkill_is_reported_and_resumes_through_the_queue(home, student):
    from transfer.jobs.queue import JobQueue

    queue = JobQueue(workers=1, kill_after=20)
    try:
        job = queue.submit({**RUN, "steps": 48, "checkpoint_every": 6})
        deadline = time.monotonic() + 120
        while (row := run_row(job.run_id)) is None or row["step"] < 14:
            assert not queue.get(job.id).done and time.monotonic() < deadline, queue.get(job.id).error
            time.sleep(0.5)  # not faster: each look opens the catalog the worker writes to
        pids = _worker_pids(job.run_id)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        done = queue.wait(job.id, timeout=60)
        assert done.state == "failed" and "killed by SIGKILL" in done.error and "resume" in done.error
        row = run_row(job.run_id)
        assert row["status"] == "failed" and "killed by SIGKILL" in row["error"]

        resumed = queue.submit_resume(job.run_id)
        assert queue.wait(resumed.id, timeout=240).state == "completed", queue.get(resumed.id).error
    finally:
        queue.shutdown(timeout=60)
    row = run_row(job.run_id)
    assert row["status"] == "completed" and row["step"] == 48
    assert logged_steps(job.run_id) == list(range(4, 49, 4))  # no gap, no duplicate


@pytest.mark.slow  # holds the catalog for 12 s
def test_a_run_waits_out_another_process_holding_the_catalog(home, student):
    """Another process (the app scoring a ranking, say) keeps the catalog for longer than an interactive
    command waits (10 s): the run's next metrics flush waits its turn instead of failing the run."""
    from transfer.training import trainer

    holder = []

    def on_step(m):
        if m["step"] == 8 and not holder:
            holder.append(python(f"""
                import time
                from storage.catalog import Catalog
                with Catalog({str(get_settings().catalog_path)!r}):
                    print("HELD", flush=True)
                    time.sleep(12)
            """))
            wait_for_line(holder[0], "HELD")

    started = time.monotonic()
    result = trainer.run(dict(RUN), run_id="faults-waits", progress=False, on_step=on_step)
    assert time.monotonic() - started > 10  # it did wait
    assert result.status == "completed" and logged_steps("faults-waits") == list(range(4, 37, 4))
    assert holder[0].wait(timeout=30) == 0


def _worker_pids(run_id: str) -> list[int]:
    """Job workers are real processes: find one by its command line, as an operator would."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and run_id in (p / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(p.name))
        except OSError:  # the process ended while we looked
            pass
    return pids


def test_a_worker_stops_at_a_checkpoint_when_the_app_that_started_it_is_killed(home, student):
    """SIGKILL the process that owns the job queue (the app, say): no orphan trains on; the worker gets
    SIGTERM from the kernel, writes a checkpoint and records the run as cancelled, so it can be resumed."""
    app = python(f"""
        import time
        from transfer.jobs.queue import JobQueue
        job = JobQueue(workers=1).submit({{**{RUN!r}, "steps": 6000, "checkpoint_every": 8}})
        print("RUN", job.run_id, flush=True)
        time.sleep(600)
    """)
    run_id = wait_for_line(app, "RUN").split()[1]
    deadline = time.monotonic() + 120
    while (row := run_row(run_id)) is None or row["step"] < 8:
        assert app.poll() is None and time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.5)
    (worker,) = _worker_pids(run_id)
    kill(app)
    deadline = time.monotonic() + 60
    while _worker_pids(run_id):
        assert time.monotonic() < deadline, f"worker {worker} outlived its app by 60 s"
        time.sleep(0.2)
    row = run_row(run_id)
    assert row["status"] == "cancelled" and 8 <= row["step"] < 6000
    from transfer.training.trainer import _run_dir, load_checkpoint

    assert load_checkpoint(_run_dir(run_id) / "checkpoint.pt")["step"] == row["step"]


# -- feature extraction and the feature store -------------------------------------------------

@pytest.mark.slow  # three CLI processes: tests/test_features.py kills a writer by default
def test_extraction_killed_midway_indexes_nothing_and_a_rerun_completes(home, one_thread):
    """`aftzoo extract` is SIGKILLed while it streams batches into its temporary file."""
    args = ("extract", "-m", "efficientnet-lite0", "-d", "digits", "--limit", "200", "--batch-size", "4", "--json")
    features = home / "features"
    proc = subprocess.Popen([AFTZOO, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(features.rglob(".*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "the extraction ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # a few more batches
    assert proc.poll() is None, "the extraction finished before the kill: give it more examples"
    kill(proc)
    assert list(features.rglob(".*.tmp")) and not list(features.rglob("*.npy"))
    with open_catalog() as cat:
        assert cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"] == 0

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    (first,) = json.loads(again.stdout)
    assert first["cached"] is False and first["shape"] == [200, 1280]
    assert not list(features.rglob(".*.tmp"))  # the dead writer's file was swept
    (second,) = json.loads(run_cli(*args).stdout)
    assert second["cached"] is True and second["path"] == first["path"]


def test_killed_between_the_file_rename_and_the_catalog_row(tmp_path):
    """The feature file is in place but was never indexed: it is never read, and the next writer replaces it."""
    kept = np.arange(12, dtype=np.float32).reshape(4, 3)
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        FeatureStore(tmp_path / "features", cat).put(FeatureKey("m", "d", "test", "e" * 64, {}), kept)
    proc = python(f"""
        import time, numpy as np
        from storage.catalog import Catalog
        from storage.features import FeatureKey, FeatureStore

        def stop_here(self, **row):
            print("RENAMED", flush=True)
            time.sleep(600)

        Catalog.add_feature_set = stop_here
        store = FeatureStore({str(tmp_path / "features")!r}, Catalog({str(tmp_path / "catalog.duckdb")!r}))
        store.put(FeatureKey("m", "d", "train", "f" * 64, {{}}), np.ones((100, 8), np.float32))
    """)
    wait_for_line(proc, "RENAMED")
    kill(proc)
    key = FeatureKey("m", "d", "train", "f" * 64, {})
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        store = FeatureStore(tmp_path / "features", cat)
        assert store.path_for(key).is_file()  # renamed into place...
        assert store.lookup(key) is None and store.get(key) is None  # ...but not indexed, so not read
        again = np.full((100, 8), 2.0, np.float32)
        store.put(key, again)
        np.testing.assert_array_equal(store.get(key), again)
        np.testing.assert_array_equal(store.get(FeatureKey("m", "d", "test", "e" * 64, {})), kept)
        assert cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"] == 2


# -- the catalog ------------------------------------------------------------------------------

def _metrics_and_step(path) -> tuple[int, int | None, int | None]:
    with Catalog(path) as cat:
        n = cat.query("SELECT count(*) AS n FROM run_metrics WHERE run_id = 'r'")[0]["n"]
        top = cat.query("SELECT max(step) AS s FROM run_metrics WHERE run_id = 'r'")[0]["s"]
        return n, top, cat.get_run("r")["step"]


def test_catalog_writes_killed_mid_transaction_leave_no_partial_rows(tmp_path):
    """A writer is killed while a transaction is open (deterministically), then at random moments of
    a stream of transactions: every reopened catalog holds whole transactions only."""
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as cat:
        cat.create_run("r", dataset="d", student="s", teachers=[], method="stl", config={}, total_steps=None)
    writer = f"""
        import sys, time
        from storage.catalog import Catalog
        cat = Catalog({str(path)!r})
        start = (cat.query("SELECT max(step) AS s FROM run_metrics")[0]["s"] or -1) + 1
        mode = sys.argv[1]
        if mode == "open":
            with cat.transaction() as cur:  # the kill comes while this transaction is open
                cur.executemany("INSERT INTO run_metrics (run_id, step, name, value) VALUES ('r', ?, 'loss', 0)",
                                [(start + i,) for i in range(1000)])
                cur.execute("UPDATE runs SET step = ? WHERE id = 'r'", [start + 999])
                print("IN_TX", flush=True)
                time.sleep(600)
        print("READY", flush=True)
        while True:  # ten metric rows and the run's step, together, again and again
            cat.log_metrics("r", [(start + i, "loss", 0.5) for i in range(10)], step=start + 9)
            start += 10
    """

    def writer_proc(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), mode], cwd=REPO, text=True,
                                stdout=subprocess.PIPE)

    proc = writer_proc("open")
    wait_for_line(proc, "IN_TX")
    kill(proc)
    assert _metrics_and_step(path) == (0, None, 0)

    rng = random.Random(9)
    for _ in range(4):
        proc = writer_proc("stream")
        wait_for_line(proc, "READY")
        time.sleep(rng.uniform(0.2, 0.8))
        kill(proc)
        n, top, step = _metrics_and_step(path)
        assert n > 0 and n % 10 == 0 and top == n - 1 and step == top  # whole transactions, in order


def test_a_catalog_from_an_older_schema_migrates_and_keeps_its_rows(home):
    path = get_settings().catalog_path
    path.parent.mkdir(parents=True)
    con = duckdb.connect(str(path))
    assert migrate(con, target=2) == 2
    con.execute("INSERT INTO models (name, family, modality, role, source) VALUES ('m', 'f', 'image', 'teacher', "
                "'timm')")
    con.execute("INSERT INTO datasets (name, split, fingerprint, num_classes) VALUES ('d', 'train', 'fp', 3)")
    con.execute("INSERT INTO rankings (dataset, fingerprint, model, metric, score) VALUES ('d', 'fp', 'm', 'logme', "
                "0.25)")
    con.close()
    with open_catalog() as cat:  # what every command does first
        assert cat.schema_version == SCHEMA_VERSION
        assert cat.query("SELECT name FROM models") == [{"name": "m"}]
        assert cat.query("SELECT score FROM rankings") == [{"score": 0.25}]
        cat.create_run("new", dataset="d", student="s", teachers=[], method="stl", config={}, total_steps=3)
        assert cat.get_run("new")["status"] == "running"


def test_a_failed_migration_is_a_clear_error_and_leaves_the_catalog_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, target=2)
    con.execute("INSERT INTO rankings (dataset, fingerprint, model, metric, score) VALUES ('d', 'fp', 'm', 'nce', 1)")
    con.close()
    # Migration 3 fails after creating its first table (injected); the transaction must take that back.
    import storage.catalog as catalog_module

    broken = [*MIGRATIONS[:2], MIGRATIONS[2] + "; SELECT error('injected failure')"]
    monkeypatch.setattr(catalog_module, "MIGRATIONS", broken)
    with pytest.raises(CatalogError, match=r"could not migrate the catalog from schema version 2 to 3 "
                                           r"\(.*injected failure\); it was left at version 2 with all its rows"):
        Catalog(path)
    # The failed open let the file go: another process can open it at once.
    probe = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).close()"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    con = duckdb.connect(str(path))
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'").fetchone()[0] == 0
    con.close()
    monkeypatch.undo()
    with Catalog(path) as cat:
        assert cat.schema_version == SCHEMA_VERSION and cat.query("SELECT score FROM rankings") == [{"score": 1.0}]


# -- full disks and refused writes ---------------------------------------------------------------

def test_writes_over_the_file_size_limit_are_clear_errors_and_change_nothing(tmp_path):
    """RLIMIT_FSIZE (no root needed) makes the kernel refuse writes past a size, as a full disk does:
    the catalog and the feature store report it in one sentence and keep what they had."""
    path, features = tmp_path / "catalog.duckdb", tmp_path / "features"
    with Catalog(path) as cat:
        cat.create_run("r", dataset="d", student="s", teachers=[], method="stl", config={}, total_steps=None)
        cat.log_metrics("r", [(1, "loss", 1.0)], step=1)
        FeatureStore(features, cat).put(FeatureKey("m", "d", "train", "a" * 64, {}), np.ones((10, 4), np.float32))
    limit = path.stat().st_size + 64 * 1024
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, resource
        import numpy as np
        from storage.catalog import Catalog, CatalogWriteError
        from storage.features import FeatureKey, FeatureStore, FeatureStoreError
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
        out = {{}}
        with Catalog({str(path)!r}) as cat:
            try:
                with cat.transaction() as cur:  # 200,000 metric rows and the run's step, together
                    cur.execute("INSERT INTO run_metrics (run_id, step, name, value) "
                                "SELECT 'r', i, 'loss', 0.5 FROM range(2, 200000) t(i)")
                    cur.execute("UPDATE runs SET step = 199999 WHERE id = 'r'")
            except CatalogWriteError as exc:
                out["catalog"] = str(exc)
            try:
                FeatureStore({str(features)!r}, cat).put(FeatureKey("m", "d", "test", "b" * 64, {{}}),
                                                         np.ones((100_000, 64), np.float32))
            except FeatureStoreError as exc:
                out["features"] = str(exc)
            cat.log_metrics("r", [(2, "loss", 2.0)], step=2)  # a small write still fits: the catalog still works
        print(json.dumps(out))
    """)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "could not write to the catalog" in out["catalog"] and "File too large" in out["catalog"]
    assert "nothing of this change was stored" in out["catalog"] and "AFTZOO_HOME" in out["catalog"]
    assert "could not write features" in out["features"] and "File too large" in out["features"]
    with Catalog(path) as cat:
        rows = cat.query("SELECT step FROM run_metrics ORDER BY step")
        assert rows == [{"step": 1}, {"step": 2}] and cat.get_run("r")["step"] == 2
        store = FeatureStore(features, cat)
        assert store.get(FeatureKey("m", "d", "test", "b" * 64, {})) is None
        assert store.get(FeatureKey("m", "d", "train", "a" * 64, {})).shape == (10, 4)
    assert not list(features.rglob(".*.tmp"))


FULL_DISK = """
import json, os, sys, tempfile
from pathlib import Path
import numpy as np
home = Path(sys.argv[1])
os.environ["AFTZOO_HOME"] = str(home)
import torch
from storage.catalog import CatalogWriteError, open_catalog
from storage.features import FeatureKey, FeatureStore, FeatureStoreError
from transfer.training.recorder import CheckpointError, save_checkpoint as _save_checkpoint
from zoo.userdata import import_upload

out = {}
with open_catalog() as cat:
    store = FeatureStore(home / "features", cat)
    store.put(FeatureKey("m", "d", "train", "a" * 64, {}), np.ones((64, 16), np.float32))
    cat.create_run("r", dataset="d", student="s", teachers=[], method="stl", config={}, total_steps=None)
(home / "runs").mkdir()
_save_checkpoint(home / "runs" / "checkpoint.pt", {"student": {"w": torch.ones(8)}, "step": 8})
table = Path(tempfile.mkdtemp()) / "upload.csv"  # on the machine's own disk, not the full one
table.write_text("text,label\\n" + "".join(f"review number {i} {'word ' * 40},{'pos' if i % 2 else 'neg'}\\n"
                                          for i in range(20000)))
before = {p.name for p in home.rglob("*")}
filler = home / "filler"
with open(filler, "wb", buffering=0) as f:  # fill the file system to the last byte
    for size in (65536, 1):
        try:
            while f.write(b"\\0" * size):
                pass
        except OSError:
            pass
out["free_bytes"] = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize

def attempt(name, fn):
    try:
        fn()
        out[name] = "no error"
    except (FeatureStoreError, CatalogWriteError, CheckpointError, OSError, ValueError) as exc:
        out[name] = f"{type(exc).__name__}: {exc}"

def metrics():
    with cat.transaction() as cur:  # 200,000 metric rows and the run's step, together or not at all
        cur.execute("INSERT INTO run_metrics (run_id, step, name, value) "
                    "SELECT 'r', i, 'loss', 0.5 FROM range(200000) t(i)")
        cur.execute("UPDATE runs SET step = 199999 WHERE id = 'r'")

with open_catalog() as cat:
    attempt("catalog", metrics)
attempt("checkpoint", lambda: _save_checkpoint(home / "runs" / "checkpoint.pt",
                                              {"student": {"w": torch.ones(2_000_000)}, "step": 16}))
attempt("upload", lambda: import_upload(table, "full-disk-set"))
# Now leave 1 MiB: enough to create a large sparse file, far too little to fill it. Writing into such
# a file through a memory map is what kills a process with SIGBUS, not an error, when the disk runs out.
os.truncate(filler, filler.stat().st_size - (1 << 20))
with open_catalog() as cat:
    store = FeatureStore(home / "features", cat)
    attempt("features", lambda: store.put(FeatureKey("m", "d", "test", "b" * 64, {}),
                                          np.ones((100_000, 64), np.float32)))  # 25 MB
with open_catalog() as cat:
    store = FeatureStore(home / "features", cat)
    out["kept_features"] = float(store.get(FeatureKey("m", "d", "train", "a" * 64, {})).sum())
    out["new_features"] = store.lookup(FeatureKey("m", "d", "test", "b" * 64, {})) is not None
    out["metrics"] = cat.query("SELECT count(*) AS n FROM run_metrics")[0]["n"]
    out["datasets"] = cat.query("SELECT count(*) AS n FROM datasets")[0]["n"]
out["checkpoint_step"] = torch.load(home / "runs" / "checkpoint.pt", weights_only=True)["step"]
out["new_files"] = sorted({p.name for p in home.rglob("*")} - before - {"filler"})
filler.unlink()  # room again: the same work now completes
with open_catalog() as cat:
    FeatureStore(home / "features", cat).put(FeatureKey("m", "d", "test", "b" * 64, {}),
                                             np.ones((100_000, 64), np.float32))
    out["rerun"] = cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"]
print(json.dumps(out))
"""


def test_a_full_disk_gives_clear_errors_and_keeps_everything(tmp_path):
    """A real full file system: a 48 MiB tmpfs mounted in a private user and mount namespace (no root
    needed where unprivileged user namespaces are allowed; skipped elsewhere)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    mount = tmp_path / "disk"
    mount.mkdir()
    (tmp_path / "script.py").write_text(FULL_DISK)
    proc = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=48m tmpfs "$1" || exit 77; mkdir "$1/home"; '
         'exec "$2" "$3" "$1/home"', "sh", str(mount), sys.executable, str(tmp_path / "script.py")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode == 77 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, f"status {proc.returncode} (135 is SIGBUS)\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["free_bytes"] < 64 * 1024
    assert out["features"].startswith("FeatureStoreError: could not write features to")
    assert "No space left on device" in out["features"] and "nothing was cached" in out["features"]
    assert out["catalog"].startswith("CatalogWriteError: could not write to the catalog")
    assert "No space left on device" in out["catalog"] and "the catalog is as it was" in out["catalog"]
    assert out["checkpoint"].startswith("CheckpointError: could not write the checkpoint")
    assert "bytes free on its disk" in out["checkpoint"]
    assert "No space left on device" in out["upload"], out["upload"]
    # Nothing was lost and nothing half-written stayed behind.
    assert out["kept_features"] == 64 * 16 and out["new_features"] is False
    assert out["metrics"] == 0 and out["datasets"] == 0 and out["checkpoint_step"] == 8
    assert not [n for n in out["new_files"] if n.endswith(".tmp") or n.endswith(".npy")], out["new_files"]
    assert out["rerun"] == 2

