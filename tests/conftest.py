"""Fixtures: every test runs against a throw-away AFTZOO_HOME; offline packs are shared read-only.

Plain helpers that tests import live in tests/helpers.py.
"""
from __future__ import annotations

import os

import pytest

from storage.settings import Settings, reset_settings
from tests.helpers import exported, start_app, stop



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


@pytest.fixture(scope="module")
def models():
    """An image and a text student, trained briefly and exported (once per session): what the server tests serve."""
    image, text = exported("image"), exported("text")
    return {"image": image["name"], "text": text["name"], "image_dir": image["path"], "text_dir": text["path"]}


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """``aftzoo app`` running in its own process on a fresh home, as a user starts it."""
    home = tmp_path_factory.mktemp("app-home")
    proc, url, log = start_app(home)
    yield {"url": url, "home": home, "log": log, "proc": proc}
    stop(proc)




@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the test item, so fixtures can see whether the test failed.
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
