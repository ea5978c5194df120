"""A run's record: its catalog row, metric flushes, checkpoints, and every way it stops.

The training loop asks the recorder to log, checkpoint and finish; the recorder alone opens the catalog
(rank 0 of a multi-process job) and writes the run's folder. What it guarantees:

- metrics reach the catalog before the checkpoint that covers them, so a resume never leaves a gap;
- a checkpoint is written atomically through ``storage.files`` (old file or new, never half of one), and
  a resume removes the temporary files of a run whose process is gone first, so that the disk never holds
  more than the checkpoint and one new temporary copy of it;
- a run that stops is never left "running": its stop is written to the catalog, or, when the catalog
  cannot be written (a full disk), into a note whose space was reserved when the run opened; the next
  start of the run (``reconcile``) moves the note into the catalog, or says the process ended unrecorded;
- the run's row records its process (pid, host, start time), so that a second process does not resume a
  run that is still training.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from storage.catalog import open_catalog
from storage.files import atomic_path, pid_alive, sweep_temporaries
from storage.settings import get_settings
from transfer.training.config import CheckpointError, TransferError

# How long a run's own catalog writes wait for another process's turn (an interactive command waits
# 10 s). The app, a ranking or another job may hold the catalog for a while under load; failing a
# long run over a late metric row is worse than waiting for it.
CATALOG_WAIT = 120.0
STOP_NOTE = "stop.json"
STOP_NOTE_BYTES = 4096    # reserved when the run opens: writing the stop later needs no new disk block
ACTIVE_STATUSES = ("running", "cancelling")
_TRAINING_HERE: set[str] = set()  # the runs this process is training now


def run_dir(run_id: str) -> Path:
    return get_settings().home / "runs" / run_id


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[-200:]
        try:
            free_bytes = shutil.disk_usage(path.parent).free
        except OSError:
            free_bytes = None
        # torch's own message ("unexpected pos 768 vs 662", "enforce fail at inline_container.cc") does not say the
        # disk is full; the free space does, so say it in the operating system's words.
        if free_bytes is not None and free_bytes < 2**20 and "No space left on device" not in reason:
            reason = f"No space left on device: {reason}"
        free = "is the disk full?" if free_bytes is None else f"{free_bytes:,} bytes free on its disk"
        raise CheckpointError(f"could not write the checkpoint {path} ({reason}; {free}). Free disk space, then "
                              "resume the run") from None


def sweep_checkpoints(folder: Path, *, owner_gone: bool) -> None:
    """Remove half-written checkpoints. Once the run's own process is gone every one of them is stale, even
    one whose pid a new process has taken since; otherwise only those of dead writers."""
    if owner_gone:
        for tmp in folder.glob(".checkpoint.pt.*.tmp"):
            tmp.unlink(missing_ok=True)
    else:
        sweep_temporaries(folder, ".checkpoint.pt.*.tmp")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """A checkpoint written by this trainer, loaded with ``weights_only=True`` (no pickled code runs).

    ``TransferError`` if the file holds anything else than tensors and plain values, or is damaged.
    """
    import pickle

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = " ".join(str(exc).split())
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: ([\w. ]+)", what)
        name = next((g for g in found.groups() if g), "").replace("GLOBAL ", "").strip() if found else ""
        raise CheckpointError(
            f"the checkpoint {path} holds objects, not only tensors and plain values"
            + (f" ({name})" if name else "") + "; aftzoo loads checkpoints with weights_only=True and never runs "
            "pickled code. It was not written by aftzoo: delete it and start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); it is damaged: delete it and start a new run"
                              ) from None
    if not isinstance(state, dict) or "student" not in state:
        raise CheckpointError(f"{path} is not an aftzoo checkpoint (no student weights); start a new run")
    return state


# ---------------------------------------------------------------------------------------------
# Who trains a run, and what a run that stopped unrecorded left
# ---------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux; None elsewhere or when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _started(pid: int) -> float | None:
    """The process's start time in clock ticks since boot, which tells it from a later one with its pid."""
    fields = _stat(pid)
    return float(fields[19]) if fields and len(fields) > 19 else None


def owner() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": _started(pid)}


def owner_alive(who: dict | None) -> bool | None:
    """Whether the process a run's row names still runs: None when it cannot be told (another host, no record)."""
    if not who or who.get("host") != socket.gethostname():
        return None
    pid = int(who["pid"])
    if pid == os.getpid():
        return True
    if not pid_alive(pid):
        return False
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent (torchrun, a shell)
        return False
    return who.get("started") is None or _started(pid) in (None, who["started"])


def _read_note(folder: Path) -> dict | None:
    try:
        text = (folder / STOP_NOTE).read_bytes().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _write_note(folder: Path, note: dict | None) -> None:
    """Overwrite the reserved note in place (no new block: this works on a full disk)."""
    data = b"" if note is None else json.dumps(note).encode()[:STOP_NOTE_BYTES]
    with open(folder / STOP_NOTE, "r+b") as f:
        f.write(data.ljust(STOP_NOTE_BYTES))
        f.flush()
        os.fsync(f.fileno())


def reconcile(run_id: str, row: dict | None, *, claim: bool) -> dict | None:
    """A row still "running" whose process is gone gets the stop that process could not write (its note), or a
    failure saying it ended unrecorded. A row whose process still runs is returned as it is, or, to ``claim``
    the run (resume it), ``TransferError``."""
    if row is None or row["status"] not in ACTIVE_STATUSES:
        return row
    who = row["config"].get("owner")
    alive = owner_alive(who)
    here = who and who.get("pid") == os.getpid() and who.get("host") == socket.gethostname()
    if alive and not (here and run_id not in _TRAINING_HERE):
        if not claim:
            return row
        raise TransferError(f"run {run_id} is still running in process {who['pid']} on {who['host']}; "
                            f"stop it first (`aftzoo cancel {run_id}`), or wait for it to end")
    if alive is None and who:
        if not claim:
            return row
        raise TransferError(f"run {run_id} is {row['status']} in process {who['pid']} on {who['host']}, which this "
                            "machine cannot check; resume it there, or once it has stopped")
    if alive is None:
        return row  # a row written before runs named their process: its status is all there is
    note = _read_note(run_dir(run_id)) or {
        "status": "failed", "error": f"its process ({who['pid']} on {who['host']}) ended without recording why "
                                     "(killed, or out of memory); resume it from its last checkpoint"}
    with open_catalog(wait=CATALOG_WAIT) as cat:
        cat.update_run(run_id, status=note["status"], error=note["error"])
        row = cat.get_run(run_id)
    with contextlib.suppress(OSError):
        _write_note(run_dir(run_id), None)
    return row


# ---------------------------------------------------------------------------------------------
# A stop signal is a cancel
# ---------------------------------------------------------------------------------------------
SIGNAL_REASON = "stopped by signal"


@contextlib.contextmanager
def signals_cancel(cancel: threading.Event | None) -> Iterator[threading.Event | None]:
    """SIGTERM (``timeout``, ``docker stop``, systemd) sets the run's cancel event: it stops at a checkpoint as a
    cancel does. Only where nobody else handles SIGTERM (the job worker and torchrun's processes do)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield cancel
        return
    event = cancel or threading.Event()

    def stop(signum, _frame) -> None:
        event.reason = f"{SIGNAL_REASON} ({signal.Signals(signum).name})"
        event.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once

    signal.signal(signal.SIGTERM, stop)
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# The recorder of one run (rank 0)
# ---------------------------------------------------------------------------------------------
class Recorder:
    """Rank 0's side of one run: its row, its pending metrics, its checkpoint file and its stop."""

    def __init__(self, run_id: str, record: dict, total_steps: int, flush_seconds: float):
        self.run_id, self.record, self.total_steps = run_id, record, total_steps
        self.flush_seconds = flush_seconds
        self.folder = run_dir(run_id)
        self.checkpoint_path = self.folder / "checkpoint.pt"
        self.pending: list[tuple[int, str, float]] = []
        self.last_flush = time.monotonic()
        self.last_good = 0
        self.finished = False

    def open(self, resume: bool, fingerprint: str, restore: Callable[[dict], None]) -> dict | None:
        """Create the run's row, or take over a stopped run's: return the checkpoint resumed from (restored by
        ``restore`` before the row changes), None when the run starts at step 0."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _TRAINING_HERE.add(self.run_id)
        with open(self.folder / STOP_NOTE, "wb") as f:  # the reserve the stop is written into if the disk fills
            f.write(b" " * STOP_NOTE_BYTES)
            os.fsync(f.fileno())
        record = {**self.record, "owner": owner()}
        with open_catalog(wait=CATALOG_WAIT) as cat:
            if not resume:
                cat.create_run(self.run_id, dataset=record["dataset"], student=record["student"],
                               teachers=record["teachers"], method=record["method"], config=record,
                               total_steps=self.total_steps)
                return None
            row = reconcile(self.run_id, cat.get_run(self.run_id), claim=True)
            if row["config"].get("data_fingerprint") not in (None, fingerprint):
                raise TransferError(f"the data of {record['dataset']} changed since run {self.run_id} started "
                                    "(fingerprint mismatch); start a new run")
            sweep_checkpoints(self.folder, owner_gone=True)  # reconcile saw its process gone
            # On the CPU: the RNG state must stay there, and the other processes receive a copy of it.
            state = load_checkpoint(self.checkpoint_path, "cpu") if self.checkpoint_path.is_file() else None
            if state is not None:
                restore(state)
                self.last_good = int(state["step"])
            cat.truncate_metrics(self.run_id, self.last_good)
            cat.update_run(self.run_id, status="running", step=self.last_good, error=None,
                           config={**row["config"], "owner": record["owner"]})
            return state

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.pending.extend((step, k, v) for k, v in metrics.items())

    def flush(self, step: int, **run_fields) -> str:
        """Write pending metrics and progress; return the run's status (another party may ask to cancel)."""
        with open_catalog(wait=CATALOG_WAIT) as cat:
            cat.log_metrics(self.run_id, self.pending, step=step, **run_fields)
            status = cat.get_run(self.run_id)["status"]
        self.pending.clear()
        self.last_flush = time.monotonic()
        return status

    def flush_due(self) -> bool:
        # Opening the catalog costs tens of milliseconds: batch writes, not every logged step.
        return bool(self.pending) and time.monotonic() - self.last_flush > self.flush_seconds

    def checkpoint(self, step: int, state: dict) -> str:
        # Metrics first, then the file: a kill in between resumes from the previous checkpoint and
        # drops the metrics logged after it, so the history never has a gap.
        status = self.flush(step, checkpoint=str(self.checkpoint_path))
        try:
            save_checkpoint(self.checkpoint_path, state)
        except CheckpointError as exc:
            kept = (f"the checkpoint of step {self.last_good} is kept" if self.checkpoint_path.is_file()
                    else "no checkpoint is kept")
            raise CheckpointError(f"{exc} with `aftzoo transfer --resume {self.run_id}` ({kept})") from None
        self.last_good = step
        return status

    def finish(self, status: str, step: int, wall: float, error: str | None = None,
               accuracy: float | None = None) -> None:
        self.flush(step, status=status, error=error, test_accuracy=accuracy, wall_seconds=wall)
        self.finished = True

    def close(self) -> None:
        _TRAINING_HERE.discard(self.run_id)

    def record_stop(self, exc: BaseException) -> None:
        """Mark a run that stopped on an exception; when the catalog cannot take it (it may be what failed, on a
        full disk), write it into the reserved note, which the run's next start records."""
        if isinstance(exc, KeyboardInterrupt):
            status, error = "cancelled", f"interrupted; resume it with `aftzoo transfer --resume {self.run_id}`"
        else:
            text = " ".join(str(exc).split())
            status, error = "failed", (text if isinstance(exc, TransferError) else f"{type(exc).__name__}: {text}")
        try:
            with open_catalog(wait=2.0) as cat:
                cat.update_run(self.run_id, status=status, error=error[:2000])
            return
        except Exception:  # noqa: BLE001 - the original exception is what the caller must see
            pass
        with contextlib.suppress(OSError):
            _write_note(self.folder, {"status": status, "error": error[:3000]})
