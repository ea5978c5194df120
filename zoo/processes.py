"""Several processes, one job: the generic ``torch.distributed`` plumbing of extraction and training.

``torchrun`` (``python -m torch.distributed.run``, shipped with PyTorch) starts the processes,
runs the rendezvous and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each of them; aftzoo only reads them (``aftzoo launch`` builds the torchrun
command line). The rules every caller follows:

- rank 0 alone opens the catalog, writes checkpoints and evaluates; the other ranks learn what it
  found or decided through ``on_main`` (its result, or its exception raised again on every rank);
- every process takes the same decisions at the same steps, so that no process waits in a
  collective for a peer that has left it;
- a lost peer (killed, out of memory, a dead node) surfaces as an error within the collective
  timeout (``AFTZOO_DIST_TIMEOUT`` seconds, read through the settings), never as a hang. When one
  process fails, torchrun stops the others with SIGTERM; ``session`` turns that into ``JobStopped``
  so that they record the failure and remove their temporary files before they exit.

Single-process use (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) goes through the same functions, which
then do nothing: no process group, no collective. This module sits in zoo/ (below transfer/) so that
extraction and training share it; it imports torch only when a process group is in play.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
import pickle
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from storage.errors import AftzooError
from storage.settings import get_settings

T = TypeVar("T")
TIMEOUT_VARIABLE = "AFTZOO_DIST_TIMEOUT"
# Long enough for what one rank does while the others wait (rank 0 evaluating or merging a feature
# file, the slowest shard of an extraction finishing); short enough that a hung peer is an error
# within minutes. A peer that dies is noticed at once (its connections close), not after this.
DEFAULT_TIMEOUT = 900.0


class DistributedError(AftzooError, RuntimeError):
    """A multi-process job that cannot start or go on; the message says which process and why."""


class JobStopped(BaseException):
    """torchrun stopped this process (SIGTERM), because another process of the job failed or the job was
    interrupted. A ``BaseException``, as ``KeyboardInterrupt`` is: it is an order to stop, not an error that a
    broad ``except Exception`` may swallow."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job: rank ``rank`` of ``world_size``, device ``local_rank`` of its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env, name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DistributedError(f"{name} must be an integer >= {minimum} (torchrun sets it); got {raw!r}")
    return value


def environment(env=None) -> Context:
    """The context torchrun's variables describe (a single process when they are absent)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1, 1)
    rank = _env_int(env, "RANK", 0, 0)
    local = _env_int(env, "LOCAL_RANK", 0, 0)
    if rank >= world:
        raise DistributedError(f"RANK must be below WORLD_SIZE={world}; got RANK={rank}")
    return Context(rank, world, local)


def timeout() -> float:
    """Seconds a collective waits for a peer before failing (``AFTZOO_DIST_TIMEOUT``, default 900)."""
    raw = get_settings().dist_timeout
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise DistributedError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0; got {raw!r}")
    return value


def backend() -> str:
    """NCCL between GPUs, gloo between CPU processes (the device is ``AFTZOO_DEVICE``'s, auto by default)."""
    from storage.settings import resolve_device

    return "nccl" if resolve_device() == "cuda" else "gloo"


def _dist():
    """``torch.distributed``, imported on first need (a single-process extraction never imports torch for it)."""
    import torch.distributed as dist

    return dist


def joined() -> bool:
    """Whether this process is in a process group (without importing torch when nothing imported it yet)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def current() -> Context:
    """This process's context: from the process group when there is one, else a single process."""
    if not joined():
        return Context()
    dist = _dist()
    return Context(dist.get_rank(), dist.get_world_size(), environment().local_rank)


def init() -> Context:
    """Join the job torchrun's variables describe (once; later calls return the same context).

    With CUDA each process takes the GPU of its ``LOCAL_RANK``, so that ``"cuda"`` means its own device.
    """
    ctx = environment()
    dist = _dist()
    if not ctx.active or dist.is_initialized():
        return current() if ctx.active else ctx
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(f"WORLD_SIZE={ctx.world_size} but {name} is not set: start the processes with "
                                   "`aftzoo launch` (or torchrun), which sets it")
    if backend() == "nccl":
        import torch

        if ctx.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={ctx.local_rank} but this node has {torch.cuda.device_count()} "
                                   "GPU(s): start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(ctx.local_rank)
    seconds = timeout()
    try:
        dist.init_process_group(backend(), timeout=datetime.timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"process {ctx.rank} of {ctx.world_size} could not join the job at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {seconds:g} s "
                               f"({backend_reason(exc)})") from None
    return current()


def shutdown() -> None:
    if joined():
        _dist().destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[Context]:
    """Join the job for the duration of a ``with`` block; SIGTERM from torchrun raises ``JobStopped`` inside it."""
    ctx = init()
    if not ctx.active:
        yield ctx
        return

    def stop(*_) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the clean-up it starts must run to its end
        raise JobStopped(f"torchrun stopped process {ctx.rank} of {ctx.world_size} (SIGTERM): another process of "
                         "the job failed or the job was interrupted")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield ctx
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving: torchrun's stop must not cut the error report short
        shutdown()
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold torchrun's SIGTERM off for a ``with`` block: a process recording why the job failed (another error
    came first) must write that record whole; it exits right after."""
    if not current().active or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a single process keeps its own SIGTERM meaning
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# Collectives: each is a no-op in a single process
# ---------------------------------------------------------------------------------------------
def backend_reason(exc: BaseException) -> str:
    """What a backend error says, without gloo's source location and advice ("[/.../pair.cc:545] Read error
    [10.0.0.2]:3407: Connection reset by peer. This is typically caused by...")."""
    text = re.sub(r"\[/[^\]]*\]\s*", "", " ".join(str(exc).split()))
    return text.split(". This is typically")[0][:240]


# What gloo and NCCL put in the RuntimeError of a collective whose peer died or hung ("Connection reset by
# peer", "Timed out waiting 60000ms for recv", NCCL's watchdog timeout): all name the backend or the connection.
_LOST_WORDS = ("gloo", "nccl", "connection reset", "connection closed")


def lost_peer(exc: BaseException) -> str | None:
    """A sentence for an exception that means the job lost a process, or None for any other exception.

    Collectives report a peer that died or hung as a ``RuntimeError`` from the backend; an error of the
    model or the data is left alone.
    """
    if isinstance(exc, JobStopped):
        return str(exc)
    dist = sys.modules.get("torch.distributed")
    if isinstance(exc, RuntimeError) and (isinstance(exc, getattr(dist, "DistError", ()))
                                          or any(w in str(exc).lower() for w in _LOST_WORDS)):
        ctx = current()
        return (f"process {ctx.rank} of {ctx.world_size} lost contact with another process of the job, which "
                f"died or stopped answering ({backend_reason(exc)})")
    return None


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not current().active:
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises its exception.

    How rank 0's work with the catalog (and its failures) reaches the others, which must not
    open the catalog and must not wait in a collective for a rank 0 that has failed.
    """
    ctx = current()
    if not ctx.active:
        return fn()
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:
            broadcast((False, _portable(exc)))
            raise
        broadcast((True, result))
        return result
    ok, value = broadcast(None)
    if not ok:
        raise value
    return value


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (how it travels to the other ranks), else the same message as a
    ``DistributedError``: an exception that cannot be sent would leave the other ranks waiting."""
    try:
        pickle.dumps(exc)
        copy.deepcopy(exc)  # rebuilt from its reduce tuple as unpickling would, without unpickling anything
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return DistributedError(f"{type(exc).__name__}: {exc}")


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any of them (how all processes stop at the same step)."""
    if not current().active:
        return flag
    import torch

    dist = _dist()
    t = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(t):
    """The sum of tensor ``t`` over the ranks (a copy; ``t`` itself in a single process)."""
    if not current().active:
        return t
    t = t.detach().clone()
    _dist().all_reduce(t)
    return t


def shard(n: int, ctx: Context | None = None) -> slice:
    """This rank's contiguous part of ``n`` items: sizes differ by at most one, lower ranks take the extra."""
    ctx = ctx or current()
    size, extra = divmod(n, ctx.world_size)
    start = ctx.rank * size + min(ctx.rank, extra)
    return slice(start, start + size + (ctx.rank < extra))


def shard_sizes(n: int, world_size: int) -> list[int]:
    return [n // world_size + (r < n % world_size) for r in range(world_size)]


def device():
    """Where a collective's tensors live: NCCL only moves CUDA tensors; gloo moves CPU ones."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")


_device = device


def require_joined(what: str, error: type[Exception] = DistributedError) -> Context:
    """This process's context; ``error`` if torchrun started it as one of several but it has not joined their
    process group (each would then do the whole ``what`` and race the others)."""
    if joined():
        return current()
    world = os.environ.get("WORLD_SIZE", "1")  # torchrun's variable, not an aftzoo setting
    if world.isdigit() and int(world) > 1:
        raise error(f"this process is one of {world} started by torchrun (WORLD_SIZE={world}) but has not joined "
                    f"their process group, so each would {what}: start them with `aftzoo launch`, or call "
                    "zoo.processes.init() first")
    return Context()
