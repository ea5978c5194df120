"""The web app: a thin Gradio layer over the library, the catalog and the job queue.

    aftzoo app [--host 127.0.0.1] [--port 7860]

Five pages follow the path of a user: pick or upload data, rank teachers, launch
transfers (background jobs in their own processes), compare runs, export a student
and try it. This module lays the pages out and wires their controls to
``app.actions``; tables and plot data come from ``app.views``, drawn charts from
``app.charts``; the work is done by the library (``zoo``, ``transfer``); every result
lives in the catalog, so the CLI and the app see the same runs.

Each page is built by one ``_*_page`` function that puts its components on a shared
namespace, and wired by one ``_wire_*`` function. Every list a page shows (data sets,
models, runs, jobs, exports) is read when the page loads and again after the action
that changes it, never fixed when the app starts. Each status line belongs to the
current data set, job or export and is cleared when that changes.
"""
from __future__ import annotations

import atexit
import sys
from functools import partial
from types import SimpleNamespace
from typing import Callable, Sequence

import gradio as gr
import pandas as pd

from app import actions, charts, views
from storage.settings import get_settings
from transfer.jobs.queue import JobQueue

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_DATASET = "digits"
METRICS = ["logme", "leep", "nce", "hscore", "probe"]
INTRO = """# aftzoo
Make a small, fast model for your own task from large pre-trained ones. **1.** Pick a data set or upload
yours. **2.** Rank the large *teacher* models: which of them already knows most about your data.
**3.** Train a small *student* with their help (Adaptive Feature Transfer and baselines). **4.** Compare
the runs. **5.** Export the student and try it."""
CSS = ".status p { margin: 0.2em 0; } footer { display: none !important; }"
Ui = SimpleNamespace  # the page's components by name, filled by the page builders


# ---------------------------------------------------------------------------------------------
# Pages: layout only
# ---------------------------------------------------------------------------------------------
def _data_page(ui: Ui) -> None:
    with gr.Tab("1. Data", id="data"):
        ui.summary = gr.Markdown(elem_id="data-summary")
        with gr.Row():
            ui.counts = gr.BarPlot(x="class", y="examples", color="split", color_title="split",
                                   label="Examples per class", y_title="examples", x_title="class",
                                   scale=1, elem_id="class-counts")
            ui.gallery = gr.Gallery(label="Examples", columns=6, height=280, object_fit="contain", scale=1,
                                    allow_preview=False)
            ui.texts = gr.Dataframe(label="Examples", visible=False, wrap=True, max_height=280, interactive=False)
        with gr.Accordion("Add your own data", open=False, elem_id="upload-section"):
            gr.Markdown("A **table** (CSV, JSONL or Parquet) with a text column and a label column, or a "
                        "**.zip of image folders**, one folder per class (optionally inside `train/` and "
                        "`test/`). Without a given split, 20% of the examples are kept for testing.")
            ui.upload = gr.File(label="File to add", file_types=[".csv", ".jsonl", ".parquet", ".zip"],
                                elem_id="upload")
            ui.upload_status = gr.Markdown(elem_classes="status", elem_id="upload-status")
            ui.upload_preview = gr.Dataframe(label="First rows", visible=False, interactive=False, max_height=240)
            with gr.Row():
                ui.text_column = gr.Dropdown(label="Text column", visible=False, elem_id="text-column")
                ui.label_column = gr.Dropdown(label="Label column", visible=False, elem_id="label-column")
                ui.new_name = gr.Textbox(label="Name for the data set", info="lower-case letters, digits, - and _",
                                         elem_id="new-name")
            ui.add = gr.Button("Add data set", variant="primary", elem_id="add-dataset")


def _teachers_page(ui: Ui) -> None:
    with gr.Tab("2. Teachers", id="teachers"):
        gr.Markdown("The zoo of large pre-trained models. Models not on this machine show how to get them. "
                    "Ranking scores how well each model's features fit your labels, without training.")
        ui.zoo_table = gr.Dataframe(label="Teacher models for this kind of data", interactive=False, max_height=300,
                                    wrap=True, column_widths=["15%", "11%", "6%", "8%", "7%", "7%", "46%"])
        with gr.Row():
            ui.hub_name = gr.Textbox(label="Add a model by its hub name", elem_id="hub-name", scale=4,
                                     placeholder="timm:convnext_tiny.fb_in22k, hf:facebook/dinov2-small, "
                                                 "open_clip:ViT-B-32/laion2b_s34b_b79k or hf-hub:ORG/NAME",
                                     info="Read from the local Hugging Face cache; downloaded (with progress) only "
                                          "when the app runs with AFTZOO_OFFLINE=0.")
            ui.hub_add = gr.Button("Add model", elem_id="hub-add", scale=1)
        ui.hub_status = gr.Markdown(elem_classes="status", elem_id="hub-status")
        with gr.Row():
            ui.rank_models = gr.CheckboxGroup(ui.all_teachers, label="Teachers to rank" + (
                                                  " (only those on this machine)" if get_settings().offline else
                                                  "; those not here download first"),
                                              elem_id="rank-models", scale=2)
            ui.metrics = gr.CheckboxGroup([(views.METRIC_LABELS[m], m) for m in METRICS], value=["logme", "probe"],
                                          label="Scores (the first ticked orders the ranking)",
                                          elem_id="rank-metrics", scale=2)
            ui.rank_limit = gr.Number(500, precision=0, label="Training examples to use (0 = all)",
                                      elem_id="rank-limit", scale=1)
        ui.rank_button = gr.Button("Rank teachers", variant="primary", elem_id="rank")
        ui.rank_status = gr.Markdown(elem_classes="status", elem_id="rank-status")
        with gr.Row():
            ui.rank_table = gr.Dataframe(pd.DataFrame(columns=["model", "logme", "probe", "n"]), scale=1,
                                         label="Scores (best first)", interactive=False, elem_id="rank-table")
            ui.rank_chart = gr.Plot(label="Scores by teacher", show_label=False, scale=1, elem_id="rank-chart")
        ui.chart_metric = gr.Radio([(views.METRIC_LABELS[m], m) for m in METRICS], value="logme",
                                   label="Score shown in the chart")
        gr.Markdown(views.RANKING_NOTES, elem_id="rank-notes")
        ui.rank_history = gr.Dataframe(label="Earlier rankings, all data sets (latest score of each model)",
                                       interactive=False, max_height=300)


def _transfer_page(ui: Ui) -> None:
    defaults = views.transfer_defaults()  # TransferConfig's own: the app keeps no copies
    with gr.Tab("3. Transfer", id="transfer"):
        gr.Markdown("Train a small student on your labels while it learns from the teachers' features. Jobs run "
                    "in the background, one after another; you can keep using the page.")
        with gr.Row():
            ui.student = gr.Dropdown(label="Student (the small model)", elem_id="student", allow_custom_value=True)
            ui.scratch = gr.Checkbox(label="Start from random weights", elem_id="scratch",
                                     info="Needed for students without pre-trained weights on this machine.")
            ui.method = gr.Dropdown([(label, m) for m, label in views.METHOD_LABELS.items()],
                                    value=defaults["method"], label="Method", elem_id="method")
        ui.teachers = gr.CheckboxGroup(ui.all_teachers, elem_id="teachers", label="Teachers (pre-filled with the "
                                       "best of this data set's latest ranking, never the student)")
        with gr.Row():
            ui.beta = gr.Dropdown(views.beta_choices(), value=views.beta_text(defaults["beta"]), allow_custom_value=True,
                                  elem_id="beta", label="Teacher weight (beta)",
                                  info="How strongly the teachers guide the student; 'auto' tries the grid on a "
                                       "hold-out, then retrains with the best")
            ui.steps = gr.Number(defaults["steps"], precision=0, label="Training steps", elem_id="steps")
            ui.lr = gr.Number(defaults["lr"], label="Learning rate", elem_id="lr")
            ui.limit_train = gr.Number(0, precision=0, label="Training examples (0 = all)", elem_id="limit-train")
            ui.limit_test = gr.Number(0, precision=0, label="Test examples (0 = all)", elem_id="limit-test")
        ui.launch = gr.Button("Start transfer", variant="primary", elem_id="launch")
        ui.launch_status = gr.Markdown(elem_classes="status", elem_id="launch-status")
        ui.jobs = gr.Dataframe(views.jobs_table([]), label="Jobs (newest first)", interactive=False, elem_id="jobs",
                               max_height=260)
        ui.seen = gr.State(((), ()))  # (job ids, finished job ids) this page has shown: a change refreshes lists
        with gr.Row():
            ui.job_pick = gr.Dropdown(label="Show job", elem_id="job-pick", allow_custom_value=True, scale=3)
            ui.cancel = gr.Button("Cancel job", elem_id="cancel", scale=1)
            ui.resume_job = gr.Button("Resume job", elem_id="resume-job", scale=1)
        ui.job_status = gr.Markdown(elem_classes="status", elem_id="job-status")
        with gr.Row():
            ui.loss_plot = gr.LinePlot(None, x="step", y="value", color="series", color_title="term",
                                       label="Loss", elem_id="loss-plot")
            ui.acc_plot = gr.LinePlot(None, x="step", y="value", color="series", color_title="measured on",
                                      label="Accuracy", y_lim=[0, 1], elem_id="acc-plot")
        ui.timer = gr.Timer(2.0)


def _runs_page(ui: Ui) -> None:
    with gr.Tab("4. Runs", id="runs") as ui.runs_tab:
        with gr.Row():
            ui.runs_scope = gr.Radio(["this data set", "all data sets"], value="this data set",
                                     label="Show runs of")
            ui.refresh = gr.Button("Refresh", elem_id="refresh-runs")
        ui.runs_note = gr.Markdown(elem_classes="status", elem_id="runs-note")
        ui.runs = gr.Dataframe(label="Transfer runs (newest first)", interactive=False, elem_id="runs",
                               max_height=320, wrap=True)
        gr.Markdown("**Methods compared like with like**: only runs with the same data, student, steps and example "
                    "counts, on the seeds every method of the comparison ran; bars show the spread over seeds.")
        with gr.Row():
            ui.comparisons = gr.Dataframe(views.typed(**views.COMPARISON), label="Test accuracy by method",
                                          interactive=False, elem_id="comparisons", scale=1, wrap=True,
                                          column_widths=["38%", "22%", "11%", "10%", "8%", "11%"])
            ui.comparison_chart = gr.Plot(show_label=False, elem_id="comparison-chart", scale=1)
        ui.vs_score = gr.ScatterPlot(views.typed(**views.SCORE_VS_ACCURACY), x="score", y="accuracy",
                                     color="teacher", x_title="teacher's LogME score",
                                     label="Teacher's LogME score against the accuracy its student reached")
        with gr.Row():
            ui.weights_run = gr.Dropdown(label="Run", elem_id="weights-run", allow_custom_value=True, scale=2)
            ui.resume = gr.Button("Resume this run", elem_id="resume", scale=1)
        ui.runs_status = gr.Markdown(elem_classes="status", elem_id="runs-status")
        ui.weights = gr.BarPlot(views.typed(**views.WEIGHTS), x="teacher", y="mean weight", y_lim=[0, 1],
                                height=240, label="AFT's learned weight on each teacher's features (mean)")


def _export_page(ui: Ui) -> None:
    with gr.Tab("5. Export and try", id="export") as ui.export_tab:
        gr.Markdown("Export a finished run's student to ONNX; the export is checked against PyTorch and "
                    "runs with onnxruntime alone.")
        ui.export_note = gr.Markdown(elem_classes="status", elem_id="export-note")
        with gr.Row():
            ui.export_run = gr.Dropdown(label="Finished run", elem_id="export-run", allow_custom_value=True, scale=3)
            ui.export_button = gr.Button("Export student", variant="primary", elem_id="export", scale=1)
        ui.export_status = gr.Markdown(elem_classes="status", elem_id="export-status")
        ui.exported = gr.Dropdown(label="Exported student", elem_id="exported", allow_custom_value=True)
        ui.download = gr.DownloadButton("Download the export (.zip)", visible=False, elem_id="download")
        ui.snippets = gr.Markdown(actions.NO_EXPORT, elem_id="snippets")
        with gr.Row():
            ui.speed_teacher = gr.Dropdown(label="Teacher to compare with", elem_id="speed-teacher",
                                           allow_custom_value=True, scale=3)
            ui.speed_button = gr.Button("Compare speed and size", elem_id="speed", scale=1)
        ui.speed_status = gr.Markdown(elem_classes="status", elem_id="speed-status")
        gr.Markdown("### Try the exported student")
        ui.try_image = gr.Image(type="filepath", label="An image", sources=["upload", "clipboard"],
                                elem_id="try-image", height=220, visible=False)
        ui.try_text = gr.Textbox(label="A text", lines=4, elem_id="try-text", visible=False)
        ui.classify = gr.Button("Classify", variant="primary", elem_id="classify")
        ui.try_status = gr.Markdown(elem_classes="status", elem_id="try-status")
        ui.labels = gr.Label(num_top_classes=5, label="Top labels", elem_id="labels")


# ---------------------------------------------------------------------------------------------
# Wiring: each control to what it does (``app.actions``)
# ---------------------------------------------------------------------------------------------
def _wire_data(ui: Ui) -> None:
    outputs = [ui.summary, ui.counts, ui.gallery, ui.texts, ui.zoo_table, ui.rank_models, ui.rank_status,
               ui.rank_table, ui.rank_chart, ui.teachers, ui.student, ui.scratch, ui.launch_status, ui.runs_status]
    ui.dataset.change(actions.on_dataset, [ui.dataset, ui.student], outputs, api_name="select_dataset")
    ui.dataset_outputs = outputs
    _wire_upload(ui)


def _wire_upload(ui: Ui) -> None:
    """The "add your own data" flow: look at the file, let the user pick columns and a name, import it."""
    ui.upload.change(actions.inspect_upload, ui.upload,
                     [ui.upload_status, ui.upload_preview, ui.text_column, ui.label_column, ui.new_name],
                     api_name="inspect_upload")
    ui.add.click(actions.add_dataset, [ui.upload, ui.text_column, ui.label_column, ui.new_name],
                 [ui.upload_status, ui.dataset], api_name="add_dataset", show_progress_on=ui.upload_status)


def _wire_teachers(ui: Ui) -> None:
    ui.rank_button.click(actions.rank_teachers,
                         [ui.dataset, ui.rank_models, ui.metrics, ui.rank_limit, ui.chart_metric, ui.student],
                         [ui.rank_status, ui.rank_table, ui.rank_chart, ui.rank_history, ui.teachers],
                         api_name="rank", show_progress_on=ui.rank_status)
    add = dict(fn=actions.add_hub_model, inputs=[ui.hub_name, ui.dataset],
               outputs=[ui.hub_status, ui.zoo_table, ui.rank_models, ui.teachers], show_progress_on=ui.hub_status)
    ui.hub_add.click(**add, api_name="add_model")
    ui.hub_name.submit(**add, api_name=False)
    ui.chart_metric.change(charts.score_chart, [ui.rank_table, ui.chart_metric], ui.rank_chart, api_name=False)


def _wire_transfer(ui: Ui, queue: JobQueue) -> None:
    ui.student.change(actions.on_student, [ui.dataset, ui.student, ui.teachers], [ui.scratch, ui.teachers],
                      api_name=False)
    ui.method.change(actions.on_method, ui.method, [ui.teachers, ui.beta, ui.launch_status], api_name=False)
    for field in (ui.beta, ui.steps, ui.lr, ui.limit_train, ui.limit_test, ui.teachers):
        field.change(lambda: "", None, ui.launch_status, api_name=False, show_progress="hidden")
    ui.launch.click(partial(actions.start_transfer, queue),
                    [ui.dataset, ui.student, ui.scratch, ui.method, ui.teachers, ui.beta, ui.steps, ui.lr,
                     ui.limit_train, ui.limit_test], [ui.launch_status, ui.jobs, ui.job_pick], api_name="transfer")
    tick = partial(actions.tick, queue, len(ui.runs_outputs))
    inputs = [ui.job_pick, ui.seen, ui.runs_scope, ui.dataset]
    outputs = [ui.jobs, ui.loss_plot, ui.acc_plot, ui.seen, ui.job_pick, ui.job_status, *ui.runs_outputs]
    ui.timer.tick(tick, inputs, outputs, show_progress="hidden", api_name="jobs")
    ui.job_pick.change(tick, inputs, outputs, show_progress="hidden", api_name=False)
    ui.cancel.click(partial(actions.cancel_job, queue), ui.job_pick, ui.job_status, api_name="cancel")
    ui.resume_job.click(partial(actions.resume_job, queue), ui.job_pick, [ui.job_status, ui.job_pick],
                        api_name="resume_job")


def _wire_runs(ui: Ui, queue: JobQueue) -> None:
    for trigger in (ui.refresh.click, ui.runs_scope.change, ui.dataset.change, ui.runs_tab.select,
                    ui.export_tab.select):
        trigger(actions.show_runs, [ui.runs_scope, ui.dataset], ui.runs_outputs,
                api_name="runs" if trigger == ui.refresh.click else False)
    ui.weights_run.change(views.teacher_weights, ui.weights_run, ui.weights, api_name=False)
    ui.resume.click(partial(actions.resume, queue), ui.weights_run, [ui.runs_status, ui.job_pick],
                    api_name="resume")


def _wire_export(ui: Ui) -> None:
    ui.export_button.click(actions.do_export, ui.export_run, [ui.export_status, ui.exported], api_name="export",
                           show_progress_on=ui.export_status)
    ui.exported.change(actions.on_exported, ui.exported,
                       [ui.snippets, ui.download, ui.speed_teacher, ui.speed_status, ui.try_image, ui.try_text,
                        ui.try_status, ui.labels], api_name="pick_export")
    ui.export_run.change(lambda _: "", ui.export_run, ui.export_status, api_name=False, show_progress="hidden")
    ui.speed_teacher.change(lambda _: "", ui.speed_teacher, ui.speed_status, api_name=False, show_progress="hidden")
    ui.speed_button.click(actions.compare_speed, [ui.exported, ui.speed_teacher], ui.speed_status,
                          api_name="compare_speed")
    ui.classify.click(actions.predict, [ui.exported, ui.try_image, ui.try_text], [ui.try_status, ui.labels],
                      api_name="classify")


def _wire_load(demo: gr.Blocks, ui: Ui, queue: JobQueue) -> None:
    """Every list read afresh when a page (re)loads: data sets added in another tab or by the CLI included."""

    def on_load(name, student):
        names = views.dataset_names()
        name = name if name in names else (DEFAULT_DATASET if DEFAULT_DATASET in names else next(iter(names), None))
        return (gr.update(choices=names, value=name), *actions.on_dataset(name, student), views.ranking_history(),
                views.jobs_table(queue.jobs()), gr.update(choices=actions.job_choices(queue)),
                gr.update(choices=views.export_choices()), *actions.show_runs("this data set", name))

    demo.load(on_load, [ui.dataset, ui.student],
              [ui.dataset, *ui.dataset_outputs, ui.rank_history, ui.jobs, ui.job_pick, ui.exported, *ui.runs_outputs],
              api_name="page")


def _build_page(ui: Ui) -> None:
    from app.build_page import build_tab  # the front page: the whole flow behind one button

    build_tab(ui.dataset)


def build(queue: JobQueue, pages_before: Sequence[Callable[[Ui], None]] = ()) -> gr.Blocks:
    """The app. ``pages_before`` build tabs of their own ahead of page 1 (the "Build a small model" page of
    ``app.build_page`` mounts there, as the first tab); each gets the namespace with the data set picker."""
    with gr.Blocks(title="aftzoo") as demo:
        gr.Markdown(INTRO)
        # A page narrows these lists to its data set's kind when it loads; API clients that skip the load are
        # checked against all of them (Gradio checks ticked boxes against the choices it knows).
        ui = Ui(queue=queue, all_teachers=views.available("teacher", "image") + views.available("teacher", "text"))
        # Its choices are read when the page loads; the value is set now, so that load does not count as a change.
        ui.dataset = gr.Dropdown(value=DEFAULT_DATASET, label="Data set", info="Every page works on this data set.",
                                 elem_id="dataset", allow_custom_value=True)
        with gr.Tabs():
            for page in pages_before:
                page(ui)
            for page in (_data_page, _teachers_page, _transfer_page, _runs_page, _export_page):
                page(ui)
        ui.runs_outputs = [ui.runs, ui.runs_note, ui.comparisons, ui.comparison_chart, ui.vs_score, ui.weights_run,
                           ui.export_run, ui.export_note]
        _wire_data(ui)
        _wire_teachers(ui)
        _wire_transfer(ui, queue)
        _wire_runs(ui, queue)
        _wire_export(ui)
        _wire_load(demo, ui, queue)
    return demo


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
    demo = build(queue, pages_before=[_build_page])
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=True, quiet=True,
                            show_error=False, footer_links=[], theme=gr.themes.Soft(), css=CSS,
                            max_file_size=2 * 1024 ** 3, enable_monitoring=False)
    print(f"aftzoo app on {url}  (Ctrl+C stops it)", flush=True)
    try:
        demo.block_thread()
    finally:
        queue.shutdown()
