"""What the web app's controls do: each handler reads the library, the catalog or the job queue and
returns what the page shows (``gr.update``s, strings, frames). ``app.web`` lays the pages out and
wires these to them; tables come from ``app.views`` and drawn charts from ``app.charts``.
"""
from __future__ import annotations

import re
import tempfile
from functools import lru_cache
from pathlib import Path

import gradio as gr
import pandas as pd

from app import charts, views
from storage.errors import AftzooError
from transfer.jobs.queue import JobQueue

# Errors the library raises for bad input or a missing resource: shown as one line, never a traceback.
USER_ERRORS = (AftzooError, ValueError, LookupError, RuntimeError, FileNotFoundError, TimeoutError)
# The library's messages name CLI flags; the page names its own fields instead.
FIELDS = {"--teachers": "the Teachers boxes", "--from-scratch": "'Start from random weights'",
          "--batch-size": "the batch size", "--limit-train": "Training examples", "--limit-test": "Test examples",
          "--steps": "Training steps", "--lr": "Learning rate", "--text-column": "Text column",
          "--label-column": "Label column", "--beta": "Teacher weight (beta)"}
NO_EXPORT = "Pick an exported student above: its download, how to call it, and a box for its input appear here."


def problem(what: str, exc: BaseException) -> str:
    """One line for a failed action; a KeyError's message without the quotes ``str`` adds around it."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    for flag, field in FIELDS.items():
        text = re.sub(rf"\(?{re.escape(flag)}\b\)?", lambda m, f=field: f"({f})" if m[0][0] == "(" else f, text)
    return f"**Could not {what}:** {text.strip()}"


def _whole(value, label: str, minimum: int) -> int:
    """A whole number of at least ``minimum`` from a number box, or an error naming the box."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number >= minimum and number == int(number)):
        raise ValueError(f"{label} must be a whole number of at least {minimum}; got {value!r}")
    return int(number)


@lru_cache(maxsize=8)
def _load_exported(path: Path, mtime: float):
    from transfer.serving.runtime import load_export

    return load_export(path)  # verifies every file against the manifest's checksums


def _exported(path: str):
    """The export at ``path``, only if it lies under this home's exports: a client names the folder."""
    from transfer.serving.runtime import own_export

    folder = own_export(path)
    return _load_exported(folder, (folder / "manifest.json").stat().st_mtime)


def pick_student(students: list[str], current: str | None) -> str | None:
    if current in students:
        return current
    return "resnet18-small" if "resnet18-small" in students else (students[0] if students else None)


def curves(run_id: str | None):
    loss, acc = views.curves(run_id)
    return (gr.update(value=loss if len(loss) else None, color_map=views.series_colors(loss)),
            gr.update(value=acc if len(acc) else None, color_map=views.series_colors(acc)))


def on_dataset(name, student=None):
    """Everything that depends on the data set: its view, its models, its latest ranking, cleared statuses."""
    if not name:
        return [gr.update()] * 14
    kind = views.modality(name)
    teachers, students = views.available("teacher", kind), views.available("student", kind)
    chosen = pick_student(students, student)
    ranking = views.latest_ranking(name)
    counts = views.class_counts(name)
    return (views.dataset_summary(name), gr.update(value=counts, color_map=views.series_colors(counts, "split")),
            gr.update(value=views.image_examples(name), visible=kind == "image"),
            gr.update(value=views.text_examples(name), visible=kind == "text"),
            views.zoo_table("teacher", kind), gr.update(choices=teachers, value=teachers[:2]),
            views.ranking_summary(ranking, name, latest=True), ranking, charts.score_chart(ranking, "logme"),
            gr.update(choices=teachers, value=[t for t in [views.best_teacher(ranking, chosen, teachers)] if t]),
            gr.update(choices=students, value=chosen),
            gr.update(value=views.needs_scratch(chosen) if chosen else False),
            "", "")


def on_student(name, student, shown):
    """A new student: whether it must start from random weights, and the best teacher that is not itself."""
    if not name or not student:
        return gr.update(), gr.update()
    teachers = views.available("teacher", views.modality(name))
    best = views.best_teacher(views.latest_ranking(name), student, teachers)
    keep = [t for t in (shown or []) if t != student]
    return gr.update(value=views.needs_scratch(student)), gr.update(value=keep or ([best] if best else []))


def on_method(method):
    """STL trains on labels alone: no teacher to tick, no teacher weight to set; the others offer their own grid."""
    uses_teachers = method != "stl"
    return (gr.update(interactive=uses_teachers),
            gr.update(interactive=uses_teachers, choices=views.beta_choices(method)), "")


def _bring_here(names, progress) -> None:
    """With AFTZOO_OFFLINE=0, download the chosen models not on this machine yet, with a progress bar (offline,
    the action itself says which are missing and how to get them)."""
    from storage.settings import get_settings
    from zoo.download import fetch
    from zoo.registry import resolve, weights_status

    if get_settings().offline:
        return
    for model in names:
        if model and weights_status(resolve(model)) is None:
            fetch(model, on_progress=lambda fraction, what: progress(fraction, desc=what))


def add_hub_model(hub_name, dataset, progress=gr.Progress()):
    """A model by hub name (timm:, hf:, open_clip:, hf-hub:): registered, its weights brought here, listed."""
    from zoo.download import fetch
    from zoo.registry import resolve

    try:
        if not (hub_name or "").strip():
            raise ValueError("type a model name first, e.g. timm:convnext_tiny.fb_in22k, hf:facebook/dinov2-small, "
                             "open_clip:ViT-B-32/laion2b_s34b_b79k or hf-hub:ORG/NAME")
        progress(0, desc=f"reading the config of {hub_name.strip()}")
        spec = resolve(hub_name.strip())
        source = fetch(spec, on_progress=lambda fraction, what: progress(fraction, desc=what))
    except USER_ERRORS as exc:
        return problem("add the model", exc), gr.update(), gr.update(), gr.update()
    kind = views.modality(dataset) if dataset else spec.modality
    teachers = views.available("teacher", kind)
    other = "" if spec.modality == kind else f" It is an {spec.modality} model: it is offered with {spec.modality} data."
    return (f"Added **{spec.name}** ({spec.modality}, {spec.feature_dim} features), weights from "
            f"{source.describe()}.{other}", views.zoo_table("teacher", kind),
            gr.update(choices=teachers), gr.update(choices=teachers))


def rank_teachers(name, models, chosen, limit, shown, student, progress=gr.Progress()):
    from transfer.ranking import rank

    try:
        limit = _whole(limit, "Training examples to use", 0)
        _bring_here(models or [], progress)
        progress(0, desc="loading the data set")
        frame = rank(name, list(models or []), list(chosen or []), limit=limit or None, progress=False,
                     on_progress=lambda f, what: progress(f, desc=what))
    except USER_ERRORS as exc:
        return problem("rank", exc), gr.update(), gr.update(), gr.update(), gr.update()
    table = frame[[c for c in ["model", *chosen, "n", "skipped"] if c in frame.columns]].round(4)
    best = views.best_teacher(frame, student, list(frame["model"]))
    return (views.ranking_summary(frame, name), table, charts.score_chart(frame, shown), views.ranking_history(),
            gr.update(value=[best] if best else []))


def show_runs(scope, name):
    """The Runs page and the lists that follow the runs (runs to resume and to export)."""
    data = None if scope == "all data sets" else name
    frame = views.runs_table(data)
    comparisons = views.method_comparisons(data)
    aft = frame[frame["method"].str.startswith("aft") & (frame["status"] == "completed")]
    finished = views.run_choices("completed")
    where = "on this data set" if data else "yet"
    return (frame, "" if len(frame) else f"**No runs {where}.** Rank teachers on page 2, then start a transfer "
                                         "on page 3: its run appears here while it trains.",
            comparisons, charts.comparison_chart(comparisons), views.score_vs_accuracy(data),
            gr.update(choices=list(frame["run"]), value=aft["run"].iloc[0] if len(aft) else None),
            gr.update(choices=finished),
            "" if finished else "**No finished run to export yet.** Start a transfer on page 3 and let it complete; "
                                "it appears under *Finished run*.")


def start_transfer(queue: JobQueue, name, student, scratch, method, teachers, beta, steps, lr, limit_train, limit_test,
                   progress=gr.Progress()):
    """Queue a transfer from the form; every field is checked here, each error names its field."""
    from transfer.training.trainer import TransferError

    stl = method == "stl"
    try:
        if stl:
            beta_value, teachers = 0.0, []  # STL has no teacher term: record no weight for it
        elif str(beta).strip() == "auto":
            beta_value = "auto"
        else:
            try:
                beta_value = float(beta)
            except (TypeError, ValueError):
                raise ValueError(f"Teacher weight (beta) must be a number or 'auto'; got {beta!r}") from None
        if not stl and not teachers:
            raise ValueError(f"{method.upper()} learns from teachers: tick at least one, or choose STL")
        steps = _whole(steps, "Training steps", 1)
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"Learning rate must be a number above 0; got {lr!r}")
        config = {"dataset": name, "student": student, "teachers": list(teachers), "method": method,
                  "beta": beta_value, "steps": steps, "lr": float(lr), "pretrained": not scratch,
                  "limit_train": _whole(limit_train, "Training examples", 0) or None,
                  "limit_test": _whole(limit_test, "Test examples", 0) or None,
                  "eval_every": max(1, min(100, steps // 5)), "log_every": max(1, min(10, steps // 20))}
        _bring_here([*teachers, None if scratch else student], progress)
        job = queue.submit(config)
    except (TransferError, *USER_ERRORS) as exc:
        return problem("start", exc), gr.update(), gr.update()
    return (f"Queued job **{job.id}**: run `{job.run_id}`.", views.jobs_table(queue.jobs()),
            gr.update(choices=job_choices(queue), value=job.id))


def job_choices(queue: JobQueue) -> list[tuple[str, str]]:
    return [(f"{j.id}: {j.run_id}", j.id) for j in queue.jobs()]


def job_line(queue: JobQueue, job_id) -> str:
    """What the picked job is doing now."""
    if not job_id:
        return ""
    try:
        job = queue.get(job_id)
    except LookupError:
        return ""
    row = views.jobs_table([j for j in queue.jobs() if j.run_id == job.run_id]).set_index("job").loc[job.id]
    note = f"; {row['message']}" if row["message"] else ""
    return f"Job **{job.id}** ({job.kind} of `{job.run_id}`): {job.state}, steps {row['steps']}{note}."


def run_of(queue: JobQueue, job_id) -> str | None:
    try:
        return queue.get(job_id).run_id if job_id else None
    except LookupError:
        return f"(no job {job_id!r} here)"


def resume(queue: JobQueue, run_id):
    """Queue the continuation of ``run_id`` (cancelled, failed or killed) from its last checkpoint."""
    from transfer.training.trainer import TransferError

    if not run_id:
        return "**Pick a run first.**", gr.update()
    try:
        job = queue.submit_resume(run_id)
    except (TransferError, *USER_ERRORS) as exc:
        return problem("resume", exc), gr.update()
    return (f"Queued job **{job.id}**: resume `{run_id}` (see the Transfer page).",
            gr.update(choices=job_choices(queue), value=job.id))


def do_export(run_id, progress=gr.Progress()):
    from transfer.export.onnx import export_run

    if not run_id:
        return "**Pick a finished run first.**", gr.update()
    try:
        progress(0.1, desc="exporting to ONNX and checking parity")
        summary = export_run(run_id)
    except USER_ERRORS as exc:
        return problem("export", exc), gr.update()
    return views.parity_text(summary), gr.update(choices=views.export_choices(), value=summary["path"])


def on_exported(path):
    """A picked export: its download, how to call it, the teachers to time it against, and the input box of its
    kind; the previous export's results are cleared."""
    hidden, cleared = gr.update(visible=False), ("", None)
    if not path:
        return (NO_EXPORT, gr.update(value=None, visible=False), gr.update(choices=[], value=None), "",
                hidden, hidden, *cleared)
    try:
        model = _exported(path)
    except (OSError, *USER_ERRORS) as exc:
        return (problem("open this export", exc), gr.update(value=None, visible=False), gr.update(), "",
                hidden, hidden, *cleared)
    info = {**model.describe(), "path": str(model.folder)}
    teachers = [t for t in model.manifest.get("teachers") or [] if t] or views.available("teacher", model.modality)
    archive = views.export_zip(str(model.folder), str(Path(tempfile.gettempdir()) / "aftzoo-downloads"))
    return (views.serving_snippets(info), gr.update(value=archive, visible=True),
            gr.update(choices=teachers, value=teachers[0] if teachers else None), "",
            gr.update(visible=model.modality == "image", value=None),
            gr.update(visible=model.modality == "text", value=""), *cleared)


def compare_speed(path, teacher, progress=gr.Progress()):
    from transfer.export.latency import student_vs_teacher
    from transfer.serving.runtime import own_export

    if not path or not teacher:
        return "**Export a student and pick a teacher first.**"
    try:
        progress(0.2, desc=f"timing {teacher} and the student")
        folder = own_export(path)
        return views.latency_text(student_vs_teacher(folder, teacher), views.student_size(str(folder)))
    except USER_ERRORS as exc:
        return problem("measure", exc)


def predict(path, image, text):
    if not path:
        return "**Pick an exported student first.**", None
    try:
        model = _exported(path)
        if model.modality == "image":
            if not image:
                return "**This student reads images: add one above.**", None
            item = image
        else:
            if not (text or "").strip():
                return "**This student reads texts: type one above.**", None
            item = model.parse_text(text)
        top = model.predict([item], top_k=5)[0]
    except (OSError, *USER_ERRORS) as exc:
        return problem("classify", exc), None
    return f"Top label: **{top[0]['label']}**", {t["label"]: t["probability"] for t in top}


def tick(queue: JobQueue, n_runs_outputs: int, job_id, seen, scope, name):
    """The Transfer page every two seconds: jobs, the picked job's curves and state; the job picker's choices
    when jobs came or went (another tab), and the run lists when a job finished."""
    listed = queue.jobs()
    run_id = next((j.run_id for j in listed if j.id == job_id), None)
    now = (tuple(j.id for j in listed), tuple(sorted(j.id for j in listed if j.done)))
    picks = gr.update(choices=job_choices(queue)) if now[0] != tuple(seen[0]) else gr.update()
    runs = show_runs(scope, name) if now[1] != tuple(seen[1]) else (gr.update(),) * n_runs_outputs
    return (views.jobs_table(listed), *curves(run_id), now, picks, job_line(queue, job_id), *runs)


def cancel_job(queue: JobQueue, job_id):
    if not job_id:
        return "**Pick a job first.**"
    try:
        job = queue.cancel(job_id)
    except LookupError as exc:
        return problem("cancel", exc)
    return f"Job **{job.id}** is {'stopping' if job.state == 'running' else job.state}."


def resume_job(queue: JobQueue, job_id):
    return resume(queue, run_of(queue, job_id))


def inspect_upload(path):
    """A chosen file looked at: what it holds, its columns for a table, a suggested name."""
    from zoo.userdata import inspect_upload as inspect

    hidden = gr.update(visible=False)
    if not path:
        return "", hidden, hidden, hidden, gr.update()
    try:
        info = inspect(path)
    except USER_ERRORS as exc:
        return problem("read this file", exc), hidden, hidden, hidden, gr.update()
    stem = Path(path).stem.lower().replace(" ", "-")
    suggested = "".join(c for c in stem if c.isalnum() or c in "-_")[:40] or "my-data"
    if info["kind"] == "table":
        cols = info["columns"]
        return (f"A table of {info['rows']:,} rows. Check the columns, name it, then **Add data set**.",
                gr.update(value=info["preview"], visible=True),
                gr.update(choices=cols, value=info.get("text_column"), visible=True),
                gr.update(choices=cols, value=info.get("label_column"), visible=True), suggested)
    files, skipped = info["files_per_class"], info["skipped"]
    note = f" {len(skipped)} files will be skipped (not images)." if skipped else ""
    table = pd.DataFrame({"class": list(files), "images": list(files.values())})
    return (f"Images in {len(files)} classes.{note} Name it, then **Add data set**.",
            gr.update(value=table, visible=True), hidden, hidden, suggested)


def add_dataset(path, text, label, name, progress=gr.Progress()):
    """Import the file as a data set and pick it; the picker's list is read again."""
    from zoo.userdata import import_upload

    if not path:
        return "**Choose a file first.**", gr.update()
    try:
        progress(0.1, desc="reading and checking the file")
        ds = import_upload(path, (name or "").strip(), text_column=text or None, label_column=label or None,
                           source_name=Path(path).name)
    except USER_ERRORS as exc:
        return problem("add this data set", exc), gr.update()
    warnings = ds.extra.get("warnings") or []
    note = ("\n\n" + "\n".join(f"- {w}" for w in warnings[:10])) if warnings else ""
    sizes = ", ".join(f"{len(s):,} {k}" for k, s in ds.splits.items())
    return (f"Added **{ds.name}**: {ds.num_classes} classes, {sizes}.{note}",
            gr.update(choices=views.dataset_names(), value=ds.name))

