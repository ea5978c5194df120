"""The web app: a thin Gradio layer over the library, the catalog and the job queue.

    aftzoo app [--host 127.0.0.1] [--port 7860]

Five pages follow the path of a user: pick or upload data, rank teachers, launch
transfers (background jobs in their own processes), compare runs, export a student
and try it. Tables and plot data come from ``app.views``; the work is done by the
library (``zoo``, ``transfer``); every result lives in the catalog, so the CLI and the
app see the same runs.
"""
from __future__ import annotations

import atexit
import sys
from functools import lru_cache
from pathlib import Path

import gradio as gr
import pandas as pd

from app import views
from storage.settings import get_settings
from transfer.jobs.queue import JobQueue

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_DATASET = "digits"
BETAS = ["auto", "0.1", "0.3", "1", "3", "10", "30", "100"]
METRICS = ["logme", "leep", "nce", "hscore", "probe"]
INTRO = """# aftzoo
Make a small, fast model for your own task from large pre-trained ones. **1.** Pick a data set or upload
yours. **2.** Rank the large *teacher* models: which of them already knows most about your data.
**3.** Train a small *student* with their help (Adaptive Feature Transfer). **4.** Compare the runs.
**5.** Export the student and try it."""
CSS = ".status p { margin: 0.2em 0; } footer { display: none !important; }"
# Errors the library raises for bad input or a missing resource: shown as one line, never a traceback.
USER_ERRORS = (ValueError, KeyError, RuntimeError, FileNotFoundError, TimeoutError)


def problem(what: str, exc: BaseException) -> str:
    return f"**Could not {what}:** {str(exc).strip(chr(39) + chr(34))}"


def _none_if_zero(value) -> int | None:
    return int(value) if value else None


def score_chart(table: pd.DataFrame, metric: str):
    """One score per teacher as horizontal bars (matplotlib: scores may be negative, and the bars
    must start at zero, which Gradio's own bar plot does not keep in view)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    long = views.ranking_long(table, [metric]).sort_values("score")
    fig = Figure(figsize=(6, 0.6 + 0.45 * max(len(long), 1)), layout="constrained")
    ax = fig.add_subplot()
    if long.empty:
        ax.text(0.5, 0.5, "no scores yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    bars = ax.barh(long["model"], long["score"], color="#6366f1")
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_title("Scores by teacher", loc="left", fontsize=10)
    ax.set_xlabel(views.METRIC_LABELS.get(metric, metric) + " (higher is better)")
    ax.margins(x=0.2)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


@lru_cache(maxsize=8)
def _load_exported(path: Path, mtime: float):
    from transfer.serving.runtime import load_export

    return load_export(path)  # verifies every file against the manifest's checksums


def _exported(path: str):
    """The export at ``path``, only if it lies under this home's exports: a client names the folder."""
    from transfer.serving.runtime import own_export

    folder = own_export(path)
    return _load_exported(folder, (folder / "manifest.json").stat().st_mtime)


def build(queue: JobQueue) -> gr.Blocks:
    names = views.dataset_names()
    first = DEFAULT_DATASET if DEFAULT_DATASET in names else (names[0] if names else None)
    kind = views.modality(first) if first else "image"
    # Choices known at build time: API clients that skip the page's load event are checked against these.
    first_teachers, first_students = views.available("teacher", kind), views.available("student", kind)

    with gr.Blocks(title="aftzoo") as demo:
        gr.Markdown(INTRO)
        dataset = gr.Dropdown(names, value=first, label="Data set", info="Every page works on this data set.",
                              elem_id="dataset")

        from app.build_page import build_tab  # the front page: the whole flow behind one button
        build_tab(dataset)

        # -- 1. Data -------------------------------------------------------------------------
        with gr.Tab("1. Data", id="data"):
            summary = gr.Markdown(elem_id="data-summary")
            with gr.Row():
                counts = gr.BarPlot(x="class", y="examples", color="split", label="Examples per class",
                                    x_label_angle=-45, height=260, scale=1)
                gallery = gr.Gallery(label="Examples", columns=6, height=260, object_fit="contain", scale=1,
                                     allow_preview=False)
                texts = gr.Dataframe(label="Examples", visible=False, wrap=True, max_height=260, interactive=False)
            with gr.Accordion("Add your own data", open=False, elem_id="upload-section"):
                gr.Markdown("A **table** (CSV, JSONL or Parquet) with a text column and a label column, or a "
                            "**.zip of image folders**, one folder per class (optionally inside `train/` and "
                            "`test/`). Without a given split, 20% of the examples are kept for testing.")
                upload = gr.File(label="File to add", file_types=[".csv", ".jsonl", ".parquet", ".zip"],
                                 elem_id="upload")
                upload_status = gr.Markdown(elem_classes="status", elem_id="upload-status")
                upload_preview = gr.Dataframe(label="First rows", visible=False, interactive=False, max_height=240)
                with gr.Row():
                    text_column = gr.Dropdown(label="Text column", visible=False, elem_id="text-column")
                    label_column = gr.Dropdown(label="Label column", visible=False, elem_id="label-column")
                    new_name = gr.Textbox(label="Name for the data set", info="lower-case letters, digits, - and _",
                                          elem_id="new-name")
                add = gr.Button("Add data set", variant="primary", elem_id="add-dataset")

        # -- 2. Teachers ---------------------------------------------------------------------
        with gr.Tab("2. Teachers", id="teachers"):
            gr.Markdown("The zoo of large pre-trained models. Models not on this machine show how to get them. "
                        "Ranking scores how well each model's features fit your labels, without training: "
                        "higher is better.")
            zoo_table = gr.Dataframe(label="Teacher models for this kind of data", interactive=False,
                                     max_height=300, wrap=True,
                                     column_widths=["15%", "11%", "6%", "8%", "7%", "7%", "46%"])
            with gr.Row():
                rank_models = gr.CheckboxGroup(first_teachers, label="Teachers to rank (only those on this machine)",
                                               elem_id="rank-models", scale=2)
                metrics = gr.CheckboxGroup([(views.METRIC_LABELS[m], m) for m in METRICS], value=["logme", "probe"],
                                           label="Scores", elem_id="rank-metrics", scale=2)
                rank_limit = gr.Number(500, precision=0, minimum=0, label="Training examples to use (0 = all)",
                                       elem_id="rank-limit", scale=1)
            rank_button = gr.Button("Rank teachers", variant="primary", elem_id="rank")
            rank_status = gr.Markdown(elem_classes="status", elem_id="rank-status")
            with gr.Row():
                rank_table = gr.Dataframe(pd.DataFrame(columns=["model", "logme", "probe", "n"]), scale=1,
                                          label="Scores (best first)", interactive=False, elem_id="rank-table")
                rank_chart = gr.Plot(label="Scores by teacher", show_label=False, scale=1)
            chart_metric = gr.Radio([(views.METRIC_LABELS[m], m) for m in METRICS], value="logme",
                                    label="Score shown in the chart")
            rank_history = gr.Dataframe(label="Earlier rankings, all data sets (latest score of each model)",
                                        interactive=False, max_height=300)

        # -- 3. Transfer ---------------------------------------------------------------------
        with gr.Tab("3. Transfer", id="transfer"):
            gr.Markdown("Train a small student on your labels while it learns the teachers' most useful "
                        "features. Jobs run in the background, one after another; you can keep using the page.")
            with gr.Row():
                student = gr.Dropdown(first_students, label="Student (the small model)", elem_id="student")
                scratch = gr.Checkbox(label="Start from random weights", elem_id="scratch",
                                      info="Needed for students without pre-trained weights on this machine.")
                method = gr.Dropdown([(label, m) for m, label in views.METHOD_LABELS.items()], value="aft",
                                     label="Method", elem_id="method")
            teachers = gr.CheckboxGroup(first_teachers, label="Teachers (pre-filled with the best ranked)",
                                        elem_id="teachers")
            with gr.Row():
                beta = gr.Dropdown(BETAS, value="1", allow_custom_value=True, elem_id="beta",
                                   label="Teacher weight (beta)",
                                   info="How strongly the teachers guide the student; 'auto' tries several on "
                                        "a 10% hold-out")
                steps = gr.Number(300, precision=0, minimum=1, label="Training steps", elem_id="steps")
                lr = gr.Number(1e-3, minimum=0, label="Learning rate", elem_id="lr")
                limit_train = gr.Number(0, precision=0, minimum=0, label="Training examples (0 = all)",
                                        elem_id="limit-train")
                limit_test = gr.Number(0, precision=0, minimum=0, label="Test examples (0 = all)",
                                       elem_id="limit-test")
            launch = gr.Button("Start transfer", variant="primary", elem_id="launch")
            launch_status = gr.Markdown(elem_classes="status", elem_id="launch-status")
            jobs = gr.Dataframe(views.jobs_table([]), label="Jobs (newest first)", interactive=False, elem_id="jobs",
                                max_height=260)
            finished = gr.State(())  # ids of the finished jobs this page has seen: new ones refresh the runs
            with gr.Row():
                job_pick = gr.Dropdown(label="Show job", elem_id="job-pick", allow_custom_value=True, scale=3)
                cancel = gr.Button("Cancel job", elem_id="cancel", scale=1)
                resume_job = gr.Button("Resume job", elem_id="resume-job", scale=1)
            with gr.Row():
                loss_plot = gr.LinePlot(views.typed(**views.CURVE), x="step", y="value", color="series",
                                        label="Loss", height=260)
                acc_plot = gr.LinePlot(views.typed(**views.CURVE), x="step", y="value", color="series",
                                       label="Accuracy", height=260, y_lim=[0, 1])
            timer = gr.Timer(2.0)

        # -- 4. Runs -------------------------------------------------------------------------
        with gr.Tab("4. Runs", id="runs"):
            with gr.Row():
                runs_scope = gr.Radio(["this data set", "all data sets"], value="this data set", label="Show runs of")
                refresh = gr.Button("Refresh", elem_id="refresh-runs")
            runs = gr.Dataframe(label="Transfer runs (newest first)", interactive=False, elem_id="runs",
                                max_height=320, wrap=True)
            with gr.Row():
                by_method = gr.BarPlot(views.typed(**views.BY_METHOD), x="method", y="accuracy", color="data",
                                       label="Test accuracy by method", height=260, y_lim=[0, 1])
                vs_score = gr.ScatterPlot(views.typed(**views.SCORE_VS_ACCURACY), x="score", y="accuracy",
                                          color="teacher", height=260,
                                          label="Teacher's LogME score against the accuracy its student reached")
            with gr.Row():
                weights_run = gr.Dropdown(label="Run", elem_id="weights-run", allow_custom_value=True, scale=2)
                resume = gr.Button("Resume this run", elem_id="resume", scale=1)
            runs_status = gr.Markdown(elem_classes="status", elem_id="runs-status")
            weights = gr.BarPlot(views.typed(**views.WEIGHTS), x="teacher", y="mean weight", color="teacher", y_lim=[0, 1],
                                 height=240, label="AFT's learned weight on each teacher's features (mean)")

        # -- 5. Export and try ---------------------------------------------------------------
        with gr.Tab("5. Export and try", id="export"):
            gr.Markdown("Export a finished run's student to ONNX; the export is checked against PyTorch and "
                        "runs with onnxruntime alone.")
            with gr.Row():
                export_run = gr.Dropdown(label="Finished run", elem_id="export-run", allow_custom_value=True, scale=3)
                export_button = gr.Button("Export student", variant="primary", elem_id="export", scale=1)
            export_status = gr.Markdown(elem_classes="status", elem_id="export-status")
            with gr.Row():
                speed_teacher = gr.Dropdown(label="Teacher to compare with", elem_id="speed-teacher",
                                            allow_custom_value=True, scale=3)
                speed_button = gr.Button("Compare speed", elem_id="speed", scale=1)
            speed_status = gr.Markdown(elem_classes="status", elem_id="speed-status")
            gr.Markdown("### Try an exported student")
            exported = gr.Dropdown(label="Exported student", elem_id="exported", allow_custom_value=True)
            with gr.Row():
                try_image = gr.Image(type="filepath", label="An image", sources=["upload", "clipboard"],
                                     elem_id="try-image", height=220)
                try_text = gr.Textbox(label="Or a text", lines=4, elem_id="try-text")
            classify = gr.Button("Classify", variant="primary", elem_id="classify")
            try_status = gr.Markdown(elem_classes="status", elem_id="try-status")
            labels = gr.Label(num_top_classes=5, label="Top labels", elem_id="labels")

        # -- behaviour ------------------------------------------------------------------------
        def on_dataset(name):
            if not name:
                return [gr.update()] * 10
            kind = views.modality(name)
            available = views.available("teacher", kind)
            students = views.available("student", kind)
            chosen = "resnet18-small" if "resnet18-small" in students else (students[0] if students else None)
            return (views.dataset_summary(name), views.class_counts(name),
                    gr.update(value=views.image_examples(name), visible=kind == "image"),
                    gr.update(value=views.text_examples(name), visible=kind == "text"),
                    views.zoo_table("teacher", kind),
                    gr.update(choices=available, value=available[:2]),
                    gr.update(choices=available, value=available[:1]),
                    gr.update(choices=students, value=chosen),
                    *on_student(chosen))

        def on_student(name):
            if not name:
                return gr.update(value=False), gr.update()
            scratch_needed = views.needs_scratch(name)
            return gr.update(value=scratch_needed), gr.update(value=1e-3 if scratch_needed else 1e-4)

        def rank_teachers(name, models, chosen, limit, shown, progress=gr.Progress()):
            from transfer.ranking import rank

            try:
                progress(0, desc="starting")
                frame = rank(name, list(models or []), list(chosen or []), limit=_none_if_zero(limit),
                             progress=False, on_progress=lambda f, what: progress(f, desc=what))
            except USER_ERRORS as exc:
                return problem("rank", exc), gr.update(), gr.update(), gr.update(), gr.update()
            cols = [c for c in ["model", *chosen, "n", "skipped"] if c in frame.columns]
            table = frame[cols].round(4)
            best = list(frame["model"])
            return (f"Ranked {len(frame)} teachers on {frame['n'].iloc[0]:,} examples of **{name}**; best: "
                    f"**{best[0]}**.", table, score_chart(frame, shown), views.ranking_history(),
                    gr.update(value=best[:1]))

        def start(name, student_, scratch_, method_, teachers_, beta_, steps_, lr_, limit_train_, limit_test_):
            from transfer.training.trainer import TransferError

            try:
                beta_value = beta_ if str(beta_).strip() == "auto" else float(beta_)
            except (TypeError, ValueError):
                return (problem("start", ValueError(f"teacher weight must be a number or 'auto'; got {beta_!r}")),
                        gr.update(), gr.update())
            config = {"dataset": name, "student": student_, "teachers": [] if method_ == "stl" else
                      list(teachers_ or []), "method": method_, "beta": beta_value, "steps": int(steps_ or 0),
                      "lr": float(lr_ or 0), "pretrained": not scratch_, "limit_train": _none_if_zero(limit_train_),
                      "limit_test": _none_if_zero(limit_test_), "eval_every": max(1, min(100, int(steps_ or 1) // 5)),
                      "log_every": max(1, min(10, int(steps_ or 1) // 20))}
            try:
                job = queue.submit(config)
            except (TransferError, *USER_ERRORS) as exc:
                return problem("start", exc), gr.update(), gr.update()
            return (f"Queued job **{job.id}**: run `{job.run_id}`.", views.jobs_table(queue.jobs()),
                    gr.update(choices=_job_choices(), value=job.id))

        def _job_choices():
            return [(f"{j.id}: {j.run_id}", j.id) for j in queue.jobs()]

        def tick(job_id, seen, scope, name):
            listed = queue.jobs()
            run_id = next((j.run_id for j in listed if j.id == job_id), None)
            loss, acc = views.curves(run_id)
            done = tuple(sorted(j.id for j in listed if j.done))
            runs_update = show_runs(scope, name) if done != seen else (gr.update(),) * 5
            return views.jobs_table(listed), loss, acc, done, *runs_update

        def cancel_job(job_id):
            if not job_id:
                return "**Pick a job first.**"
            try:
                job = queue.cancel(job_id)
            except KeyError as exc:
                return problem("cancel", exc)
            return f"Job **{job.id}** is {'stopping' if job.state == 'running' else job.state}."

        def show_runs(scope, name):
            frame = views.runs_table(None if scope == "all data sets" else name)
            data = None if scope == "all data sets" else name
            aft = frame[frame["method"].str.startswith("aft") & (frame["status"] == "completed")]
            return (frame, views.accuracy_by_method(data), views.score_vs_accuracy(data),
                    gr.update(choices=list(frame["run"]), value=aft["run"].iloc[0] if len(aft) else None),
                    gr.update(choices=views.run_choices("completed")))

        def resume_run(run_id):
            from transfer.training.trainer import TransferError

            if not run_id:
                return "**Pick a run first.**", gr.update()
            try:
                job = queue.submit_resume(run_id)
            except (TransferError, *USER_ERRORS) as exc:
                return problem("resume", exc), gr.update()
            return (f"Queued job **{job.id}**: resume `{run_id}` (see the Transfer page).",
                    gr.update(choices=_job_choices(), value=job.id))

        def resume_from_job(job_id):
            try:
                run_id = queue.get(job_id).run_id if job_id else None
            except KeyError as exc:
                return problem("resume", exc), gr.update()
            return resume_run(run_id)

        def do_export(run_id, progress=gr.Progress()):
            from transfer.export.onnx import export_run as export

            if not run_id:
                return "**Pick a finished run first.**", gr.update(), gr.update()
            try:
                progress(0.1, desc="exporting to ONNX and checking parity")
                summary = export(run_id)
            except USER_ERRORS as exc:
                return problem("export", exc), gr.update(), gr.update()
            from transfer.training.trainer import list_runs

            runs_frame = list_runs()
            row = runs_frame[runs_frame["id"] == run_id]
            teachers_ = [t for t in (row["teachers"].iloc[0].split(",") if len(row) else []) if t]
            return (views.parity_text(summary), gr.update(choices=views.export_choices(), value=summary["path"]),
                    gr.update(choices=teachers_ or views.available("teacher", summary["modality"]),
                              value=(teachers_ or [None])[0]))

        def compare_speed(path, teacher, progress=gr.Progress()):
            from transfer.export.latency import student_vs_teacher
            from transfer.serving.runtime import own_export

            if not path or not teacher:
                return "**Export a student and pick a teacher first.**"
            try:
                progress(0.2, desc=f"timing {teacher} and the student")
                return views.latency_text(student_vs_teacher(own_export(path), teacher))
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

        data_outputs = [summary, counts, gallery, texts, zoo_table, rank_models, teachers, student, scratch, lr]
        dataset.change(on_dataset, dataset, data_outputs, api_name="select_dataset")
        student.change(on_student, student, [scratch, lr], api_name=False)
        rank_button.click(rank_teachers, [dataset, rank_models, metrics, rank_limit, chart_metric],
                          [rank_status, rank_table, rank_chart, rank_history, teachers], api_name="rank")
        chart_metric.change(score_chart, [rank_table, chart_metric], rank_chart,
                            api_name=False)
        launch.click(start, [dataset, student, scratch, method, teachers, beta, steps, lr, limit_train, limit_test],
                     [launch_status, jobs, job_pick], api_name="transfer")
        runs_outputs = [runs, by_method, vs_score, weights_run, export_run]
        tick_inputs = [job_pick, finished, runs_scope, dataset]
        tick_outputs = [jobs, loss_plot, acc_plot, finished, *runs_outputs]
        timer.tick(tick, tick_inputs, tick_outputs, show_progress="hidden", api_name="jobs")
        job_pick.change(tick, tick_inputs, tick_outputs, show_progress="hidden", api_name=False)
        cancel.click(cancel_job, job_pick, launch_status, api_name="cancel")
        resume_job.click(resume_from_job, job_pick, [launch_status, job_pick], api_name="resume_job")
        for trigger in (refresh.click, runs_scope.change, dataset.change):
            trigger(show_runs, [runs_scope, dataset], runs_outputs,
                    api_name="runs" if trigger == refresh.click else False)
        weights_run.change(views.teacher_weights, weights_run, weights, api_name=False)
        resume.click(resume_run, weights_run, [runs_status, job_pick], api_name="resume")
        export_button.click(do_export, export_run, [export_status, exported, speed_teacher], api_name="export")
        speed_button.click(compare_speed, [exported, speed_teacher], speed_status, api_name="compare_speed")
        classify.click(predict, [exported, try_image, try_text], [try_status, labels], api_name="classify")
        _wire_upload(upload, upload_status, upload_preview, text_column, label_column, new_name, add, dataset)

        def on_load(name):
            return (*on_dataset(name), views.ranking_history(), gr.update(choices=views.export_choices()),
                    *show_runs("this data set", name))

        demo.load(on_load, dataset, [*data_outputs, rank_history, exported, *runs_outputs], api_name=False)
    return demo


def _wire_upload(upload, status, preview, text_column, label_column, new_name, add, dataset) -> None:
    """The "add your own data" flow: look at the file, let the user pick columns and a name, import it."""

    def inspect(path):
        from zoo.userdata import inspect_upload

        hidden = gr.update(visible=False)
        if not path:
            return "", hidden, hidden, hidden, gr.update()
        try:
            info = inspect_upload(path)
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
        files = info["files_per_class"]
        skipped = info["skipped"]
        note = f" {len(skipped)} files will be skipped (not images)." if skipped else ""
        table = pd.DataFrame({"class": list(files), "images": list(files.values())})
        return (f"Images in {len(files)} classes.{note} Name it, then **Add data set**.",
                gr.update(value=table, visible=True), hidden, hidden, suggested)

    def add_dataset(path, text, label, name, progress=gr.Progress()):
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

    upload.change(inspect, upload, [status, preview, text_column, label_column, new_name], api_name="inspect_upload")
    add.click(add_dataset, [upload, text_column, label_column, new_name], [status, dataset], api_name="add_dataset")


def auth_from_settings() -> tuple[str, str] | None:
    s = get_settings()
    if bool(s.app_user) != bool(s.app_password):
        raise ValueError("set both AFTZOO_APP_USER and AFTZOO_APP_PASSWORD to turn the login on, or neither")
    return (s.app_user, s.app_password.get_secret_value()) if s.app_user else None


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the app on ``host:port`` until interrupted; running jobs stop at a checkpoint on the way out."""
    auth = auth_from_settings()
    if host not in LOOPBACK and auth is None:
        print(f"warning: the app listens on {host}, reachable from other machines, with no login: set "
              "AFTZOO_APP_USER and AFTZOO_APP_PASSWORD, or bind 127.0.0.1", file=sys.stderr)
    queue = JobQueue(workers=get_settings().jobs)
    atexit.register(queue.shutdown)  # also on an exit that skips the finally below
    demo = build(queue)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=True, quiet=True,
                            show_error=False, footer_links=[], theme=gr.themes.Soft(), css=CSS,
                            max_file_size=2 * 1024 ** 3, enable_monitoring=False)
    print(f"aftzoo app on {url}  (Ctrl+C stops it)", flush=True)
    try:
        demo.block_thread()
    finally:
        queue.shutdown()
