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
    "aft": "AFT: adaptive feature transfer (recommended)",
    "stl": "STL: no teacher, labels only (baseline)",
    "kd": "KD: copy the teacher's features (baseline)",
    "rkd": "RKD: copy the teacher's similarities (baseline)",
    "ft": "FT: fine-tune the teacher itself (baseline)",
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
BY_METHOD = {"method": "str", "data": "str", "accuracy": "float64", "runs": "int64"}
SCORE_VS_ACCURACY = {"teacher": "str", "score": "float64", "accuracy": "float64", "method": "str", "data": "str"}
WEIGHTS = {"teacher": "str", "mean weight": "float64"}


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
        return f"ready ({resolve_weights(spec).kind})"
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
    from zoo.registry import list_specs, weights_status

    return [s.name for s in list_specs(role=role, modality=modality_) if weights_status(s)]


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
        "beta": configs.map(lambda c: f"auto: {c['chosen_beta']:g}" if "chosen_beta" in c else str(c.get("beta"))),
        "accuracy": frame["test_accuracy"].round(4),
        "steps": frame.apply(lambda r: f"{r['step']}/{int(r['total_steps'])}" if _num(r["total_steps"]) else
                             str(r["step"]), axis=1),
        "minutes": (frame["wall_seconds"] / 60).round(2),
        "status": frame["status"],
    }).reset_index(drop=True)


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
        steps = f"{shown['step']}/{shown['total_steps']}" if shown.get("total_steps") else "-"
        if job.run_id in active:
            steps += " (beta search)"
        accuracy = _num(run.get("test_accuracy"))
        rows.append({"job": job.id, "run": job.run_id, "what": job.kind, "state": job.state, "steps": steps,
                     "accuracy": None if accuracy is None else round(accuracy, 4), "message": job.error or ""})
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# Comparisons across runs
# ---------------------------------------------------------------------------------------------
def _completed(dataset: str | None) -> pd.DataFrame:
    frame = runs_table(dataset)
    return frame[(frame["status"] == "completed") & frame["accuracy"].notna()]


def accuracy_by_method(dataset: str | None = None) -> pd.DataFrame:
    """Mean test accuracy of completed runs per method (and data set)."""
    frame = _completed(dataset)
    if frame.empty:
        return typed(**BY_METHOD)
    return (frame.groupby(["method", "data"], as_index=False)
            .agg(accuracy=("accuracy", "mean"), runs=("run", "count")).round(4))


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


def latency_text(r: dict) -> str:
    return (f"Student **{r['student']}** in onnxruntime: **{r['student_ms']:.2f} ms** per input. Teacher "
            f"**{r['teacher']}** ({human_count(r['teacher_params'])} parameters) in PyTorch: "
            f"**{r['teacher_ms']:.2f} ms** per input. The student takes **{r['ratio']:.3f}x** the teacher's time "
            f"({r['inputs']} test inputs, batches of {r['batch']}, preprocessing included, best of 3).")
