"""The job queue: real worker processes training a tiny student, read back from the catalog."""
import time

import pytest

import zoo
from storage.catalog import open_catalog
from transfer.jobs.queue import JobQueue
from transfer.training.trainer import TransferError, history
from zoo.models import random_spec

STUDENT = "test-jobs-resnet"
BASE = dict(dataset="digits", student=STUDENT, teachers=[], method="stl", steps=24, lr=1e-2, batch_size=32,
            limit_train=192, limit_test=96, log_every=4, eval_every=8, checkpoint_every=4, flush_seconds=0.0)


@pytest.fixture(scope="module", autouse=True)
def _student():
    # persist: the worker processes find the model through the catalog, as the app's would.
    zoo.register(random_spec("resnet", name=STUDENT, hub_id="test_resnet", image_size=32), overwrite=True,
                 persist=True)


@pytest.fixture
def queue():
    q = JobQueue(workers=1, kill_after=20)
    yield q
    q.shutdown(timeout=60)


def run_row(run_id):
    with open_catalog() as cat:
        return cat.get_run(run_id)


def test_a_job_trains_in_its_own_process_and_records_its_run(queue):
    job = queue.submit({**BASE, "method": "aft", "beta": 1.0, "teachers": ["efficientnet-lite0"], "steps": 12})
    assert job.state in ("queued", "running")
    done = queue.wait(job.id, timeout=240)
    assert done.state == "completed", done.error
    row = run_row(job.run_id)
    assert row["status"] == "completed" and row["step"] == 12 and row["test_accuracy"] > 0.1
    assert list(history(job.run_id)["step"]) == [4, 8, 12]


def test_jobs_queue_one_at_a_time_and_a_queued_job_can_be_dropped(queue):
    first = queue.submit({**BASE, "steps": 30})
    second = queue.submit({**BASE, "steps": 6, "seed": 1})
    third = queue.submit({**BASE, "steps": 6, "seed": 2})
    time.sleep(1.0)
    states = {j.id: j.state for j in queue.jobs()}
    assert states[first.id] == "running" and states[second.id] == "queued"
    assert queue.cancel(third.id).state == "cancelled"
    assert queue.wait(second.id, timeout=240).state == "completed"
    first_done = queue.get(first.id)
    assert first_done.state == "completed" and first_done.ended_at <= queue.get(second.id).started_at
    assert run_row(third.run_id) is None  # never started, never recorded


def test_cancel_keeps_a_checkpoint_and_resume_finishes_the_run(queue):
    job = queue.submit({**BASE, "steps": 600, "limit_train": 96})
    while True:  # cancel once training has logged a few steps
        row = run_row(job.run_id)
        if row is not None and row["step"] >= 8:
            break
        assert not queue.get(job.id).done, queue.get(job.id).error
        time.sleep(0.2)
    queue.cancel(job.id)
    stopped = queue.wait(job.id, timeout=60)
    assert stopped.state == "cancelled"
    row = run_row(job.run_id)
    assert row["status"] == "cancelled" and 8 <= row["step"] < 600
    with pytest.raises(TransferError, match="already queued or running"):
        queue.submit_resume(job.run_id) and queue.submit_resume(job.run_id)
    resumed = [j for j in queue.jobs() if j.kind == "resume"][0]
    assert queue.wait(resumed.id, timeout=300).state == "completed"
    steps = list(history(job.run_id)["step"])
    assert steps == sorted(set(steps)) and steps[-1] == 600  # no gap, no duplicate


def test_bad_configurations_fail_at_submit_not_in_the_queue(queue):
    with pytest.raises(TransferError, match="unknown method"):
        queue.submit({**BASE, "method": "magic"})
    with pytest.raises(LookupError, match="unknown model"):
        queue.submit({**BASE, "student": "no-such-student"})
    with pytest.raises(TransferError, match="no run"):
        queue.submit_resume("nope")
    assert queue.jobs() == []


def test_a_failing_worker_reports_the_error_line(queue):
    # Valid names, but the tiny student has no pre-trained weights: the worker fails with one line.
    job = queue.submit({**BASE, "student": "resnet50", "steps": 2})
    done = queue.wait(job.id, timeout=120)
    assert done.state == "failed"
    assert "no weights for 'resnet50'" in done.error and "Traceback" not in done.error


def test_a_worker_ignores_modules_in_the_folder_it_is_started_from(tmp_path):
    """A stray inspect.py in the caller's folder once shadowed the standard library in every job worker."""
    import subprocess
    import sys

    from transfer.jobs.queue import worker_environment

    (tmp_path / "inspect.py").write_text("raise SystemExit('the caller folder shadowed the standard library')\n")
    done = subprocess.run([sys.executable, "-m", "transfer.jobs.queue", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env=worker_environment(), timeout=120)
    assert done.returncode == 0 and "Run one transfer job" in done.stdout, done.stderr
