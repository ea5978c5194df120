"""The web app's endpoints through gradio_client, against ``aftzoo app`` running in its own process."""
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client(app_server):
    return gradio_client.Client(app_server["url"], verbose=False)


def frame(value) -> list[dict]:
    """A Dataframe output as records."""
    return [dict(zip(value["headers"], row)) for row in value["data"]]


def wait_for_job(client, job_id, timeout=300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {j["job"]: j for j in frame(client.predict(job_id, "this data set", "digits", api_name="/jobs")[0])}
        if jobs[job_id]["state"] not in ("queued", "running"):
            return jobs[job_id]
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s: {jobs[job_id]}")


def test_the_page_and_its_data_set_view(client):
    summary, counts, gallery, texts, zoo_table, rank_models, *_ = client.predict("digits", None,
                                                                                 api_name="/select_dataset")
    assert "1,437 for training, 360 for testing" in summary
    teachers = {r["model"]: r for r in frame(zoo_table)}
    assert teachers["efficientnet-lite0"]["on this machine"] == "yes"
    assert teachers["dinov2-vit-s14"]["on this machine"] == "no" and "AFTZOO_OFFLINE=0" in \
        teachers["dinov2-vit-s14"]["how to get it"]
    shown = gallery["value"]  # an update: value and visibility
    assert gallery["visible"] and len(shown) == 12 and {g["caption"] for g in shown} >= {str(d) for d in range(10)}
    assert texts["visible"] is False


def test_rank_transfer_export_and_classify(client, tmp_path):
    status, table, chart, history, prefill = client.predict(
        "digits", ["efficientnet-lite0", "efficientnet-lite2"], ["logme", "probe"], 200, "logme", "resnet18-small",
        api_name="/rank")
    rows = frame(table)
    assert "best:" in status and {r["model"] for r in rows} == {"efficientnet-lite0", "efficientnet-lite2"}
    assert rows[0]["logme"] >= rows[1]["logme"]
    assert f"best: **{rows[0]['model']}**" in status and f"ahead of {rows[1]['model']}" in status
    assert prefill["value"] == [rows[0]["model"]]
    assert {(r["dataset"], r["model"]) for r in frame(history)} >= {("digits", "efficientnet-lite0")}

    status, jobs, _ = client.predict("digits", "resnet18-small", True, "aft", [rows[0]["model"]], "1", 16, 1e-3,
                                     200, 100, api_name="/transfer")
    assert status.startswith("Queued job"), status
    job_id = status.split("**")[1]
    job = wait_for_job(client, job_id)
    assert job["state"] == "completed", job
    assert 0.1 < float(job["accuracy"]) <= 1.0

    runs = frame(client.predict("this data set", "digits", api_name="/runs")[0])
    run = next(r for r in runs if r["run"] == job["run"])
    assert run["method"] == "aft" and run["status"] == "completed" and run["steps"].startswith("16/")

    status, exported = client.predict(job["run"], api_name="/export")
    assert "top-1 agreement 100% (passed)" in status, status
    path = status.split("`")[1]
    assert exported["value"] == path

    # Picking the export: its zip, how to call it by its real name, and only an image box for an image student.
    snippets, download, speed_teacher, speed, image_box, text_box, *_ = client.predict(path, api_name="/pick_export")
    name = Path(path).name
    assert f"aftzoo serve {path}" in snippets and f"/v1/models/{name}/predict" in snippets
    assert f'client.infer("{name}"' in snippets and "tritonclient" in snippets
    assert '{\\"images\\": [\\"$(base64 -w0 my.png)\\"]}' in snippets and '"texts"' not in snippets
    with zipfile.ZipFile(download["value"]["path"] if isinstance(download["value"], dict) else download["value"]) as zf:
        assert {f"{name}/manifest.json", f"{name}/model.onnx"} <= set(zf.namelist())
    assert image_box["visible"] is True and text_box["visible"] is False
    _snippets_answer(snippets, path, tmp_path)
    assert speed_teacher["value"] == rows[0]["model"] and speed == ""
    image = tmp_path / "digit.png"
    Image.fromarray(np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8))).save(image)
    status, labels = client.predict(path, gradio_client.handle_file(str(image)), "", api_name="/classify")
    assert status.startswith("Top label: **"), status
    assert labels["label"] in [str(d) for d in range(10)] and len(labels["confidences"]) == 5

    speed = client.predict(path, rows[0]["model"], api_name="/compare_speed")
    assert "ms** per input" in speed and "x** the teacher's time" in speed
    assert re.search(r"Student \*\*resnet18-small\*\* \([0-9.]+[KM] parameters, [0-9.]+ MB\)", speed), speed
    assert "x** its parameters" in speed


def _snippets_answer(snippets: str, export: str, tmp_path: Path) -> None:
    """The page's curl and tritonclient snippets, run as written against a real server of the export."""
    import shutil
    import subprocess
    import sys

    from app.serve import create_app
    from tests.helpers import serve_in_thread

    shell, python = re.findall(r"```(?:bash|python)\n(.*?)```", snippets, re.S)
    Image.fromarray(np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8))).save(tmp_path / "my.png")
    with serve_in_thread(create_app([export])) as port:
        code = python.replace("localhost:8000", f"localhost:{port}")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and re.match(r"\[b'\d'", out.stdout), out.stderr[-2000:]
        if shutil.which("curl"):
            curl = shell.split("\n", 1)[1].replace("localhost:8000", f"localhost:{port}")  # the serve line aside
            out = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert '"predictions"' in out.stdout, out.stdout + out.stderr


def test_cancel_a_running_job_then_resume_it_to_the_end(client):
    # STL with a teacher still ticked and a beta set: neither is recorded (STL has no teacher term).
    status, *_ = client.predict("digits", "resnet18-small", True, "stl", ["efficientnet-lite0"], "3", 80, 1e-3, 64,
                                64, api_name="/transfer")
    job_id = status.split("**")[1]
    deadline = time.monotonic() + 120
    while True:  # cancel once it has trained a few steps
        job = {j["job"]: j for j in frame(client.predict(job_id, "this data set", "digits", api_name="/jobs")[0])}[job_id]
        if job["steps"] != "-" and int(job["steps"].split("/")[0]) >= 10:
            break
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.5)
    assert client.predict(job_id, api_name="/cancel") == f"Job **{job_id}** is stopping."
    stopped = wait_for_job(client, job_id, timeout=60)
    assert stopped["state"] == "cancelled" and "resume" in stopped["message"]
    done_steps = int(stopped["steps"].split("/")[0])
    assert 10 <= done_steps < 80

    status, picked = client.predict(job_id, api_name="/resume_job")
    assert status.startswith("Queued job") and stopped["run"] in status, status
    resumed = wait_for_job(client, picked["value"], timeout=600)
    assert resumed["state"] == "completed" and resumed["steps"] == "80/80" and resumed["run"] == stopped["run"]
    # The cancelled job no longer claims the run's steps: it says where the run went on.
    jobs = {j["job"]: j for j in frame(client.predict(job_id, "this data set", "digits", api_name="/jobs")[0])}
    assert jobs[job_id]["message"] == f"resumed in job {picked['value']}" and jobs[job_id]["steps"] == "-"
    run = next(r for r in frame(client.predict("this data set", "digits", api_name="/runs")[0])
               if r["run"] == stopped["run"])
    assert run["teachers"] == "" and run["beta"] == "-"


def test_bad_input_is_reported_in_the_page(client, tmp_path):
    status, *_ = client.predict("digits", [], ["logme"], 100, "logme", None, api_name="/rank")
    assert status.startswith("**Could not rank:**") and "at least one model" in status

    def start(method="aft", teachers=("efficientnet-lite0",), beta="1", steps=10, lr=1e-3, limit_train=0):
        return client.predict("digits", "resnet18-small", True, method, list(teachers), beta, steps, lr,
                              limit_train, 0, api_name="/transfer")[0]

    assert start(beta="lots").endswith("Teacher weight (beta) must be a number or 'auto'; got 'lots'")
    status = start(teachers=[])
    assert "tick at least one" in status and "--" not in status
    assert start(method="stl", lr=0.0).endswith("Learning rate must be a number above 0; got 0.0")
    assert start(method="stl", steps=-5).endswith("Training steps must be a whole number of at least 1; got -5")
    assert "Training examples must be a whole number of at least 0" in start(method="stl", limit_train=-3)

    assert client.predict("no-such-job", api_name="/cancel").startswith("**Could not cancel:**")
    assert "**Could not resume:**" in client.predict("no-such-run", api_name="/resume")[0]
    assert client.predict("no-such-run", api_name="/export")[0].startswith("**Could not export:**")

    status, labels = client.predict("", None, "hello", api_name="/classify")
    assert "Pick an exported student first" in status and not labels


def test_lists_are_read_when_a_page_loads_also_after_a_cli_change(client, app_server, tmp_path):
    """A data set added by the CLI shows in the picker of the next page load; a data set with no runs says
    what to do first."""
    table = tmp_path / "cli-reviews.csv"
    table.write_text("text,label\n" + "\n".join(f"{'good fun' if i % 2 else 'dull'} {i},{'pos' if i % 2 else 'neg'}"
                                                 for i in range(20)) + "\n")
    r = run_cli("add-dataset", str(table), "--name", "cli-reviews", env={"AFTZOO_HOME": str(app_server["home"])})
    assert r.returncode == 0, r.stderr
    picker, *rest = client.predict("digits", None, api_name="/page")
    assert "cli-reviews" in [c[0] if isinstance(c, (list, tuple)) else c for c in picker["choices"]]
    runs, note, *_ = client.predict("this data set", "cli-reviews", api_name="/runs")
    assert not runs["data"] and note.startswith("**No runs on this data set.**")
    out = client.predict("cli-reviews", "resnet18-small", api_name="/select_dataset")
    rank_status, student = out[6], out[10]
    assert "no ranking yet" in rank_status  # not digits' ranking, still on screen from before
    assert student["value"] != "resnet18-small"  # a text data set gets a text student


def test_the_app_binds_to_loopback_and_says_so(app_server):
    log = app_server["log"].read_text()
    assert "aftzoo app on http://127.0.0.1:" in log and "warning" not in log


@pytest.mark.slow
def test_build_a_small_model_through_the_api(client):
    import time

    build_id, status, bar, _timer = client.predict("digits", "resnet18-small", ["efficientnet-lite0"], 1,
                                                   ["stl", "kd"], 0, 2, 4, 100, 64, api_name="/build")
    assert build_id and build_id.startswith("build-digits-"), status
    deadline = time.monotonic() + 900
    while True:
        bar, status, card, zip_file, serve = client.predict(build_id, api_name="/build_status")
        if status.startswith(("Built", "**The build stopped")) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status.startswith("Built"), status
    assert "Report card: digits -> resnet18-small" in card and "int8 decision" in card
    assert zip_file.endswith(".zip") and "aftzoo serve" in serve


def test_no_traceback_in_the_app_log(app_server):
    assert "Traceback" not in app_server["log"].read_text()
