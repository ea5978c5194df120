"""Background transfer jobs: a queue whose jobs each run in their own Python process.

Processes, not threads: a training loop holds the GIL between tensor operations, so a
training thread would slow every page the app serves; a job that crashes or is killed
cannot take the app with it; and the catalog is already shared between processes (each
opens it briefly), so progress, curves and results are read from there, exactly as for
a run started from the CLI.

Cancelling sends SIGTERM: the worker turns it into the trainer's cancel event, so the run
stops after its current step, writes a checkpoint and can be resumed. A worker that has
not stopped ``kill_after`` seconds later (still extracting teacher features, say) is
killed; its run, if it had one, is marked cancelled and resumes from its last checkpoint.

``sweep`` runs hyper-parameter trials (beta, learning rates, ...) as parallel jobs of one queue.

    python -m transfer.jobs.queue transfer RUN_ID CONFIG_JSON     # what the queue runs
    python -m transfer.jobs.queue resume RUN_ID
"""
from __future__ import annotations

import _thread
import argparse
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage.errors import AftzooError
from storage.settings import get_settings


class UnknownJob(AftzooError, LookupError):
    """A job id this queue does not know."""


CANCELLED_EXIT = 3  # the worker's exit status when it stopped because it was asked to
STATES = ("queued", "running", "completed", "failed", "cancelled")


@dataclass
class Job:
    id: str
    kind: str                   # "transfer" or "resume"
    run_id: str
    config: dict
    state: str = "queued"
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    log: str | None = None      # the worker's stdout and stderr

    @property
    def done(self) -> bool:
        return self.state in ("completed", "failed", "cancelled")

    def to_dict(self) -> dict:
        return asdict(self)


def _last_line(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    # tqdm redraws with carriage returns: the message is the text after the last one.
    errors = [ln.split("\r")[-1] for ln in lines if ln.split("\r")[-1].startswith("error:")]
    line = errors[-1] if errors else (lines[-1].split("\r")[-1] if lines else None)
    return line.removeprefix("error:").strip() if line else None


class JobQueue:
    """Run transfer jobs in worker processes, at most ``workers`` at a time, first come first served."""

    def __init__(self, workers: int = 1, *, kill_after: float = 30.0, poll: float = 0.2):
        if workers < 1:
            raise ValueError(f"workers must be at least 1; got {workers}")
        self.workers = workers
        self.kill_after = kill_after
        self._poll = poll
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancel_sent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="aftzoo-jobs", daemon=True)
        self._thread.start()

    # -- submitting -------------------------------------------------------------------------
    def submit(self, config, run_id: str | None = None) -> Job:
        """Queue a new transfer; a bad configuration fails here, before anything is queued. ``run_id`` names the
        run (a build names its trials, so that a rerun finds them); by default one is made."""
        from transfer.training.trainer import TransferConfig, check_names, new_run_id

        cfg = config if isinstance(config, TransferConfig) else TransferConfig.from_dict(dict(config))
        cfg.validate()
        check_names(cfg)
        return self._add(Job(uuid.uuid4().hex[:8], "transfer", run_id or new_run_id(cfg), cfg.to_dict()))

    def submit_resume(self, run_id: str) -> Job:
        """Queue the continuation of a cancelled, failed or killed run from its last checkpoint."""
        from transfer.training.trainer import TransferError, check_resumable

        row = check_resumable(run_id)
        with self._lock:
            if any(j.run_id == run_id and not j.done for j in self._jobs.values()):
                raise TransferError(f"run {run_id} is already queued or running here")
        return self._add(Job(uuid.uuid4().hex[:8], "resume", run_id, row["config"]))

    def _add(self, job: Job) -> Job:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the job queue is shut down")
            self._jobs[job.id] = job
        self._wake.set()
        return job

    # -- reading ----------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job of this queue, newest first (copies: safe to read while jobs run)."""
        with self._lock:
            return [Job(**j.to_dict()) for j in sorted(self._jobs.values(), key=lambda j: -j.submitted_at)]

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise UnknownJob(f"no job {job_id!r}; jobs here: {', '.join(self._jobs) or 'none'}")
            return Job(**self._jobs[job_id].to_dict())

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job := self.get(job_id)).done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
            time.sleep(self._poll)
        return job

    # -- stopping ---------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Drop a queued job, or ask a running one to stop at its next step (it keeps a checkpoint)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(f"no job {job_id!r}")
            if job.state == "queued":
                job.state, job.ended_at, job.error = "cancelled", time.time(), "cancelled before it started"
            elif job.state == "running" and job_id not in self._cancel_sent:
                self._procs[job_id].send_signal(signal.SIGTERM)
                self._cancel_sent[job_id] = time.monotonic()
        return self.get(job_id)

    def shutdown(self, cancel_running: bool = True, timeout: float = 60.0) -> None:
        """Stop taking jobs; cancel queued ones and (by default) running ones, and wait for them."""
        with self._lock:
            self._stopped = True
            ids = [j.id for j in self._jobs.values() if not j.done]
        for job_id in ids:
            if cancel_running or self.get(job_id).state == "queued":
                self.cancel(job_id)
        deadline = time.monotonic() + timeout
        while any(not self.get(i).done for i in ids) and time.monotonic() < deadline:
            time.sleep(self._poll)
        self._wake.set()

    # -- the scheduler ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                self._reap()
                running = sum(j.state == "running" for j in self._jobs.values())
                queued = sorted((j for j in self._jobs.values() if j.state == "queued"),
                                key=lambda j: j.submitted_at)
                if not self._stopped:
                    for job in queued[:max(0, self.workers - running)]:
                        self._start(job)
                if self._stopped and not self._procs:
                    return
            self._wake.wait(self._poll)
            self._wake.clear()

    def _start(self, job: Job) -> None:
        logs = get_settings().home / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        job.log = str(logs / f"{job.id}-{job.run_id}.log")
        argv = [sys.executable, "-m", "transfer.jobs.queue", job.kind, job.run_id]
        if job.kind == "transfer":
            argv.append(json.dumps(job.config))
        with open(job.log, "ab") as log:
            try:
                self._procs[job.id] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, env=worker_environment(self.workers))
            except OSError as exc:
                job.state, job.error, job.ended_at = "failed", f"could not start the worker: {exc}", time.time()
                return
        job.state, job.started_at = "running", time.time()

    def _reap(self) -> None:
        for job_id, proc in list(self._procs.items()):
            job = self._jobs[job_id]
            code = proc.poll()
            asked = self._cancel_sent.get(job_id)
            if code is None:
                if asked is not None and time.monotonic() - asked > self.kill_after:
                    proc.kill()  # still preparing data, where the cancel event is not yet looked at
                continue
            del self._procs[job_id]
            self._cancel_sent.pop(job_id, None)
            job.ended_at = time.time()
            if code == 0:
                job.state = "completed"
            elif code == CANCELLED_EXIT or asked is not None:
                job.state, job.error = "cancelled", "cancelled; resume it to continue from its last checkpoint"
                if code != CANCELLED_EXIT:
                    _mark_stopped(job.run_id, "cancelled", "the worker was stopped before its next checkpoint")
            elif code < 0:  # killed by a signal: its log ends wherever it was, not with an error line
                job.state, job.error = "failed", _killed(code)
                _mark_stopped(job.run_id, "failed", job.error)
            else:
                job.state, job.error = "failed", _last_line(job.log) or f"the worker exited with status {code}"
                _mark_stopped(job.run_id, "failed", job.error)


# ---------------------------------------------------------------------------------------------
# Sweeps: one job per trial, several at a time
# ---------------------------------------------------------------------------------------------
NOT_SWEPT = ("dataset", "holdout_fraction", "parent", "beta_grid")  # what the trials share or the sweep sets


def sweep_configs(base, grid: dict[str, list], holdout_fraction: float = 0.1) -> list:
    """One ``TransferConfig`` per combination of ``grid``'s values (the first key varies slowest), each
    evaluated on ``holdout_fraction`` of the training set (0: on the test split). All are validated here."""
    from transfer.training.trainer import TransferConfig, TransferError, check_names

    cfg = base if isinstance(base, TransferConfig) else TransferConfig.from_dict(dict(base))
    fields = {f.name for f in dataclasses.fields(TransferConfig)}
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise TransferError(f"cannot sweep {', '.join(unknown)}: not transfer settings; sweep any of "
                            f"{', '.join(sorted(fields - set(NOT_SWEPT)))}")
    fixed = sorted(set(grid) & set(NOT_SWEPT))
    if fixed:
        raise TransferError(f"cannot sweep {', '.join(fixed)}: every trial of a sweep shares it")
    empty = [name for name, values in grid.items() if not list(values)]
    if not grid or empty:
        raise TransferError(f"a sweep needs at least one value of each swept setting; got none for "
                            f"{', '.join(empty) or 'any setting'}")
    if not 0 <= holdout_fraction < 1:
        raise TransferError(f"the hold-out fraction must be in [0, 1); got {holdout_fraction}")
    configs = [dataclasses.replace(cfg, **dict(zip(grid, values)), holdout_fraction=holdout_fraction)
               for values in itertools.product(*grid.values())]
    for trial in configs:
        if trial.beta == "auto":
            raise TransferError("a sweep's trials need a numeric beta ('auto' is a search of its own); "
                                "sweep it with --beta 0.1,1,10")
        trial.validate()
    check_names(cfg)
    return configs


def sweep(base, grid: dict[str, list], *, parallel: int = 2, holdout_fraction: float = 0.1,
          timeout: float | None = None) -> list[dict]:
    """Train one run per combination of ``grid``'s values, ``parallel`` at a time, each in a worker process of a
    ``JobQueue``; return one row per trial, best first (completed trials by accuracy, then the others).

    ``grid`` maps ``TransferConfig`` fields to the values to try, e.g. ``{"beta": [0.1, 1, 10], "lr": [1e-3]}``.
    Accuracy is measured on a ``holdout_fraction`` of the training set, as ``beta="auto"`` does (with 0, on
    the test split: optimistic for the chosen trial). Each trial is an ordinary run in the catalog, visible in the
    app; Ctrl+C cancels the running trials, which keep their checkpoints and can be resumed.
    """
    configs = sweep_configs(base, grid, holdout_fraction)
    queue = JobQueue(workers=parallel)  # also validates ``parallel``; its workers share the cores (worker_environment)
    try:
        jobs = [queue.submit(cfg) for cfg in configs]
        done = [queue.wait(job.id, timeout) for job in jobs]
    except BaseException:
        queue.shutdown(cancel_running=True)
        raise
    queue.shutdown(cancel_running=False)
    from storage.catalog import open_catalog

    with open_catalog() as cat:
        runs = {job.run_id: cat.get_run(job.run_id) or {} for job in done}
    rows = []
    for cfg, job in zip(configs, done):
        run = runs[job.run_id]
        rows.append({"run_id": job.run_id, **{name: getattr(cfg, name) for name in grid}, "state": job.state,
                     "accuracy": run.get("test_accuracy"), "evaluated_on": "holdout" if holdout_fraction else "test",
                     "seconds": run.get("wall_seconds"), "error": job.error})
    return sorted(rows, key=lambda r: (r["accuracy"] is None, -(r["accuracy"] or 0.0)))


# The app's login is the app's business: a worker never needs it, so its environment (which a
# crashing library may dump into the job's log) does not carry it.
SECRET_VARIABLES = ("AFTZOO_APP_PASSWORD", "AFTZOO_APP_USER")


PARENT_VARIABLE = "AFTZOO_JOB_PARENT"
ORPHAN_GRACE_SECONDS = 10.0


def worker_environment(workers: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    env[PARENT_VARIABLE] = str(os.getpid())
    # Each worker's PyTorch would otherwise start one thread per core; several workers on the
    # same cores then spin against each other and train many times slower than one alone.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    # A worker shares the cores with the app (which ranks and exports in its own process) and other
    # jobs. OpenMP's threads busy-wait between parallel regions by default, and when the cores are
    # oversubscribed they spin against each other: a tiny ResNet trained 5.8x slower on 2 shared
    # cores (77 s against 13 s for the same 60 steps) than with passive waiting.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # `python -m` puts the caller's folder first on sys.path: a stray inspect.py there (a user's scratch file)
    # shadowed the standard library and broke every worker. Python 3.11+ leaves it out with this; 3.10 ignores it.
    env["PYTHONSAFEPATH"] = "1"
    return env


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this worker SIGTERM when the process that started it dies, however it
    dies (SIGTERM without cleanup, SIGKILL, the OOM killer). Otherwise the job trains on unseen,
    holding CPU and the catalog, for an app that no longer exists."""
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl here
        return
    if os.getppid() != parent:  # the parent died before the line above: act as the kernel would have
        os.kill(os.getpid(), signal.SIGTERM)


def _killed(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
    return (f"the worker was killed by {name}{why}; resume the run to continue from its last checkpoint")


def _mark_stopped(run_id: str, status: str, error: str) -> None:
    from transfer.training.trainer import mark_stopped

    try:
        mark_stopped(run_id, status, error)
    except Exception as exc:  # the catalog may be busy; the job's own state already says what happened
        print(f"jobs: could not mark run {run_id} {status}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The worker: one job, in its own process
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.jobs.queue", description="Run one transfer job.")
    ap.add_argument("kind", choices=("transfer", "resume"))
    ap.add_argument("run_id")
    ap.add_argument("config", nargs="?", help="the TransferConfig as JSON (kind 'transfer')")
    args = ap.parse_args(argv)

    cancel = threading.Event()
    parent = get_settings().job_parent  # AFTZOO_JOB_PARENT, set by worker_environment

    def on_sigterm(*_) -> None:
        cancel.set()  # training stops after its current step, with a checkpoint
        if parent and os.getppid() != parent:
            # The app that started this job is gone: nobody will wait for it, and preparing data (teacher
            # features) does not look at the cancel event. Interrupt that after a grace period.
            timer = threading.Timer(ORPHAN_GRACE_SECONDS, _thread.interrupt_main)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)
    _die_with_parent(parent)
    from transfer.training.trainer import Cancelled, resume, run

    try:
        if args.kind == "transfer":
            result = run(json.loads(args.config), run_id=args.run_id, progress=False, cancel=cancel)
        else:
            result = resume(args.run_id, progress=False, cancel=cancel)
    except Cancelled as exc:
        print(f"cancelled: {exc}", flush=True)
        return CANCELLED_EXIT
    except KeyboardInterrupt:
        print(f"cancelled: the app that started this job stopped; resume run {args.run_id} to continue", flush=True)
        return CANCELLED_EXIT
    except Exception as exc:
        print(f"error: {str(exc).strip(chr(39) + chr(34))}", flush=True)
        return 1
    print(json.dumps({"run_id": result.run_id, "status": result.status, "test_accuracy": result.test_accuracy,
                      "steps": result.steps, "wall_seconds": round(result.wall_seconds, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
