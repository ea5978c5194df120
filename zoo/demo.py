"""The smallest end-to-end run, until the app lands: extract (or read cached) features, probe them."""
from __future__ import annotations

import time

import numpy as np

from storage.settings import get_settings
from zoo.datasets import load_dataset
from zoo.extract import extract_info


def run_demo(limit: int = 2000, progress: bool = True) -> dict:
    """MiniLM features of Rotten Tomatoes snippets through the catalog, classified by a logistic probe."""
    from sklearn.linear_model import LogisticRegression

    settings = get_settings()
    data = load_dataset("rotten_tomatoes")
    started = time.perf_counter()
    features, cached = {}, {}
    for split, n in (("train", limit), ("test", max(limit // 4, 1))):
        info = extract_info("minilm-l6", data, split, limit=n, progress=progress)
        cached[split] = info.cached
        features[split] = (np.asarray(info.features), data.split(split).labels[:n])
    (xtr, ytr), (xte, yte) = features["train"], features["test"]
    accuracy = float(LogisticRegression(max_iter=2000).fit(xtr, ytr).score(xte, yte))
    seconds = time.perf_counter() - started
    return {
        "dataset": data.name, "model": "minilm-l6", "train": len(ytr), "test": len(yte),
        "cached": cached, "probe_accuracy": accuracy, "seconds": seconds, "catalog": str(settings.catalog_path),
        "summary": (f"MiniLM-L6 features of {len(ytr)} + {len(yte)} Rotten Tomatoes snippets "
                    f"({'read from the cache' if all(cached.values()) else 'extracted and cached'} in "
                    f"{settings.catalog_path}); linear probe test accuracy {accuracy:.3f}; {seconds:.1f}s"),
    }
