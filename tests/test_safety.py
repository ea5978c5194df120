"""Safe loading and safe defaults: no pickled code runs, only verified exports load, no secret reaches a log.

A static pass over the source tree finds every deserialising call; behavioural tests then hand real
hostile files (a checkpoint, a feature file, a data set file, a model folder, each carrying a pickle
that would create a file if it ran) to the code paths that read them, and check that each is refused
in one sentence and that the file was never created.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from storage.features import DamagedFeatureFile, FeatureKey, FeatureStore, file_checksum
from tests.helpers import AFTZOO, REPO, run_cli
from tests.helpers import exported
from transfer.serving import runtime

SOURCES = ["app", "storage", "transfer", "zoo"]
SECRET = "hunter2-Sup3r-s3cret"


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: what a hostile file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- a static pass over the code --------------------------------------------------------------

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                else (f.id if isinstance(f, ast.Name) else None)
            if name:
                yield name, node


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return "<absent>"


def test_no_code_path_deserialises_with_pickle():
    """torch.load only with weights_only=True; np.load never with allow_pickle=True; no pickle, joblib,
    dill, marshal, shelve, pandas.read_pickle, torch.jit.load or yaml.load anywhere in the package."""
    problems, torch_loads, np_loads = [], 0, 0
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = lambda node, path=path: f"{path.relative_to(REPO)}:{node.lineno}"  # noqa: E731
            for name, node in _calls(tree):
                if name == "torch.load":
                    torch_loads += 1
                    if _kw(node, "weights_only") is not True:
                        problems.append(f"{where(node)}: torch.load without weights_only=True")
                elif name == "np.load":
                    np_loads += 1
                    if _kw(node, "allow_pickle") not in (False, "<absent>"):
                        problems.append(f"{where(node)}: np.load with allow_pickle")
                elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads",
                              "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "pd.read_pickle",
                              "cloudpickle.load", "cloudpickle.loads", "yaml.load", "yaml.unsafe_load"):
                    problems.append(f"{where(node)}: {name}")
                elif name == "jit.load" or (isinstance(node.func, ast.Attribute) and node.func.attr == "read_pickle"):
                    problems.append(f"{where(node)}: {name}")
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and
                                                             node.module else [])
                    for bad in ("dill", "joblib", "cloudpickle", "marshal", "shelve"):
                        if bad in names:
                            problems.append(f"{where(node)}: imports {bad}")
    assert not problems, "\n".join(problems)
    assert torch_loads >= 2 and np_loads >= 2  # the pass did find the loading code it checks


# -- hostile files handed to the code that reads them ---------------------------------------------

@pytest.fixture
def cancelled_run(home, monkeypatch):
    """A real run stopped at step 8 (resumable), with its checkpoint on disk; trained on one thread."""
    import zoo
    from transfer.training import trainer
    from zoo.models import random_spec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    zoo.register(random_spec("resnet", name="safety-tiny-resnet", hub_id="test_resnet", image_size=32),
                 overwrite=True, persist=True)
    stop = threading.Event()
    with pytest.raises(trainer.Cancelled):
        trainer.run(dict(dataset="digits", student="safety-tiny-resnet", method="stl", steps=24, lr=1e-2,
                         batch_size=32, limit_train=96, limit_test=48, log_every=4, eval_every=8,
                         checkpoint_every=8), run_id="safety-run", progress=False, cancel=stop,
                    on_step=lambda m: stop.set() if m["step"] >= 8 else None)
    yield "safety-run", trainer._run_dir("safety-run") / "checkpoint.pt"
    torch.set_num_threads(threads)


def test_a_checkpoint_carrying_pickled_code_is_refused_by_resume_and_export(cancelled_run, tmp_path):
    from transfer.export.onnx import ExportFailed, export_run
    from transfer.training.trainer import CheckpointError, resume

    run_id, ckpt = cancelled_run
    good = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned-by-checkpoint"
    torch.save({**good, "student": {**good["student"], "extra": Payload(marker)}}, ckpt)
    with pytest.raises(CheckpointError, match=r"holds objects, not only tensors .*\(posix\.system\).*weights_only=True "
                                              r"and never runs pickled code"):
        resume(run_id, progress=False)
    with pytest.raises(ExportFailed, match="weights_only=True"):
        export_run(run_id)
    out = run_cli("transfer", "--resume", run_id)
    assert out.returncode == 1 and "never runs pickled code" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()

    ckpt.write_bytes(b"PK\x03\x04 not really a zip")  # damaged rather than hostile
    with pytest.raises(CheckpointError, match="cannot be read .* it is damaged: delete it and start a new run"):
        resume(run_id, progress=False)
    torch.save(good, ckpt)  # the real one back: the run resumes and finishes
    assert resume(run_id, progress=False).status == "completed"


def test_a_feature_file_carrying_a_pickle_is_refused(tmp_path):
    from storage.catalog import Catalog

    marker = tmp_path / "pwned-by-features"
    with Catalog(tmp_path / "c.duckdb") as cat:
        store = FeatureStore(tmp_path / "features", cat)
        key = FeatureKey("m", "d", "train", "f" * 64, {})
        row = store.put(key, np.ones((2, 2), np.float32))
        path = store.root / row.path
        # An attacker who can write the feature folder and the catalog: a pickled array, correctly indexed.
        np.save(path, np.array([[Payload(marker), 1], [2, 3]], dtype=object), allow_pickle=True)
        cat.execute("UPDATE feature_sets SET size_bytes = ?, checksum = ? WHERE id = ?",
                    [path.stat().st_size, file_checksum(path), row.id])
        with pytest.raises(DamagedFeatureFile, match="cannot be read as a numeric array"):
            store.get(key)
    assert not marker.exists()


def test_a_data_set_file_carrying_a_pickle_is_refused(home, tmp_path):
    import io
    import zipfile

    from PIL import Image

    from zoo.datasets import load_dataset
    from zoo.userdata import DamagedDataset, import_upload

    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for c in ("cat", "dog"):
            for i in range(6):
                buf = io.BytesIO()
                Image.new("L", (8, 8), 40 * i).save(buf, "PNG")
                zf.writestr(f"{c}/{i}.png", buf.getvalue())
    import_upload(archive, "pets")
    marker = tmp_path / "pwned-by-dataset"
    target = next((home / "datasets" / "pets").glob("train_images.npy"))
    np.save(target, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    load_dataset.cache_clear()  # as a fresh process would read it
    with pytest.raises(DamagedDataset, match="Object arrays cannot be loaded when allow_pickle=False"):
        load_dataset("pets")
    assert not marker.exists()


def test_a_model_folder_carrying_a_pickle_does_not_run_it(home, tmp_path, clean_registry):
    """A user's own timm folder whose weights file is a pickle: timm loads it with weights_only=True."""
    import zoo

    folder = tmp_path / "evil-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 10,
                                                    "num_features": 64, "pretrained_cfg": {
                                                        "input_size": [3, 32, 32]}}))
    marker = tmp_path / "pwned-by-model"
    torch.save({"conv1.weight": Payload(marker)}, folder / "pytorch_model.bin")
    zoo.register("evil-model", path=folder)
    from zoo.models import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"could not load 'evil-model' from folder .*weights_only=True blocked "
                                             r"loading this checkpoint .*Unsupported globals: posix\.system"):
        zoo.extract("evil-model", "digits", limit=4, progress=False)
    assert not marker.exists()


# -- exports: only verified ones, only one's own ------------------------------------------------

@pytest.fixture(scope="module")
def export_dir():
    return Path(exported("image")["path"])


def _tampered(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    with open(dst / "classes.json", "a") as f:
        f.write(" ")
    return dst


def test_the_server_refuses_an_export_that_fails_its_checksums(export_dir, tmp_path):
    from app.serve import create_app

    bad = _tampered(export_dir, tmp_path / "bad")
    with pytest.raises(runtime.TamperedExport, match="classes.json: .* bytes, the manifest says"):
        create_app([bad])
    escaping = tmp_path / "escaping"
    shutil.copytree(export_dir, escaping)
    manifest = json.loads((escaping / "manifest.json").read_text())
    manifest["files"]["../../outside.txt"] = {"sha256": "0" * 64, "bytes": 1}
    (escaping / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(runtime.TamperedExport, match=r"\.\./\.\./outside\.txt: not a file inside the export"):
        create_app([escaping])
    out = run_cli("serve", str(bad), "--port", "0")
    assert out.returncode == 1 and "failed its checksum check" in out.stderr and "Traceback" not in out.stderr


def test_own_export_refuses_folders_outside_the_exports_root(export_dir, tmp_path):
    root = export_dir.parent
    assert runtime.own_export(export_dir, root=root) == export_dir.resolve()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(export_dir, elsewhere)  # intact, checksums fine, but not this home's
    for folder in (elsewhere, root / ".." / ".." / "x", root):
        with pytest.raises(runtime.ExportError, match="is not an export of this aftzoo home"):
            runtime.own_export(folder, root=root)
    link = root / "link-to-elsewhere"
    link.symlink_to(elsewhere)
    try:
        with pytest.raises(runtime.ExportError, match="is not an export of this aftzoo home"):
            runtime.own_export(link, root=root)
    finally:
        link.unlink()


def test_the_app_refuses_a_tampered_export_of_its_own(app_server, export_dir):
    gradio_client = pytest.importorskip("gradio_client")
    inside = Path(app_server["home"]) / "exports" / "tampered-copy"
    inside.parent.mkdir(exist_ok=True)
    _tampered(export_dir, inside)
    client = gradio_client.Client(app_server["url"], verbose=False)
    status, labels = client.predict(str(inside), None, "a text", api_name="/classify")
    assert status.startswith("**Could not classify:**") and "failed its checksum check" in status, status
    assert not labels


def test_the_app_loads_only_exports_of_its_own_home(app_server, export_dir):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(app_server["url"], verbose=False)
    status, _ = client.predict(str(export_dir), None, "a text", api_name="/classify")  # another home's export
    assert status.startswith("**Could not classify:**") and "not an export of this aftzoo home" in status, status


# -- safe defaults: loopback, a warning when exposed, no secret in any log -----------------------

def _serve_until_listening(export: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([AFTZOO, "serve", str(export), "--port", "0", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("listening on"):
            # The line comes as the socket is bound, before uvicorn runs: wait until it answers, so that the
            # SIGINT of _stop finds it serving (one sent during its start-up once left it running).
            port = int(re.search(r":(\d+) ", line).group(1))
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5).status_code == 200:
                        return proc, "".join(lines)
                except httpx.TransportError:
                    time.sleep(0.1)
            break
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return out + err


def test_the_server_binds_loopback_by_default_and_warns_when_exposed(export_dir):
    proc, shown = _serve_until_listening(export_dir, env={"AFTZOO_APP_PASSWORD": SECRET, "AFTZOO_APP_USER": "bob"})
    rest = _stop(proc)
    assert "listening on http://127.0.0.1:" in shown and "warning" not in shown
    assert SECRET not in shown + rest
    proc, shown = _serve_until_listening(export_dir, "--host", "0.0.0.0")
    _stop(proc)
    assert "warning: serving on 0.0.0.0, reachable from other machines; there is no authentication" in shown


def test_the_password_never_reaches_cli_output_or_job_logs(home, monkeypatch):
    from transfer.jobs.queue import JobQueue, worker_environment

    env = {"AFTZOO_APP_USER": "bob", "AFTZOO_APP_PASSWORD": SECRET}
    outputs = [run_cli("doctor", "--json", env=env), run_cli("runs", env=env),
               run_cli("doctor", env={**env, "AFTZOO_JOBS": "0"})]  # a bad setting next to the secret
    for out in outputs:
        assert SECRET not in out.stdout + out.stderr
    assert outputs[2].returncode == 2 and "AFTZOO_JOBS=" in outputs[2].stderr

    # A transfer job's worker process does not even carry the password in its environment.
    if not Path("/proc/self/environ").is_file():
        pytest.skip("reading a process's environment needs Linux's /proc")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert "AFTZOO_APP_PASSWORD" not in worker_environment() and "AFTZOO_HOME" in worker_environment()
    queue = JobQueue(workers=1, kill_after=2, poll=0.05)
    try:
        job = queue.submit(dict(dataset="digits", student="resnet18-small", method="stl", steps=5000,
                                pretrained=False, limit_train=64))
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and job.run_id in
                    (p / "cmdline").read_bytes().decode(errors="replace") if (p / "cmdline").exists()]
            time.sleep(0.05)
        assert pids, "the worker did not start"
        environ = Path(f"/proc/{pids[0]}/environ").read_bytes().decode(errors="replace")
        assert "AFTZOO_HOME=" in environ and SECRET not in environ and "AFTZOO_APP_PASSWORD" not in environ
        queue.cancel(job.id)
        queue.wait(job.id, timeout=60)
    finally:
        queue.shutdown(timeout=60)
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
