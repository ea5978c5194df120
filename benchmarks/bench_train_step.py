"""Training-step time, before and after, measured in one run: text and image students, STL and AFT.

    python -m benchmarks.bench_train_step [--text-student minilm-l6] [--batch 64] [--threads 1]

"before" is the step as it was (a text batch padded to its longest row and run as one; Adam's per-tensor
loop; every group clipped to norm 1); "after" is the trainer's step now (MiniLM, a BERT: the batch's real
tokens packed into one sequence for every linear layer, attention per group of 8 rows of similar length;
other text students: sub-batches of 8 such rows; fused Adam; no clipping, the authors'). Both use the trainer's
own ``train_step`` on the same student, batch and teacher features; blocks of steps alternate between them
so that a noisy machine slows both alike, and the medians are compared. The run also measures

- where a text step's time goes (tokenisation, teacher-feature reads, forward, backward, optimizer, a
  metric flush to a catalog),
- this CPU's matmul limit (a float32 GEMM of the shapes MiniLM runs), and the fraction of it a step
  reaches on the useful work (the real tokens' FLOPs),
- that before and after give the same loss and update to float rounding (dropout off for that check).

Target (issue 21): text AFT step after / before <= 0.5 with one thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F


def _matmul_limit(seconds: float = 1.0) -> float:
    """Best float32 GFLOP/s over GEMMs of MiniLM's shapes (tokens x 384 @ 384 x 1536, and its transpose)."""
    best = 0.0
    for m, k, n in ((2048, 384, 1536), (2048, 1536, 384), (1024, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
    return best


def _text_flops(student, batch) -> float:
    """FLOPs of one training step on the real tokens only (forward x 3: the backward costs about twice)."""
    cfg = student.backbone.net.config
    d, layers, ffn = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    lengths = batch["attention_mask"].sum(1).double()
    dense = 2 * lengths.sum() * layers * (4 * d * d + 2 * d * ffn)
    attention = 2 * layers * 2 * (lengths ** 2).sum() * d
    return float(3 * (dense + attention))


def _setup(student_name, classes, method, psi_dim, old: bool, device):
    from transfer.training.objectives import make_objective
    from transfer.training.students import build_student

    student = build_student(student_name, classes, device=device, seed=0, bucket_rows=0 if old else 8).train()
    objective = make_objective(method, student.feature_dim, psi_dim).to(device)
    optimizer = torch.optim.Adam([{"params": list(student.parameters()), "lr": 1e-4},
                                  {"params": list(objective.parameters()), "lr": 1e-2}], fused=not old)
    return student, objective, optimizer, (1.0 if old else None)


def _timed(setups, batches, labels, psi, steps, blocks) -> dict:
    from transfer.training.trainer import train_step

    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def block(key):
        student, objective, optimizer, clip = setups[key]
        start = time.perf_counter()
        for _ in range(steps):
            train_step(student, objective, optimizer, scaler, batches[key[0]], labels[key[0]], psi[key[0]], 1.0,
                       clip, "cpu")
        return (time.perf_counter() - start) / steps

    for key in setups:  # warm-up: allocator, oneDNN kernels
        block(key)
    times = {key: [] for key in setups}
    for _ in range(blocks):
        for key in setups:
            times[key].append(block(key))
    return {key: statistics.median(v) for key, v in times.items()}


def _same_results(texts, labels, psi) -> tuple[float, float]:
    """Max |difference| of the loss and of the updated weights after one step, before vs after (dropout off)."""
    from transfer.training.trainer import train_step

    out = []
    for old in (True, False):
        student, objective, optimizer, clip = _setup("minilm-l6", 2, "aft", psi.shape[1], old, "cpu")
        student.eval()
        loss = train_step(student, objective, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                          student.preprocess(texts, "{text}"), labels, psi, 1.0, None, "cpu")[0]
        out.append((loss, torch.cat([p.detach().flatten() for p in student.parameters()])))
    return abs(out[0][0] - out[1][0]), float((out[0][1] - out[1][1]).abs().max())


def _breakdown(texts, labels, psi_all, idx, reps: int = 3) -> dict:
    """Median seconds of each part of one (after) AFT text step."""
    from storage.catalog import open_catalog

    student, objective, optimizer, _ = _setup("minilm-l6", 2, "aft", psi_all.shape[1], False, "cpu")
    parts = {k: [] for k in ("tokenise", "teacher features", "forward", "backward", "optimizer", "metric flush")}
    for _ in range(reps):
        t0 = time.perf_counter()
        batch = student.preprocess(texts, "{text}")
        t1 = time.perf_counter()
        psi = torch.from_numpy(psi_all)[torch.from_numpy(idx)]
        t2 = time.perf_counter()
        logits, phi = student(batch)
        loss = F.cross_entropy(logits, labels) + objective(phi, psi)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        with open_catalog() as cat:
            cat.query("SELECT count(*) AS n FROM runs")
        t6 = time.perf_counter()
        for key, a, b in zip(parts, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
            parts[key].append(b - a)
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the evidence runs' setting)")
    ap.add_argument("--steps", type=int, default=2, help="text steps per timed block (images: 5x more)")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks per variant, alternating")
    args = ap.parse_args()
    os.environ.setdefault("AFTZOO_HOME", tempfile.mkdtemp(prefix="bench-train-step-"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from zoo.datasets import load_dataset

    limit = _matmul_limit()
    print(f"torch {torch.__version__}, {args.threads} thread(s); matmul limit {limit:.1f} GFLOP/s "
          f"(best float32 GEMM of MiniLM's shapes)", flush=True)

    rt = load_dataset("rotten_tomatoes").split("train")
    idx = np.random.default_rng(0).permutation(len(rt.labels))[:args.batch]
    texts = [rt.inputs[i] for i in idx]
    psi_all = np.random.default_rng(1).standard_normal((len(rt.labels), 768)).astype(np.float32)
    psi_all /= np.linalg.norm(psi_all, axis=1, keepdims=True)  # mpnet's features are unit-norm
    text_labels = torch.from_numpy(rt.labels[idx])
    text_psi = torch.from_numpy(psi_all[idx])

    diff_loss, diff_w = _same_results(texts, text_labels, text_psi)
    print(f"same results: |loss before - after| = {diff_loss:.2e}, max |weight before - after| after one step = "
          f"{diff_w:.2e} (Adam's step is 1e-4)", flush=True)
    parts = _breakdown(texts, text_labels, psi_all, idx)
    total = sum(parts.values())
    print("where an AFT text step's time goes (after): " + ", ".join(
        f"{k} {v * 1000:.0f} ms ({v / total:.0%})" for k, v in parts.items()), flush=True)

    digits = load_dataset("digits").split("train")
    img_idx = np.arange(128)
    batches, labels, psi, setups = {}, {}, {}, {}
    for kind, name, classes in (("text", "minilm-l6", 2), ("image", "resnet18-small", 10)):
        for method in ("stl", "aft"):
            for old in (True, False):
                setups[(kind, method, old)] = _setup(name, classes, method, 768 if kind == "text" else 1280, old,
                                                     "cpu")
        student = setups[(kind, "stl", False)][0]
        if kind == "text":
            batches[kind], labels[kind], psi[kind] = student.preprocess(texts, "{text}"), text_labels, text_psi
        else:
            batches[kind] = student.preprocess(digits.inputs[img_idx], "{text}")
            labels[kind] = torch.from_numpy(digits.labels[img_idx])
            psi[kind] = torch.randn(len(img_idx), 1280)
    text_times = _timed({k: v for k, v in setups.items() if k[0] == "text"}, batches, labels, psi, args.steps,
                        args.blocks)
    image_times = _timed({k: v for k, v in setups.items() if k[0] == "image"}, batches, labels, psi,
                         5 * args.steps, args.blocks)
    times = {**text_times, **image_times}

    flops = _text_flops(setups[("text", "aft", False)][0], batches["text"])
    lengths = batches["text"]["attention_mask"].sum(1)
    print(f"\ntext: minilm-l6, {args.batch} Rotten Tomatoes texts ({int(lengths.sum())} real tokens, "
          f"{args.batch * int(lengths.max())} when padded to the longest); image: resnet18-small at 32 px, 128 digits")
    print("| student | method | before (ms) | after (ms) | after / before | matmul limit reached (before -> after) |")
    print("|---|---|---|---|---|---|")
    for kind in ("text", "image"):
        for method in ("stl", "aft"):
            before, after = times[(kind, method, True)], times[(kind, method, False)]
            reach = (f"{flops / before / 1e9 / limit:.0%} -> {flops / after / 1e9 / limit:.0%}"
                     if kind == "text" else "-")
            print(f"| {kind} | {method.upper()} | {before * 1000:.0f} | {after * 1000:.0f} | {after / before:.3f} | "
                  f"{reach} |")
    ratio = times[("text", "aft", False)] / times[("text", "aft", True)]
    print(f"\ntext AFT step after / before = {ratio:.3f} (target <= 0.5)")
    print(f"AFT / STL after: text {times[('text', 'aft', False)] / times[('text', 'stl', False)]:.3f}, "
          f"image {times[('image', 'aft', False)] / times[('image', 'stl', False)]:.3f}")


if __name__ == "__main__":
    main()
