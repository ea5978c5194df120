"""Throughput of ``zoo.extract`` against a plain hand-written loop over the same model and data.

    python -m benchmarks.bench_extract [--images N] [--texts N] [--repeats R] [--only image|text]

Each workload runs, in one process and interleaved (plain, zoo, plain, zoo, ...), so both
see the same machine load; the best of ``--repeats`` runs counts. ``zoo.extract`` runs in a
fresh temporary AFTZOO_HOME each time (a cache miss), and includes everything it does:
model build, fingerprint, catalog look-up, streaming writes, checksum and indexing. The
plain loop includes its model build too. Then a second ``zoo.extract`` call (a cache hit)
is timed as a percentage of the first.

Targets: zoo / plain throughput ratio >= 1.0 (no overhead); cache hit < 2% of the first run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AFTZOO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from storage.settings import reset_settings  # noqa: E402


# ------------------------------------------------------------------------------------------
# Plain loops: what someone writes by hand with the same model, no aftzoo
# ------------------------------------------------------------------------------------------
def plain_images(images: np.ndarray, batch_size: int, channels_last: bool) -> np.ndarray:
    from zoo import packs

    model = packs.load_efficientnet_lite(0).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            x = (x - 0.5) / 0.5
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    return np.concatenate(out)


def plain_texts(texts: list[str], batch_size: int, sort: bool) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    from zoo import packs

    folder = packs.locate("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable") if sort else np.arange(len(texts))
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = F.normalize(pooled, dim=1).numpy()
    return out


# ------------------------------------------------------------------------------------------
def _zoo_run(model: str, dataset: str, n: int, batch_size: int):
    """One cache miss and one cache hit in a fresh AFTZOO_HOME."""
    import zoo

    with tempfile.TemporaryDirectory(prefix="aftzoo-bench-") as home:
        os.environ["AFTZOO_HOME"] = home
        reset_settings()
        started = time.perf_counter()
        first = zoo.extract(model, dataset, "train", limit=n, batch_size=batch_size, progress=False)
        miss = time.perf_counter() - started
        features = np.array(first)
        started = time.perf_counter()
        again = zoo.extract(model, dataset, "train", limit=n, batch_size=batch_size, progress=False)
        hit = time.perf_counter() - started
        assert np.array_equal(np.asarray(again), features)
    return features, miss, hit


def _timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def bench(name, n, batch_size, repeats, plains, zoo_args):
    """``plains``: list of (label, fn, args). Interleaved runs; best time of each counts."""
    times = {label: [] for label, _, _ in plains}
    zoo_miss, zoo_hit = [], []
    reference = None
    for _ in range(repeats):
        for label, fn, args in plains:
            out, seconds = _timed(fn, *args)
            times[label].append(seconds)
            reference = out if reference is None else reference
        features, miss, hit = _zoo_run(*zoo_args)
        zoo_miss.append(miss)
        zoo_hit.append(hit)
    diff = float(np.abs(features - reference).max())
    best_zoo = min(zoo_miss)
    print(f"\n== {name}: {n} examples, batch {batch_size}, best of {repeats} interleaved runs "
          f"(max |zoo - plain| feature difference {diff:.2e})")
    print(f"  {'zoo.extract (cache miss, fresh home)':<44} {best_zoo:7.2f} s  {n / best_zoo:8.1f} ex/s")
    for label, _, _ in plains:
        best = min(times[label])
        print(f"  {label:<44} {best:7.2f} s  {n / best:8.1f} ex/s   zoo/plain throughput ratio "
              f"{best / best_zoo:5.2f}  (target >= 1.0)")
    hit = statistics.median(zoo_hit)
    print(f"  {'zoo.extract cache hit (median)':<44} {hit * 1000:7.1f} ms = {100 * hit / best_zoo:.2f}% of the "
          f"first extraction (target < 2%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="digits images for EfficientNet-Lite0")
    parser.add_argument("--texts", type=int, default=1024, help="Rotten Tomatoes snippets for MiniLM")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["image", "text"], default=None)
    args = parser.parse_args()

    import zoo
    from zoo.prompts import format_prompt, prompt_for

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if args.only in (None, "image"):
        images = zoo.load_dataset("digits").split("train").inputs[:args.images]
        plain_images(images[:8], 8, True)  # warm up: imports and kernels, for every contender alike
        bench("EfficientNet-Lite0 on digits (224px)", len(images), 64, args.repeats,
              [("plain loop (as usually written)", plain_images, (images, 64, False)),
               ("plain loop + channels_last (same kernels)", plain_images, (images, 64, True))],
              ("efficientnet-lite0", "digits", len(images), 64))
    if args.only in (None, "text"):
        raw = zoo.load_dataset("rotten_tomatoes").split("train").inputs[:args.texts]
        texts = [format_prompt(prompt_for("rotten_tomatoes"), t) for t in raw]  # the same inputs zoo feeds
        plain_texts(texts[:8], 8, False)
        bench("MiniLM-L6 on Rotten Tomatoes", len(texts), 32, args.repeats,
              [("plain loop (data order)", plain_texts, (texts, 32, False)),
               ("plain loop + length-sorted batches", plain_texts, (texts, 32, True))],
              ("minilm-l6", "rotten_tomatoes", len(texts), 32))


if __name__ == "__main__":
    main()
