"""File safety, written once: atomic writes, durable renames, and the sweep of what dead writers left.

Every store of aftzoo (features, checkpoints, exports, users' data sets) writes the same way:
into a temporary name that carries the writer's process id, fsynced, renamed into place, and
the folder fsynced so that the rename itself survives a power cut. A reader therefore sees the
old file or the new one, never half of one; a writer killed midway leaves a temporary file that
``sweep_temporaries`` removes once its process is gone.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_name(final: Path) -> Path:
    """``.NAME.PID.tmp`` beside ``final``: hidden, and traceable to the process writing it."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def writer_pid(temporary: Path) -> int | None:
    """The process id in a name made by ``temporary_name`` (None for any other name)."""
    parts = temporary.name.rsplit(".", 2)
    return int(parts[-2]) if len(parts) == 3 and parts[-1] == "tmp" and parts[-2].isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(temporary: Path, final: Path) -> None:
    """fsync ``temporary``, rename it over ``final``, fsync the folder."""
    fsync_file(temporary)
    os.replace(temporary, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path to write ``final``'s new content to; put in place durably when the block ends.

    On any exception the temporary file is removed and ``final`` is left as it was.
    """
    tmp = temporary_name(final)
    try:
        yield tmp
        replace_durably(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(final: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``final`` through ``write(file)`` so that readers see the old content or the new, never a part."""
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        write(f)


def sweep_temporaries(folder: Path, pattern: str = ".*.tmp", *, recursive: bool = False) -> int:
    """Remove temporary files (``temporary_name``'s) under ``folder`` whose writer is gone; return how many.

    A file whose writer is this process, or another live one, is being written: it stays.
    """
    if not folder.is_dir():
        return 0
    removed = 0
    for tmp in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
        pid = writer_pid(tmp)
        if pid is not None and pid_alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
