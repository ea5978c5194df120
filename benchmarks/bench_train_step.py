"""Training-step time of AFT against STL: same student, same batch, measured in one run.

    python -m benchmarks.bench_train_step [--student resnet18-small] [--batch 64] [--teacher-dim 1280]

Both use ``transfer.training.trainer.train_step`` (the trainer's own step). Blocks of steps
alternate between the two methods so that a noisy machine slows both alike; the ratio
of median step times is reported (target: AFT / STL <= 1.05 at batch 64 on CPU).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from storage.settings import resolve_device
from transfer.training.objectives import make_objective
from transfer.training.students import build_student
from transfer.training.trainer import train_step
from zoo.datasets import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="resnet18-small", help="an image student (the batch is digits images)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--teacher-dim", type=int, default=1280, help="width of the teacher features (Lite0: 1280)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=6, help="timed blocks per method, alternating")
    args = ap.parse_args()

    device = resolve_device()
    torch.manual_seed(0)
    data = load_dataset("digits").split("train")
    idx = np.arange(args.batch)
    labels = torch.from_numpy(data.labels[idx]).to(device)
    psi = torch.randn(args.batch, args.teacher_dim, device=device)

    setups = {}
    for method in ("stl", "aft"):
        student = build_student(args.student, 10, device=device).train()
        objective = make_objective(method, student.feature_dim, args.teacher_dim).to(device)
        opt = torch.optim.Adam([{"params": list(student.parameters()), "lr": 1e-3},
                                {"params": list(objective.parameters()), "lr": 1e-2}])
        batch = student.preprocess(data.inputs[idx], "{text}")
        setups[method] = (student, objective, opt, torch.amp.GradScaler(device, enabled=False), batch)

    def block(method: str) -> float:
        student, objective, opt, scaler, batch = setups[method]
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(student, objective, opt, scaler, batch, labels, psi, 1.0, 1.0, device)
        return (time.perf_counter() - start) / args.steps

    for method in setups:  # warm-up: allocator, oneDNN kernels
        block(method)
    times = {"stl": [], "aft": []}
    for _ in range(args.blocks):
        for method in ("stl", "aft"):
            times[method].append(block(method))
    stl, aft = statistics.median(times["stl"]), statistics.median(times["aft"])
    print(f"student {args.student}, batch {args.batch}, teacher dim {args.teacher_dim}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"STL step: {stl * 1000:.1f} ms (median of {args.blocks} blocks of {args.steps})")
    print(f"AFT step: {aft * 1000:.1f} ms")
    print(f"AFT / STL = {aft / stl:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
