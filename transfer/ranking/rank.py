"""Rank zoo models for a data set: extract (cached) features, score them, record every score."""
from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np
import pandas as pd

from storage.catalog import open_catalog
from transfer.ranking.scores import hscore, leep, logme, nce, probe_accuracy
from zoo.datasets import load_dataset
from zoo.extract import extract_info
from zoo.registry import resolve as get_spec

METRICS = ("logme", "leep", "nce", "hscore", "probe")
DEFAULT_METRICS = ("logme", "leep", "nce", "hscore", "probe")


def source_classifier(model: str) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str | None]:
    """The model's own (source-task) classifier as features -> probabilities, or None and the reason.

    LEEP and NCE score a data set through the labels a pre-trained classifier predicts.
    The cached features are the classifier's input (pooled pre-logits), so applying its
    head to them gives exactly the model's predictions without running it again.
    """
    spec = get_spec(model)
    if spec.pack in ("efficientnet-lite0", "efficientnet-lite2"):
        import torch

        from zoo.packs import load_efficientnet_lite

        head = load_efficientnet_lite(int(spec.pack[-1])).get_classifier().eval()

        def probs(features: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return head(torch.from_numpy(np.array(features, dtype=np.float32))).softmax(-1).numpy()
        return probs, None
    return None, (f"{model} has no source classifier here (it is a feature extractor); "
                  "LEEP and NCE need one")


def _score(metric: str, features: np.ndarray, labels: np.ndarray, probs: np.ndarray | None) -> float:
    if metric == "logme":
        return logme(features, labels)
    if metric == "hscore":
        return hscore(features, labels)
    if metric == "probe":
        return probe_accuracy(features, labels)
    if metric == "leep":
        return leep(probs, labels)
    if metric == "nce":
        return nce(probs.argmax(1), labels)
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def rank(dataset: str, models: list[str], metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS, *,
         limit: int | None = None, split: str = "train", progress: bool = True,
         on_progress: Callable[[float, str], None] | None = None) -> pd.DataFrame:
    """Score each of ``models`` on ``dataset`` with each metric; one row per model, best first by the first metric.

    Features come through the catalog (extracted once, then cached); every score is
    stored in the ``rankings`` table with the data fingerprint, so rankings can be
    compared across data sets and over time. A metric a model cannot have (LEEP without
    a source classifier) is left empty, with the reason in the ``skipped`` column.
    ``on_progress(fraction, what)`` hears of every extraction batch and scoring step.
    """
    metrics = list(dict.fromkeys(metrics))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(METRICS)}")
    if not models:
        raise ValueError("name at least one model to rank")
    data = load_dataset(dataset)
    for name in models:
        get_spec(name)  # unknown names fail before any extraction
    labels = data.split(split).labels[:limit] if limit else data.split(split).labels
    rows = []
    share = 1 / len(models)  # of the bar, per model: 80% extraction (moving with its batches), 20% scoring
    for i, model in enumerate(models):
        hook = progress
        if on_progress:
            on_progress(i * share, f"{model}: loading it, or its cached features")

            def hook(done: int, total: int, i=i, model=model) -> None:
                on_progress((i + 0.8 * done / total) * share, f"{model}: features of {done:,}/{total:,} examples")
        info = extract_info(model, data, split, limit=limit, progress=hook)
        features = np.asarray(info.features)
        head, reason = source_classifier(model) if {"leep", "nce"} & set(metrics) else (None, None)
        probs = head(features) if head is not None else None
        if on_progress:
            on_progress((i + 0.8) * share, f"{model}: scoring ({', '.join(metrics)})")
        row: dict = {"model": model, "dim": features.shape[1], "n": features.shape[0]}
        skipped, inserts = [], []
        # Score first, then open the catalog only to insert: a 5-fold probe can take minutes, and a
        # training job in another process must not wait that long to log its metrics.
        for metric in metrics:
            started = time.perf_counter()
            if metric in ("leep", "nce") and probs is None:
                row[metric] = None
                skipped.append(f"{metric}: {reason}")
                continue
            row[metric] = float(_score(metric, features, labels, probs))
            inserts.append((metric, json.dumps({"split": split, "n": int(features.shape[0]),
                                                "dim": int(features.shape[1]),
                                                "seconds": time.perf_counter() - started})))
        with open_catalog() as cat:
            fs = cat.find_feature_set(model, info.fingerprint, split, _settings_key(info))
            for metric, details in inserts:
                cat.execute(
                    "INSERT INTO rankings (dataset, fingerprint, model, metric, score, feature_set_id, details) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [data.name, info.fingerprint, model, metric, row[metric], fs.id if fs else None, details])
        row["skipped"] = "; ".join(skipped)
        rows.append(row)
    if on_progress:
        on_progress(1.0, "done")
    frame = pd.DataFrame(rows)
    return frame.sort_values(metrics[0], ascending=False, na_position="last").reset_index(drop=True)


def _settings_key(info) -> str:
    from storage.features import FeatureKey

    return FeatureKey(info.model, info.dataset, info.split, info.fingerprint, info.settings).settings_key


def history(dataset: str | None = None) -> pd.DataFrame:
    """Every recorded score (latest per data set, model and metric), wide: one row per (data set, model)."""
    with open_catalog() as cat:
        long = cat.df(
            "SELECT dataset, model, metric, score, created_at FROM rankings "
            + ("WHERE dataset = ? " if dataset else "")
            + "QUALIFY row_number() OVER (PARTITION BY dataset, model, metric ORDER BY created_at DESC) = 1",
            [dataset] if dataset else [])
    if long.empty:
        return pd.DataFrame(columns=["dataset", "model", *METRICS])
    return long.pivot_table(index=["dataset", "model"], columns="metric", values="score").reset_index()
