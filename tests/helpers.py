"""Helpers the tests share: the CLI as a user runs it, servers on loopback, the app in its own process,
and one short trained and exported run per modality."""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AFTZOO = str(Path(sys.executable).with_name("aftzoo"))
ARTIFACTS = REPO / "test-artifacts"  # screenshots of failed browser tests (git-ignored)
IMAGE_STUDENT = "test-export-resnet"


def run_cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run the installed ``aftzoo`` console script in a subprocess, as a user would."""
    return subprocess.run([AFTZOO, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, log_level: str = "warning"):
    """``app`` (ASGI) served by uvicorn in a thread on a free loopback port; yields the port, stops on exit."""
    from app.serve import build_server

    # The socket is bound here, not by uvicorn, so the port is known before the server starts.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    srv = build_server(app, "127.0.0.1", port, log_level=log_level, access_log=False)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def start_app(home: Path, *args: str, env: dict | None = None, timeout: float = 120):
    """Start ``aftzoo app`` on a free port in its own process; return (process, url, log path) once it listens."""
    port = free_port()
    log = home / f"app-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([AFTZOO, "app", "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "AFTZOO_HOME": str(home), **(env or {})}, cwd=REPO)
    deadline = time.monotonic() + timeout
    while "aftzoo app on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the app did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}/", log


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@functools.lru_cache(maxsize=None)
def trained_run(kind: str) -> str:
    """One short real training run per modality, shared by the export, serving and safety tests."""
    import zoo
    from transfer.training.trainer import TransferConfig, run
    from zoo.models import random_spec

    if kind == "image":
        # persist=True records the spec in the catalog, so `aftzoo export` in another process rebuilds it.
        zoo.register(random_spec("resnet", name=IMAGE_STUDENT, hub_id="test_resnet", image_size=32),
                     overwrite=True, persist=True)
        cfg = TransferConfig(dataset="digits", student=IMAGE_STUDENT, method="stl", teachers=[], steps=12, lr=1e-2,
                             batch_size=32, limit_train=192, limit_test=96)
    else:
        cfg = TransferConfig(dataset="rotten_tomatoes", student="minilm-l6", method="stl", teachers=[], steps=2,
                             lr=5e-5, batch_size=16, limit_train=32, limit_test=16)
    return run(cfg, progress=False).run_id


@functools.lru_cache(maxsize=None)
def exported(kind: str) -> dict:
    from transfer.export.onnx import export_run

    return export_run(trained_run(kind))


def tiny_student_code(name: str, *, persist: bool = False) -> str:
    """Source code that registers a tiny random ResNet student (32 px) as ``name``, for the subprocesses a
    test starts (``persist`` also records it in the catalog of the home they run in)."""
    return (f"import zoo; from zoo.models import random_spec; zoo.register(random_spec('resnet', name={name!r}, "
            f"hub_id='test_resnet', image_size=32), overwrite=True, persist={persist})")


def tiny_student(name: str, *, persist: bool = False) -> str:
    """``tiny_student_code``'s student, registered in this process; returns that code."""
    import zoo
    from zoo.models import random_spec

    zoo.register(random_spec("resnet", name=name, hub_id="test_resnet", image_size=32), overwrite=True,
                 persist=persist)
    return tiny_student_code(name, persist=persist)


def listening_port(proc: subprocess.Popen, timeout: float = 60) -> int:
    """The port an `aftzoo serve` process reports ("listening on http://127.0.0.1:PORT") on its stderr."""
    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("listening on http://127.0.0.1:"):
            return int(line.split(":")[2].split()[0])
    raise AssertionError("the server did not start:\n" + "".join(lines))


def linear_student():
    """The least a ``train_step`` student is: a module mapping a batch (B, 6) to (logits (B, 3), features (B, 4))."""
    import torch

    class LinearStudent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)

        def forward(self, x):
            phi = self.body(x)
            return self.head(phi), phi

    return LinearStudent()
