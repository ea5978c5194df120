"""How a run stops, against real processes: a stop signal, a second resume, a full disk (issue 19, items 5, 6, 9).

Each test starts a real training process (the CLI or a fresh interpreter), does to it what an operator or the
machine would (SIGTERM, a second `--resume`, a disk that fills up), then checks the catalog row and the run's
folder from this process.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.catalog import open_catalog
from storage.settings import reset_settings
from tests.helpers import AFTZOO, REPO, tiny_student, tiny_student_code

STUDENT = "stops-tiny-resnet"
REGISTER = tiny_student_code(STUDENT, persist=True)  # for the subprocesses
# 192 digits, batches of 32 = 6 steps an epoch; checkpoints every 8 steps; long enough to be stopped midway.
RUN = dict(dataset="digits", student=STUDENT, method="stl", teachers=[], steps=400, lr=1e-2, batch_size=32,
           limit_train=192, limit_test=96, log_every=4, eval_every=8, checkpoint_every=8, flush_seconds=0.0)


@pytest.fixture
def student(home, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a shared machine: one compute thread per process
    tiny_student(STUDENT, persist=True)  # persisted in this test's catalog: the subprocesses find it there


def python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def row(run_id: str) -> dict | None:
    with open_catalog() as cat:
        return cat.get_run(run_id)


def wait_for_step(run_id: str, proc: subprocess.Popen, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (r := row(run_id)) is None or (r["step"] or 0) < step:
        assert proc.poll() is None, f"the run ended early ({proc.returncode}): {proc.stderr.read()[-800:]}"
        assert time.monotonic() < deadline, f"run {run_id} did not reach step {step} in {timeout} s"
        time.sleep(0.5)


def test_sigterm_to_aftzoo_transfer_stops_at_a_checkpoint_and_says_so(student):
    """Item 6: SIGTERM (timeout, docker stop, systemd) stops at a checkpoint as a cancel does; the row says
    "stopped by signal"; the exit status is a cancel's (1, one line); the run resumes to its end."""
    from transfer.training import trainer

    cli = subprocess.Popen([AFTZOO, "transfer", "-d", "digits", "-s", STUDENT, "--method", "stl", "--steps", "400",
                            "--lr", "0.01", "--batch-size", "32", "--limit-train", "192", "--limit-test", "96",
                            "--checkpoint-every", "8", "--eval-every", "8", "--json"],
                           cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while (runs := trainer.list_runs()).empty or int(runs["step"].max() or 0) < 8:
        assert cli.poll() is None, cli.stderr.read()[-800:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    run_id = runs["id"].iloc[0]
    cli.send_signal(signal.SIGTERM)
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == 1, err[-800:]  # a cancel's status, not 143
    assert "stopped by signal" in err and f"aftzoo transfer --resume {run_id}" in err
    stopped = row(run_id)
    assert stopped["status"] == "cancelled" and "stopped by signal (SIGTERM)" in stopped["error"]
    state = trainer.load_checkpoint(trainer.run_dir(run_id) / "checkpoint.pt")
    assert state["step"] == stopped["step"] and 8 <= state["step"] < 400  # the checkpoint is where it stopped
    assert not list(trainer.run_dir(run_id).glob(".*.tmp"))


def test_a_run_still_training_in_another_process_cannot_be_resumed_twice(student):
    """Item 9: the catalog's "running" is not enough; its process (pid, host, start time) is checked. Once that
    process is gone (SIGKILL), the next resume records why it stopped and continues."""
    from transfer.training import trainer

    run_id = "stops-twice"
    proc = python(f"""
        {REGISTER}
        from transfer.training import trainer
        trainer.run({RUN!r}, run_id={run_id!r}, progress=False)
    """)
    try:
        wait_for_step(run_id, proc, 8)
        with pytest.raises(trainer.TransferError, match=f"run {run_id} is still running in process {proc.pid} on "):
            trainer.resume(run_id, progress=False)
        assert proc.poll() is None  # the first process trains on, untouched
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert row(run_id)["status"] == "running"  # killed: it could not say so itself
    resumable = trainer.check_resumable(run_id)
    assert resumable["status"] == "failed" and f"its process ({proc.pid} on" in resumable["error"]


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free (a real full disk, not an injected error)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        block = b"\0" * (1 << 20)
        while (free := shutil.disk_usage(disk).free) > leave:
            try:
                f.write(block[:max(4096, min(len(block), free - leave))])
                f.flush()
            except OSError:
                break
    return filler


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """AFTZOO_HOME on a 256 MiB tmpfs of its own (needs root: skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    monkeypatch.setenv("AFTZOO_HOME", str(disk / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reset_settings()
    tiny_student(STUDENT, persist=True)
    yield disk
    reset_settings()
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_does_not_leave_a_run_running_and_a_resume_needs_one_spare_checkpoint(small_disk):
    """Item 5: the disk fills up mid-run, so the checkpoint and the catalog write that records the stop both fail;
    the stop still reaches the catalog (from the note reserved when the run opened) by the next start. A resume
    with room for less than one more checkpoint, beside a stale temporary one, still finishes."""
    from transfer.training import trainer

    run_id = "stops-full-disk"
    proc = python(f"""
        {REGISTER}
        from transfer.training import trainer
        trainer.run({RUN!r}, run_id={run_id!r}, progress=False)
    """)
    folder = trainer.run_dir(run_id)
    try:
        wait_for_step(run_id, proc, 8)
        deadline = time.monotonic() + 120
        while not (folder / "checkpoint.pt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(0.2)
        filler = _fill(small_disk, 0)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "No space left on device" in err, err[-800:]
    filler.unlink()
    recorded = trainer.check_resumable(run_id)  # the next start: no longer "running"
    assert recorded["status"] == "failed" and "No space left on device" in recorded["error"]

    # Nearly full again: a stale temporary checkpoint (its writer's pid now someone else's: 1, init) and room for
    # half a checkpoint. The resume sweeps the stale file, so one new temporary checkpoint fits.
    size = (folder / "checkpoint.pt").stat().st_size
    shutil.copy(folder / "checkpoint.pt", folder / ".checkpoint.pt.1.tmp")
    filler = _fill(small_disk, size // 2)
    result = trainer.resume(run_id, progress=False)
    assert result.status == "completed" and result.steps == 400
    assert not list(folder.glob(".*.tmp"))
    filler.unlink()
