"""The trainer's choices that issue 20 asked to measure, not assume: schedule, clipping, AFT's objective lr.

    python -m benchmarks.evidence.engine_checks [--student tiny-bag-text] [--seeds 3] [--steps 300] [--json]

Each variant trains through ``transfer.training.trainer.run`` (every run lands in the catalog, and an
identical completed run is reused) on the first ``--limit-train`` Rotten Tomatoes texts with mpnet-base
as the teacher, evaluated on the whole test split, over ``--seeds`` seeds paired by seed:

- schedule: cosine stepped per epoch (the authors') vs per step;
- clipping: none (the authors') vs each parameter group clipped to norm 1;
- AFT's objective lr (the learning rate of s): 1e-2 (the authors') vs 1e-1, with the spread of sigmoid(s)
  at the end (how far the weights moved).
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

VARIANTS = {
    # name: (method, config overrides)
    "stl / epoch cosine / no clip": ("stl", {}),
    "stl / step cosine / no clip": ("stl", {"schedule": "step"}),
    "stl / epoch cosine / clip 1": ("stl", {"grad_clip": 1.0}),
    "aft / epoch cosine / no clip": ("aft", {}),
    "aft / step cosine / no clip": ("aft", {"schedule": "step"}),
    "aft / epoch cosine / clip 1": ("aft", {"grad_clip": 1.0}),
    "aft / objective lr 0.1": ("aft", {"objective_lr": 0.1}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--student", default="tiny-bag-text")
    ap.add_argument("--teacher", default="mpnet-base")
    ap.add_argument("--limit-train", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout: variant -> per-seed accuracies")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from benchmarks.evidence.common import EVAL_ONLY_AT_END, NO_MID_RUN_CHECKPOINTS, _drop_checkpoints, \
        _find_completed
    from transfer.training.trainer import TransferConfig, history, run

    out = {}
    for name in [v.strip() for v in args.variants.split(",")]:
        method, over = VARIANTS[name]
        accs, spreads, secs = [], [], []
        for seed in range(args.seeds):
            cfg = TransferConfig(dataset=args.dataset, student=args.student, method=method,
                                 teachers=[] if method == "stl" else [args.teacher], beta=args.beta,
                                 steps=args.steps, lr=args.lr, batch_size=64, seed=seed, limit_train=args.limit_train,
                                 eval_every=EVAL_ONLY_AT_END, checkpoint_every=NO_MID_RUN_CHECKPOINTS, **over)
            done = _find_completed(cfg)
            if done is None:
                res = run(cfg, progress=False)
                _drop_checkpoints([res.run_id])
                run_id, acc, wall = res.run_id, res.test_accuracy, res.wall_seconds
            else:
                run_id, acc, wall = done["id"], done["accuracy"], done["wall_seconds"]
            accs.append(acc)
            secs.append(wall)
            if method == "aft":
                h = history(run_id).dropna(subset=["weight_std"])
                spreads.append(float(h["weight_std"].iloc[-1]) if len(h) else math.nan)
            print(f"  {name:<30} seed {seed}: {acc:.4f} ({wall:.0f} s)", flush=True)
        out[name] = {"accuracy": accs, "weight_std": spreads, "seconds": secs}
    if args.json:
        print(json.dumps(out))
        return
    base = {m: out.get(f"{m} / epoch cosine / no clip") for m in ("stl", "aft")}
    print("| variant | test acc (mean ± SE) | paired diff vs the authors' setting | sigmoid(s) std at end |")
    print("|---|---|---|---|")
    for name, r in out.items():
        a = np.array(r["accuracy"])
        ref = base[VARIANTS[name][0]]
        diff = "-"
        if ref is not None and ref is not r:
            d = a - np.array(ref["accuracy"])
            diff = f"{100 * d.mean():+.2f} ± {100 * d.std(ddof=1) / math.sqrt(len(d)):.2f}"
        se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else math.nan
        spread = f"{np.mean(r['weight_std']):.4f}" if r["weight_std"] else "-"
        print(f"| {name} | {100 * a.mean():.2f} ± {100 * se:.2f} | {diff} | {spread} |")


if __name__ == "__main__":
    main()
