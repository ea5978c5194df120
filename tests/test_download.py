"""Downloads from the hub with progress (``AFTZOO_OFFLINE=0``): the CLI, the Python API and the app.

The hub is ``tests.local_hub``: real HTTP on 127.0.0.1 serving a tiny DINOv2 repo from a folder,
reached through ``HF_ENDPOINT`` as a user would reach a mirror. Nothing touches the network.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, run_cli, start_app, stop
from tests.local_hub import LocalHub, save_tiny_dinov2
from zoo.download import files_to_fetch

NAME = "hf:tiny-org/dinov2-served"
DECOYS = ("flax_model.msgpack", "onnx/model.onnx", "pytorch_model.bin", "README.md")
DELAY = 0.4  # seconds before each file's body: several progress reports per fetch


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-repos")
    repo = root / "tiny-org" / "dinov2-served"
    save_tiny_dinov2(repo)
    for decoy in DECOYS:  # other formats of the same weights: never fetched when safetensors are there
        (repo / decoy).parent.mkdir(exist_ok=True)
        (repo / decoy).write_bytes(b"not for aftzoo")
    with LocalHub(root, delay=DELAY) as served:
        yield served


def online(hub, tmp_path) -> dict:
    """A fresh home and Hugging Face cache, downloads on, the hub at ``hub.url``."""
    return {"AFTZOO_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
            "HF_ENDPOINT": hub.url, "AFTZOO_OFFLINE": "0", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}


def test_the_files_fetched_are_configs_and_one_weights_format():
    repo = {"config.json": 1, "model.safetensors": 9, "pytorch_model.bin": 9, "tf_model.h5": 9, "README.md": 1,
            "onnx/model.onnx": 9, "tokenizer.json": 2, "vocab.txt": 2, "1_Pooling/config.json": 1, "spiece.model": 3}
    assert files_to_fetch(repo) == ["1_Pooling/config.json", "config.json", "model.safetensors", "spiece.model",
                                    "tokenizer.json", "vocab.txt"]
    assert files_to_fetch({"config.json": 1, "pytorch_model.bin": 9, "training_args.bin": 1}) == [
        "config.json", "pytorch_model.bin"]


def test_fetch_reports_bytes_then_the_model_loads_offline(hub, tmp_path):
    env = {**os.environ, **online(hub, tmp_path)}
    script = ("import json, zoo\n"
              f"source = zoo.fetch({NAME!r}, on_progress=lambda f, what: print(json.dumps([f, what]), flush=True))\n"
              "print(json.dumps(['source', source.kind]))\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[-1] == ["source", "cache"]
    fractions = [f for f, what in events[:-1] if isinstance(f, float)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) >= 4
    assert any("MB of" in what for _, what in events[:-1])
    fetched = [r.split("/resolve/main/")[1] for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(fetched)
    assert not set(fetched) & set(DECOYS)

    offline = {**env, "AFTZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    listed = run_cli("models", "--pattern", "dinov2-served", "--json", env=offline)
    assert [r["weights"] for r in json.loads(listed.stdout)] == ["cache"], listed.stderr
    result = run_cli("extract", "-m", NAME, "-d", "digits", "--limit", "8", "--json", env=offline)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["shape"] == [8, 32]


def test_cli_fetch_and_its_errors_in_one_line(hub, tmp_path):
    env = online(hub, tmp_path)
    out = run_cli("models", "--fetch", NAME, env=env)
    assert out.returncode == 0, out.stderr
    assert f"{NAME}: on this machine (local cache" in out.stdout
    asked = len(hub.requests)
    again = run_cli("models", "--fetch", NAME, env=env)  # already here: nothing asked of the hub again
    assert again.returncode == 0 and "local cache" in again.stdout and len(hub.requests) == asked
    for name, mode, says in [("hf:tiny-org/absent", "1", "`hf download tiny-org/absent`"),
                             ("hf:tiny-org/absent", "0", "has no model repo tiny-org/absent"),
                             ("timm:resnet18.a1_in1k", "0", "has no repo timm/resnet18.a1_in1k")]:
        bad = run_cli("models", "--fetch", name, env={**env, "AFTZOO_OFFLINE": mode, "HF_HUB_OFFLINE": mode})
        assert bad.returncode != 0 and says in bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_the_app_adds_a_hub_model_with_a_progress_bar(hub, tmp_path):
    """Teachers page, downloads on: a hub name typed, a progress bar while it downloads, then a teacher to tick."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_app_browser import CHROMIUM, FLAGS

    env = online(hub, tmp_path)
    (tmp_path / "home").mkdir()
    proc, url, _ = start_app(tmp_path / "home", env=env)
    hub.delay = 2.0  # each file takes 2 s: the bar stays up long enough to be seen on a loaded machine
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("tab", name="2. Teachers").click()
            ranked = page.locator("#rank-models")
            sync_api.expect(ranked).to_contain_text("dinov2-vit-s14")  # not here, but downloads are on
            page.locator("#hub-name textarea, #hub-name input").first.fill(NAME)
            page.locator("#hub-add").click()
            sync_api.expect(page.locator("#hub-status")).to_contain_text("downloading", timeout=60_000)
            sync_api.expect(page.locator("#hub-status")).to_contain_text("Added", timeout=120_000)
            sync_api.expect(ranked).to_contain_text("hf-tiny-org--dinov2-served")
            browser.close()
    finally:
        hub.delay = DELAY
        stop(proc)
