"""What the web app shows: tables and plot data read from the library and the catalog.

Every function returns plain data (pandas frames, strings, lists) so it can be checked
without a browser; ``app.web`` only lays them out. Nothing here computes a result of
its own: scores, runs, metrics and exports all come from the catalog.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from app.output import human_count
from storage.catalog import open_catalog

METHOD_LABELS = {
    "aft": "AFT: adaptive feature transfer (experimental: it tied plain fine-tuning in our evidence)",
    "stl": "STL: no teacher, labels only (baseline)",
    "kd": "KD: copy the teacher's features (baseline)",
    "rkd": "RKD: copy the teacher's similarities (baseline)",
    "ft": "FT: factor transfer through a small network (baseline)",
    "btune": "B-Tuning: Bayesian tuning toward the teachers (baseline)",
    "aft_rbf": "AFT with an RBF kernel (ablation)",
    "aft_dense": "AFT with dense weights (ablation)",
    "aft_identity": "AFT with fixed weights (ablation)",
    "aft_nokernel": "AFT without the kernel (ablation)",
}
METRIC_LABELS = {"logme": "LogME evidence", "leep": "LEEP", "nce": "NCE", "hscore": "H-score",
                 "probe": "linear-probe accuracy"}


def typed(**dtypes: str) -> pd.DataFrame:
    """An empty frame with typed columns: a plot fixes each axis's kind (numbers or categories)
    from the first frame it gets, so an empty one must already say which."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})


# Columns of each plot's data, typed (see ``typed``).
CURVE = {"step": "int64", "value": "float64", "series": "str"}
RANKING = {"model": "str", "metric": "str", "score": "float64"}
COMPARISON = {"comparison": "str", "method": "str", "accuracy": "float64", "spread": "float64", "runs": "int64",
              "seeds": "str"}
SCORE_VS_ACCURACY = {"teacher": "str", "score": "float64", "accuracy": "float64", "method": "str", "data": "str"}
WEIGHTS = {"teacher": "str", "mean weight": "float64"}
# One colour per series, the same in every chart and on every update (Gradio's line plot keeps the colour
# domain of the frame it was built with: a series it did not see then is drawn with no stroke at all).
SERIES_COLORS = {"total loss": "#4f46e5", "cross-entropy": "#0891b2", "teacher term": "#d97706",
                 "train accuracy": "#4f46e5", "test set accuracy": "#dc2626", "hold-out accuracy": "#059669",
                 "train": "#6366f1", "test": "#f59e0b"}
PALETTE = ["#4f46e5", "#dc2626", "#059669", "#d97706", "#0891b2", "#7c3aed", "#db2777", "#65a30d"]


def transfer_defaults() -> dict:
    """The transfer settings the app pre-fills: ``TransferConfig``'s own defaults, never copies of them."""
    import dataclasses

    from transfer.training.trainer import TransferConfig

    return {f.name: f.default for f in dataclasses.fields(TransferConfig) if f.default is not dataclasses.MISSING}


def beta_text(beta: float | str) -> str:
    """A beta as the picker shows it: 'auto' or the number."""
    return beta if isinstance(beta, str) else f"{beta:g}"


def beta_choices(method: str | None = None) -> list[str]:
    """'auto' and the beta grid the search tries for ``method`` (each regulariser has its own scale)."""
    from transfer.training.objectives import BETA_GRIDS

    return ["auto", *(f"{b:g}" for b in BETA_GRIDS.get(method or transfer_defaults()["method"], ()))]


def series_colors(frame: pd.DataFrame, column: str = "series") -> dict[str, str]:
    """A colour for each series in ``frame`` (see ``SERIES_COLORS``); sent with the data, so a new series set
    makes the plot draw itself again with a colour for each."""
    names = list(dict.fromkeys(frame[column])) if column in frame else []
    spare = iter(PALETTE)
    return {n: SERIES_COLORS.get(n) or next(spare, "#6b7280") for n in names}


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def dataset_names() -> list[str]:
    """Data sets that load on this machine (bundled ones whose pack is missing are left out)."""
    from zoo.datasets import describe, list_datasets

    return [name for name in list_datasets() if describe(name).get("present", True)]


def dataset_summary(name: str) -> str:
    from zoo.datasets import load_dataset

    ds = load_dataset(name)
    train, test = (len(ds.splits[k]) if k in ds.splits else 0 for k in ("train", "test"))
    kind = "texts"
    if ds.modality == "image":
        kind = "images of " + " x ".join(map(str, ds.split("train").inputs.shape[1:3])) + " pixels"
    return (f"**{ds.name}** ({ds.source}): {ds.description}. {ds.num_classes} classes of {kind}: {train:,} "
            f"for training, {test:,} for testing.")


def class_counts(name: str) -> pd.DataFrame:
    from zoo.datasets import load_dataset

    ds = load_dataset(name)
    rows = [{"class": c, "split": split, "examples": n}
            for split in ds.splits for c, n in ds.class_counts(split).items()]
    return pd.DataFrame(rows)


def _enlarge(image: np.ndarray, side: int = 96) -> np.ndarray:
    """Tiny images (8x8 digits) scaled up with nearest neighbours, so the preview shows pixels, not blur."""
    h, w = image.shape[:2]
    k = max(1, side // max(h, w))
    return np.kron(image, np.ones((k, k) + (1,) * (image.ndim - 2), dtype=np.uint8)) if k > 1 else image


def image_examples(name: str, n: int = 12) -> list[tuple[np.ndarray, str]]:
    """The first ``n`` training images with their class names, one per class first (for the gallery)."""
    from zoo.datasets import load_dataset

    ds = load_dataset(name)
    if ds.modality != "image":
        return []
    split = ds.split("train")
    firsts = [int(np.flatnonzero(split.labels == c)[0]) for c in range(ds.num_classes) if (split.labels == c).any()]
    order = list(dict.fromkeys(firsts + list(range(min(len(split), n)))))[:n]
    return [(_enlarge(split.inputs[i]), ds.class_names[split.labels[i]]) for i in order]


def text_examples(name: str, n: int = 12) -> pd.DataFrame:
    from zoo.datasets import load_dataset

    ds = load_dataset(name)
    if ds.modality != "text":
        return pd.DataFrame(columns=["text", "label"])
    split = ds.split("train")
    return pd.DataFrame({"text": list(split.inputs[:n]), "label": [ds.class_names[i] for i in split.labels[:n]]})


def modality(name: str) -> str:
    from zoo.datasets import load_dataset

    return load_dataset(name).modality


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def _how_to_get(spec) -> str:
    from zoo.registry import WeightsUnavailable, resolve_weights

    try:
        source = resolve_weights(spec)
        return "downloads from the hub when first picked" if source.kind == "hub" else f"ready ({source.kind})"
    except WeightsUnavailable as exc:
        text = str(exc)
        return text.split("downloads are off: ", 1)[-1] if "downloads are off: " in text else text


def zoo_table(role: str = "teacher", modality_: str | None = None) -> pd.DataFrame:
    """The zoo as the Teachers page shows it: available models first."""
    from zoo.registry import list_specs, weights_status

    rows = []
    for spec in list_specs(role=role, modality=modality_):
        status = weights_status(spec)
        rows.append({"model": spec.name, "family": spec.family, "kind": spec.modality,
                     "parameters": human_count(spec.params), "feature size": spec.feature_dim,
                     "on this machine": "yes" if status else "no",
                     "how to get it": "ready" if status else _how_to_get(spec)})
    frame = pd.DataFrame(rows, columns=["model", "family", "kind", "parameters", "feature size", "on this machine",
                                        "how to get it"])
    return frame.sort_values(["on this machine", "model"], ascending=[False, True]).reset_index(drop=True)


def available(role: str, modality_: str) -> list[str]:
    """The models a person may pick: those on this machine, then (downloads on) those the hub would bring."""
    from storage.settings import get_settings
    from zoo.registry import list_specs, weights_status

    specs = list_specs(role=role, modality=modality_)
    here = [s.name for s in specs if weights_status(s)]
    return here if get_settings().offline else here + [s.name for s in specs if s.name not in here]


def needs_scratch(student: str) -> bool:
    """True when the student has no pre-trained weights here and can only start from random ones."""
    from zoo.registry import get, weights_status

    return weights_status(get(student)) in (None, "random")


# ---------------------------------------------------------------------------------------------
# Rankings
# ---------------------------------------------------------------------------------------------
def ranking_long(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """A ranking (one row per model) as (model, metric, score) rows for a bar chart."""
    rows = [{"model": r["model"], "metric": METRIC_LABELS.get(m, m), "score": _num(r.get(m))}
            for r in frame.to_dict(orient="records") for m in metrics if _num(r.get(m)) is not None]
    return pd.DataFrame(rows) if rows else typed(**RANKING)


def ranking_history() -> pd.DataFrame:
    """The latest score of every (data set, model, metric) in the catalog, one row per data set and model."""
    from transfer.ranking.rank import history

    frame = history()
    if frame.empty:
        return frame
    return frame.sort_values(["dataset", "logme"] if "logme" in frame else ["dataset"],
                             ascending=[True, False] if "logme" in frame else True).round(4)


def latest_ranking(dataset: str) -> pd.DataFrame:
    """The latest score of each model on ``dataset``, best first (LogME where scored, else the first metric)."""
    from transfer.ranking.rank import history

    frame = history(dataset).drop(columns=["dataset"], errors="ignore")
    scored = [m for m in METRIC_LABELS if m in frame and frame[m].notna().any()]
    if frame.empty or not scored:
        return pd.DataFrame(columns=["model", "logme", "probe"])
    return frame[["model", *scored]].sort_values(scored[0], ascending=False).reset_index(drop=True).round(4)


def best_teacher(ranking: pd.DataFrame, student: str | None, candidates: list[str]) -> str | None:
    """The best ranked of ``candidates`` in ``ranking`` (best first) that is not the student itself."""
    for model in ranking.get("model", []):
        if model != student and model in candidates:
            return model
    return None


RANKING_NOTES = ("**How to read it.** *LogME* is the evidence per example that a linear model on the teacher's "
                 "features explains your labels: higher is better, and it is often negative; the bars start at "
                 "the lowest score, so the better teacher has the longer bar. *Linear-probe accuracy* is the "
                 "cross-validated accuracy of a linear classifier on those features: the same ranking in a unit "
                 "you can read (a gap of 0.05 is five examples in a hundred). *n*: the training examples scored. "
                 "*skipped*: a score the model cannot have, and why (LEEP and NCE need the model's own "
                 "classifier).")


def ranking_summary(frame: pd.DataFrame, dataset: str, *, latest: bool = False) -> str:
    """One paragraph naming the best teacher and what separates it from the next one."""
    if frame.empty:
        return f"**{dataset}** has no ranking yet: tick teachers and press **Rank teachers**."
    scored = [m for m in METRIC_LABELS if m in frame and pd.notna(frame[m].iloc[0])]
    first = frame.iloc[0]
    text = (f"Latest scores on **{dataset}** from the catalog" if latest else
            f"Ranked {len(frame)} teachers on {int(first['n']):,} examples of **{dataset}**") + \
        f"; best: **{first['model']}**"
    if scored:
        text += " (" + ", ".join(f"{METRIC_LABELS[m]} {first[m]:.3f}" for m in scored) + ")"
    if len(frame) > 1 and scored:
        second = frame.iloc[1]
        gaps = ", ".join(f"{METRIC_LABELS[m]} {first[m] - second[m]:+.3f}" for m in scored if pd.notna(second[m]))
        text += f"; ahead of {second['model']} by {gaps}"
    return text + "."


# ---------------------------------------------------------------------------------------------
# Runs and jobs
# ---------------------------------------------------------------------------------------------
def runs_table(dataset: str | None = None) -> pd.DataFrame:
    """Finished and running transfers, newest first; beta-search trials are folded into their search."""
    with open_catalog() as cat:
        frame = cat.df("SELECT * FROM runs" + (" WHERE dataset = ?" if dataset else "") + " ORDER BY created_at DESC",
                       [dataset] if dataset else [])
    cols = ["run", "data", "student", "teachers", "method", "beta", "accuracy", "steps", "minutes", "status"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    configs = frame["config"].map(lambda c: json.loads(c) if isinstance(c, str) else (c or {}))
    keep = configs.map(lambda c: not c.get("parent"))
    frame, configs = frame[keep], configs[keep]
    return pd.DataFrame({
        "run": frame["id"], "data": frame["dataset"], "student": frame["student"],
        "teachers": frame["teachers"].map(lambda t: ", ".join(json.loads(t)) if t else ""),
        "method": frame["method"],
        "beta": [("-" if m == "stl" else f"auto: {c['chosen_beta']:g}" if "chosen_beta" in c else str(c.get("beta")))
                 for m, c in zip(frame["method"], configs)],
        "accuracy": frame["test_accuracy"].round(4),
        "steps": [steps_text(r["step"], r["total_steps"], c.get("steps"))
                  for r, c in zip(frame.to_dict(orient="records"), configs)],
        "minutes": (frame["wall_seconds"] / 60).round(2),
        "status": frame["status"],
    }).reset_index(drop=True)


def steps_text(step, total, asked=None) -> str:
    """Steps run of the steps the run will run; when the trainer runs other than the steps asked, say so."""
    if not _num(total):
        return "-" if step is None or _num(step) is None else str(int(step))
    text = f"{int(step or 0)}/{int(total)}"
    if _num(asked) and int(asked) != int(total):
        text += f" (asked {int(asked)}: whole epochs)"
    return text


def run_choices(status: str | None = None) -> list[str]:
    frame = runs_table()
    if status:
        frame = frame[frame["status"] == status]
    return list(frame["run"])


def active_run(run_id: str) -> str:
    """For a beta search, the trial or final run training now (its latest child); else the run itself."""
    with open_catalog() as cat:
        rows = cat.query("SELECT id FROM runs WHERE json_extract_string(config, '$.parent') = ? "
                         "ORDER BY created_at DESC LIMIT 1", [run_id])
    return rows[0]["id"] if rows else run_id


def curves(run_id: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss and accuracy histories of a run as long frames (step, value, series) for line plots."""
    empty = typed(**CURVE)
    if not run_id:
        return empty, empty
    from transfer.training.trainer import history

    h = history(active_run(run_id))
    if h.empty:
        return empty, empty

    def long(columns: dict[str, str]) -> pd.DataFrame:
        parts = [pd.DataFrame({"step": h["step"].astype(int), "value": h[c].astype(float), "series": label}).dropna()
                 for c, label in columns.items() if c in h]
        # Numeric dtypes matter: the plot treats object columns as categories, one tick per value.
        return pd.concat(parts, ignore_index=True) if parts else empty

    acc = {c: c.replace("_acc", "").replace("test", "test set").replace("holdout", "hold-out") + " accuracy"
           for c in h.columns if c.endswith("_acc")}
    return long({"loss": "total loss", "ce": "cross-entropy", "reg": "teacher term"}), long(acc)


def jobs_table(jobs) -> pd.DataFrame:
    """The job queue with each job's progress; one catalog read for all of them (the page polls it)."""
    columns = ["job", "run", "what", "state", "steps", "accuracy", "message"]
    ids = [job.run_id for job in jobs]
    if not ids:
        return pd.DataFrame(columns=columns)
    with open_catalog() as cat:
        runs = {r["id"]: r for r in cat.query(
            "SELECT id, step, total_steps, test_accuracy FROM runs WHERE list_contains(?, id)", [ids])}
        # A beta search trains its trials and its final run as children: show the one training now.
        active = {r["parent"]: r for r in cat.query(
            "SELECT json_extract_string(config, '$.parent') AS parent, id, step, total_steps FROM runs "
            "WHERE list_contains(?, json_extract_string(config, '$.parent')) "
            "QUALIFY row_number() OVER (PARTITION BY parent ORDER BY created_at DESC) = 1", [ids])}
    rows = []
    for job in jobs:
        run = runs.get(job.run_id) or {}
        shown = active.get(job.run_id, run)
        later = next((j for j in reversed(jobs) if j.run_id == job.run_id and j.submitted_at > job.submitted_at),
                     None)
        accuracy = _num(run.get("test_accuracy"))
        if later is not None:  # the run went on in a later job: its steps and accuracy are that job's
            steps, accuracy, message = "-", None, f"resumed in job {later.id}"
        else:
            steps = steps_text(shown.get("step"), shown.get("total_steps"),
                               None if job.run_id in active else (job.config or {}).get("steps"))
            steps += " (beta search)" if job.run_id in active else ""
            message = job.error or ""
        rows.append({"job": job.id, "run": job.run_id, "what": job.kind, "state": job.state, "steps": steps,
                     "accuracy": None if accuracy is None else round(accuracy, 4), "message": message})
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# Comparisons across runs
# ---------------------------------------------------------------------------------------------
def _completed(dataset: str | None) -> pd.DataFrame:
    frame = runs_table(dataset)
    return frame[(frame["status"] == "completed") & frame["accuracy"].notna()]


# What must match for two runs to be compared: the same data, student, steps and example limits.
MATCHED = ["dataset", "student", "steps", "limit_train", "limit_test", "pretrained"]


def _finished_runs(dataset: str | None) -> pd.DataFrame:
    """Completed top-level runs with the settings that decide what they can be compared with."""
    with open_catalog() as cat:
        frame = cat.df("SELECT id, dataset, student, teachers, method, config, total_steps, test_accuracy FROM runs "
                       "WHERE status = 'completed' AND test_accuracy IS NOT NULL"
                       + (" AND dataset = ?" if dataset else ""), [dataset] if dataset else [])
    configs = frame["config"].map(lambda c: json.loads(c) if isinstance(c, str) else (c or {}))
    # A build's own row is a summary of runs already listed, not a run of its own.
    keep = configs.map(lambda c: not c.get("parent") and c.get("kind") != "build").astype(bool)
    frame, configs = frame[keep].copy(), configs[keep]
    # A beta search's parent row records no total of its own; its children ran the configured steps.
    frame["steps"] = [int(t) if pd.notna(t) else int(c.get("steps") or 0)
                      for t, c in zip(frame["total_steps"], configs)]
    for key in ("limit_train", "limit_test", "pretrained", "seed"):
        frame[key] = configs.map(lambda c, key=key: str(c.get(key)))
    # A method with other teachers or another beta is another contender: each gets a bar of its own.
    frame["label"] = [m if m == "stl" else f"{m} ({', '.join(json.loads(t or '[]'))}; beta "
                                           f"{c.get('chosen_beta', c.get('beta'))})"
                      for m, t, c in zip(frame["method"], frame["teachers"], configs)]
    return frame


def method_comparisons(dataset: str | None = None) -> pd.DataFrame:
    """Test accuracy per method among runs that match (``MATCHED``), on the seeds all of them ran.

    Runs of different data, steps or example counts are never averaged together: each
    group is a comparison of its own, and a method's spread is the std over its seeds.
    Only groups where two or more methods (or betas) ran are shown.
    """
    frame = _finished_runs(dataset)
    out = []
    for key, group in frame.groupby(MATCHED, dropna=False):
        seeds = set.intersection(*(set(g["seed"]) for _, g in group.groupby("label")))
        group = group[group["seed"].isin(seeds)]
        if group["label"].nunique() < 2:
            continue
        data, student, steps, n_train, n_test, pretrained = key
        name = (f"{data}: {student}{'' if pretrained == 'True' else ' (random init)'}, {int(steps)} steps, "
                f"{'all' if n_train == 'None' else n_train} train / {'all' if n_test == 'None' else n_test} test")
        for label, runs in group.groupby("label"):
            acc = runs["test_accuracy"].astype(float)
            out.append({"comparison": name, "method": label, "accuracy": round(acc.mean(), 4),
                        "spread": round(acc.std(ddof=0), 4), "runs": len(runs),
                        "seeds": ", ".join(sorted(set(runs["seed"])))})
    return pd.DataFrame(out) if out else typed(**COMPARISON)


def score_vs_accuracy(dataset: str | None = None, metric: str = "logme") -> pd.DataFrame:
    """Each single-teacher completed run: the teacher's latest ranking score against the accuracy it reached."""
    frame = _completed(dataset)
    frame = frame[(frame["teachers"] != "") & ~frame["teachers"].str.contains(",")]
    if frame.empty:
        return typed(**SCORE_VS_ACCURACY)
    from transfer.ranking.rank import history

    scores = history()
    if scores.empty or metric not in scores:
        return typed(**SCORE_VS_ACCURACY)
    merged = frame.merge(scores[["dataset", "model", metric]], left_on=["data", "teachers"],
                         right_on=["dataset", "model"])
    return pd.DataFrame({"teacher": merged["teachers"], "score": merged[metric], "accuracy": merged["accuracy"],
                         "method": merged["method"], "data": merged["data"]}).dropna()


def teacher_weights(run_id: str | None) -> pd.DataFrame:
    """AFT's learned feature weights at the run's last evaluation: the mean weight per teacher."""
    empty = typed(**WEIGHTS)
    if not run_id:
        return empty
    from transfer.training.trainer import history

    with open_catalog() as cat:
        row = cat.get_run(run_id)
    if row is None:
        return empty
    if row["config"].get("final_run"):
        return teacher_weights(row["config"]["final_run"])
    h = history(run_id)
    per_teacher = [c for c in h.columns if c.startswith("weight_mean/")]
    if per_teacher:
        last = h.dropna(subset=per_teacher).iloc[-1] if not h.dropna(subset=per_teacher).empty else None
        if last is None:
            return empty
        return pd.DataFrame({"teacher": [c.split("/", 1)[1] for c in per_teacher],
                             "mean weight": [float(last[c]) for c in per_teacher]})
    if "weight_mean" in h and h["weight_mean"].notna().any() and row["teachers"]:
        return pd.DataFrame({"teacher": row["teachers"][:1],
                             "mean weight": [float(h["weight_mean"].dropna().iloc[-1])]})
    return empty


# ---------------------------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------------------------
def export_choices() -> list[tuple[str, str]]:
    """(label, path) of every export in the catalog whose folder still exists, newest first."""
    from pathlib import Path

    from transfer.export.onnx import list_exports

    out = []
    for row in list_exports():
        if Path(row["path"]).is_dir():
            m = row["manifest"] or {}
            label = f"{Path(row['path']).name} ({m.get('student')} on {m.get('dataset')})"
            out.append((label, row["path"]))
    return out


def parity_text(summary: dict) -> str:
    p = summary["parity"]["model"]
    verdict = "passed" if summary["parity"].get("passed") else "FAILED"
    return (f"Exported **{summary['name']}** to `{summary['path']}` in {summary['seconds']:.1f} s. "
            f"Parity with PyTorch on {summary['parity'].get('examples', '?')} test inputs: largest logit "
            f"difference {p['max_abs_logit_diff']:.2g}, top-1 agreement {p['top1_agreement']:.0%} ({verdict}).")


def student_size(path: str) -> tuple[int, int]:
    """(parameters, bytes on disk) of an exported student: weights counted from the ONNX graph's
    initialisers, bytes over the model files (external weight data included)."""
    from pathlib import Path

    import onnx

    folder = Path(path)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    params = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type in (1, 10, 11, 16))  # floats
    size = sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    return params, size


def latency_text(r: dict, size: tuple[int, int] | None = None) -> str:
    own = f" ({human_count(size[0])} parameters, {size[1] / 1e6:.1f} MB)" if size else ""
    return (f"Student **{r['student']}**{own} in onnxruntime: **{r['student_ms']:.2f} ms** per input. Teacher "
            f"**{r['teacher']}** ({human_count(r['teacher_params'])} parameters) in PyTorch: "
            f"**{r['teacher_ms']:.2f} ms** per input. The student takes **{r['ratio']:.3f}x** the teacher's time "
            + (f"with **{size[0] / r['teacher_params']:.2f}x** its parameters " if size else "")
            + f"({r['inputs']} test inputs, batches of {r['batch']}, preprocessing included, best of 3).")


def export_zip(path: str, into: str) -> str:
    """The export folder ``path`` as ``<into>/<name>.zip`` (made once per manifest version)."""
    import shutil
    from pathlib import Path

    folder = Path(path)
    stamp = int((folder / "manifest.json").stat().st_mtime)
    target = Path(into) / f"{folder.name}-{stamp}"
    archive = target / f"{folder.name}.zip"
    if not archive.is_file():
        target.mkdir(parents=True, exist_ok=True)
        shutil.make_archive(str(archive.with_suffix("")), "zip", root_dir=folder.parent, base_dir=folder.name)
    return str(archive)


def serving_snippets(info: dict) -> str:
    """How to serve an export and call it (curl and tritonclient), with its real model name and input kind."""
    name, folder, image = info["name"], info["path"], info["modality"] == "image"
    payload = ('"{\\"images\\": [\\"$(base64 -w0 my.png)\\"]}"' if image else
               """'{"texts": ["a fine, moving film"]}'""")
    data = 'open("my.png", "rb").read()' if image else '"a fine, moving film".encode()'
    return f"""**Serve it** (onnxruntime only, no PyTorch) and call it; the model's name on the server is `{name}`.

```bash
aftzoo serve {folder} --port 8000
curl -s localhost:8000/v1/models/{name}/predict -H 'Content-Type: application/json' \\
     -d {payload}
```

```python
import numpy as np
import tritonclient.http as tc  # pip install tritonclient[http]

client = tc.InferenceServerClient("localhost:8000")
inp = tc.InferInput("input", [1], "BYTES")
inp.set_data_from_numpy(np.array([{data}], dtype=np.object_))
res = client.infer("{name}", [inp], outputs=[tc.InferRequestedOutput("labels"), tc.InferRequestedOutput("scores")])
print(res.as_numpy("labels")[0], res.as_numpy("scores")[0])
```"""
