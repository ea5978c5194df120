"""The smallest end-to-end run, until the app lands: embed, cache in the catalog, probe."""
from __future__ import annotations

import time

import numpy as np

from storage.catalog import open_catalog
from storage.features import FeatureKey, FeatureStore
from storage.settings import get_settings, resolve_device
from zoo import packs
from zoo.datasets import load_dataset


def _minilm_features(texts: list[str], device: str, progress: bool) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(packs.locate("minilm-l6")), device=device)
    return model.encode(texts, batch_size=64, show_progress_bar=progress, convert_to_numpy=True)


def run_demo(limit: int = 2000, progress: bool = True) -> dict:
    """MiniLM embeds Rotten Tomatoes snippets (cached in the feature store), a logistic probe classifies them."""
    from sklearn.linear_model import LogisticRegression

    settings = get_settings()
    device = resolve_device()
    data = load_dataset("rotten_tomatoes")
    started = time.perf_counter()
    features, cached = {}, {}
    with open_catalog(settings) as catalog:
        store = FeatureStore(settings.features_dir, catalog)
        for split, n in (("train", limit), ("test", max(limit // 4, 1))):
            part = data.split(split).head(n)
            key = FeatureKey("minilm-l6", data.name, split, part.fingerprint, {"pooling": "sentence-transformers"})
            hit = store.get(key)
            cached[split] = hit is not None
            if hit is None:
                store.put(key, _minilm_features(list(part.inputs), device, progress).astype(np.float32))
                hit = store.get(key)
            features[split] = (np.asarray(hit), part.labels)
    (xtr, ytr), (xte, yte) = features["train"], features["test"]
    probe = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    accuracy = float(probe.score(xte, yte))
    seconds = time.perf_counter() - started
    return {
        "dataset": data.name, "model": "minilm-l6", "device": device, "train": len(ytr), "test": len(yte),
        "cached": cached, "probe_accuracy": accuracy, "seconds": seconds, "catalog": str(settings.catalog_path),
        "summary": (f"MiniLM-L6 features of {len(ytr)} + {len(yte)} Rotten Tomatoes snippets "
                    f"({'read from the cache' if all(cached.values()) else 'extracted and cached'} in "
                    f"{settings.catalog_path}); linear probe test accuracy {accuracy:.3f}; {seconds:.1f}s"),
    }
