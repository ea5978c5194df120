"""The app's front page, "Build a small model": ``aftzoo build`` behind one button.

The build runs in its own process (``transfer.build.process``); the page reads its status file every
couple of seconds for the progress bar and the time left, then shows the report card, a zip of the
export and the command that serves it. Reloading the page, or restarting the app, and pressing the
button again with the same settings joins or resumes the same build.
"""
from __future__ import annotations

import html
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from app import views

INTRO = """### Build a small model
Bring labelled data; get a small, fast model and a report card. aftzoo ranks the large teachers on your
data, tries plain fine-tuning (**STL**) and each chosen teacher method on a hold-out of your training set,
retrains the winner on all of it, and exports it to ONNX (int8 when that keeps the accuracy). STL is
always a candidate, so the result is never worse than fine-tuning alone on the hold-out; where the
differences are inside the noise the simpler model ships. No method is pre-judged: on this project's own
measurements (docs/evidence) AFT did not beat STL on text and everything tied on images."""
METHOD_CHOICES = ["stl", "kd", "aft", "ft", "rkd", "btune"]
USER_ERRORS = (ValueError, KeyError, RuntimeError, FileNotFoundError)


def progress_html(state: dict | None) -> str:
    """A progress bar with the stage and the estimated time left."""
    if not state:
        return "<div id='build-bar'></div>"
    frac = max(0.0, min(1.0, float(state.get("fraction") or 0.0)))
    eta = state.get("eta_seconds")
    left = "" if eta is None or state.get("done") else f" · about {eta / 60:.1f} min left"
    text = html.escape(f"{state.get('stage', '')}: {100 * frac:.0f}%{left}")
    return (f"<div id='build-bar'><progress max='100' value='{100 * frac:.0f}' style='width:100%;height:1.2em'>"
            f"</progress><div>{text} · {state.get('elapsed_seconds', 0):.0f} s so far</div></div>")


def _config(dataset, student, teachers, top_k, methods, budget, parallel, steps, limit_train, limit_test) -> dict:
    def positive(x):
        return int(x) if x else None

    return {"dataset": dataset, "student": student or None, "teachers": list(teachers) if teachers else "auto",
            "top_k": int(top_k or 1), "methods": list(methods or ["stl"]),
            "budget_minutes": float(budget) if budget else None, "parallel": positive(parallel),
            **({"steps": int(steps)} if steps else {}), "limit_train": positive(limit_train),
            "limit_test": positive(limit_test)}


def start_build(dataset, student, teachers, top_k, methods, budget, parallel, steps, limit_train, limit_test):
    from transfer.build.process import start

    try:
        build_id = start(_config(dataset, student, teachers, top_k, methods, budget, parallel, steps, limit_train,
                                 limit_test))
    except USER_ERRORS as exc:
        return (None, f"**Could not build:** {str(exc).strip(chr(39) + chr(34))}", progress_html(None),
                gr.Timer(active=False))
    return (build_id, f"Building **{build_id}** …", progress_html({"stage": "starting", "fraction": 0}),
            gr.Timer(active=True))


def _download(zip_path: str) -> str:
    """A copy in Gradio's own upload folder: Gradio serves files from there, not from AFTZOO_HOME (nor /tmp)."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="aftzoo-build-", dir=root))
    return str(shutil.copy2(zip_path, folder / Path(zip_path).name))


def poll(build_id):
    """(bar, status, card, zip, serve command) of the build, and whether to keep polling."""
    from transfer.build.flow import read_status

    if not build_id:
        return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.Timer(active=False)
    state = read_status(build_id)
    if state is None:
        return (progress_html({"stage": "starting", "fraction": 0}), f"Building **{build_id}** …", "", None, "",
                gr.Timer(active=True))
    if state.get("error"):
        return (progress_html(state), f"**The build stopped:** {state['error']}. Press *Build* again with the same "
                "settings to resume it.", "", None, "", gr.Timer(active=False))
    if not state.get("done"):
        return (progress_html(state), f"Building **{build_id}**: {state.get('message', '')}", "", None, "",
                gr.Timer(active=True))
    card = Path(state["card"]).read_text()
    return (progress_html(state), f"Built **{build_id}** in {state['elapsed_seconds'] / 60:.1f} min.", card,
            _download(state["zip"]), f"Serve it with onnxruntime (no PyTorch):\n\n```\n{state['serve_command']}\n```",
            gr.Timer(active=False))


def build_status(build_id):
    """The API's view of a build: (bar, status, card, zip, serve command)."""
    return poll(build_id)[:5]


def build_tab(dataset: gr.Dropdown) -> None:
    """The page, inside the app's Blocks; ``dataset`` is the app's shared data-set picker."""
    from transfer.build.config import DEFAULT_METHODS, DEFAULT_STUDENTS
    from transfer.build.flow import auto_teachers

    kind = views.modality(dataset.value) if dataset.value else "image"
    with gr.Tab("Build a small model", id="build"):
        gr.Markdown(INTRO)
        with gr.Row():
            student = gr.Dropdown(views.available("student", kind), value=DEFAULT_STUDENTS[kind],
                                  label="Student (the small model)", elem_id="build-student")
            methods = gr.CheckboxGroup(METHOD_CHOICES, value=list(DEFAULT_METHODS[kind]), elem_id="build-methods",
                                       label="Candidates (STL is always one)")
        teachers = gr.CheckboxGroup(auto_teachers(kind, DEFAULT_STUDENTS[kind]), elem_id="build-teachers",
                                    label="Teachers to rank (none ticked: every teacher on this machine)")
        with gr.Row():
            top_k = gr.Number(2, precision=0, minimum=1, label="Teachers kept after ranking", elem_id="build-top-k")
            budget = gr.Number(10, minimum=0, label="Budget, minutes (0: none)", elem_id="build-budget")
            parallel = gr.Number(0, precision=0, minimum=0, label="Trials at once (0: one per core, up to 4)",
                                 elem_id="build-parallel")
        with gr.Accordion("Smaller and faster (for a first look)", open=False):
            with gr.Row():
                steps = gr.Number(0, precision=0, minimum=0, label="Steps per run (0: the trainer's; the budget "
                                  "lowers it)", elem_id="build-steps")
                limit_train = gr.Number(0, precision=0, minimum=0, label="Training examples (0 = all)",
                                        elem_id="build-limit-train")
                limit_test = gr.Number(0, precision=0, minimum=0, label="Test examples (0 = all)",
                                       elem_id="build-limit-test")
        go = gr.Button("Build", variant="primary", elem_id="build-start")
        bar = gr.HTML(progress_html(None), elem_id="build-progress")
        status = gr.Markdown(elem_id="build-status")
        card = gr.Markdown(elem_id="build-card")
        with gr.Row():
            download = gr.File(label="The export (zip)", elem_id="build-zip", interactive=False)
            serve = gr.Markdown(elem_id="build-serve")
        build_id = gr.Textbox(visible=False, elem_id="build-id")  # not a State: API clients get it back
        timer = gr.Timer(2.0, active=False)
        api_poll = gr.Button(visible=False)

    def on_dataset(name):
        k = views.modality(name) if name else "image"
        students = views.available("student", k)
        return (gr.update(choices=students, value=DEFAULT_STUDENTS[k]),
                gr.update(choices=auto_teachers(k, DEFAULT_STUDENTS[k]), value=[]),
                gr.update(value=list(DEFAULT_METHODS[k])))

    dataset.change(on_dataset, dataset, [student, teachers, methods], api_name=False)
    go.click(start_build, [dataset, student, teachers, top_k, methods, budget, parallel, steps, limit_train,
                           limit_test], [build_id, status, bar, timer], api_name="build")
    outputs = [bar, status, card, download, serve]
    timer.tick(poll, build_id, [*outputs, timer], show_progress="hidden", api_name=False)
    api_poll.click(build_status, build_id, outputs, api_name="build_status")
