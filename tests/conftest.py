"""Every test runs against a throw-away AFTZOO_HOME; offline packs are shared read-only."""
from __future__ import annotations

import os
import sys
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
