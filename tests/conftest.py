"""Every test runs against a throw-away AFTZOO_HOME; offline packs are shared read-only."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.settings import Settings, reset_settings

REPO = Path(__file__).resolve().parents[1]
AFTZOO = str(Path(sys.executable).with_name("aftzoo"))


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory):
    # Resolve the shared packs folder from the caller's settings before the home moves.
    packs = Settings().packs_dir
    home = tmp_path_factory.mktemp("aftzoo-home")
    saved = {k: os.environ.get(k) for k in ("AFTZOO_HOME", "AFTZOO_PACKS", "AFTZOO_OFFLINE", "AFTZOO_DEVICE")}
    os.environ.update(AFTZOO_HOME=str(home), AFTZOO_PACKS=str(packs), AFTZOO_OFFLINE="1")
    os.environ.pop("AFTZOO_DEVICE", None)
    reset_settings()
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, empty AFTZOO_HOME for one test."""
    monkeypatch.setenv("AFTZOO_HOME", str(tmp_path / "home"))
    reset_settings()
    yield tmp_path / "home"
    reset_settings()


@pytest.fixture
def clean_registry():
    """Models a test registers are forgotten after it."""
    from zoo import registry

    saved = dict(registry._USER)
    yield
    registry._USER.clear()
    registry._USER.update(saved)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run the installed ``aftzoo`` console script in a subprocess, as a user would."""
    import subprocess

    return subprocess.run([AFTZOO, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@pytest.fixture(scope="module")
def models():
    """An image and a text student, trained briefly and exported (once per session): what the server tests serve."""
    from tests.test_export import exported

    image, text = exported("image"), exported("text")
    return {"image": image["name"], "text": text["name"], "image_dir": image["path"], "text_dir": text["path"]}


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
    import subprocess
    import time

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
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """``aftzoo app`` running in its own process on a fresh home, as a user starts it."""
    home = tmp_path_factory.mktemp("app-home")
    proc, url, log = start_app(home)
    yield {"url": url, "home": home, "log": log, "proc": proc}
    stop(proc)


ARTIFACTS = REPO / "test-artifacts"  # screenshots of failed browser tests (git-ignored)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the test item, so fixtures can see whether the test failed.
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
