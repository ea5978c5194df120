"""Extraction and training throughput with 1 and 2 processes (torchrun, gloo on CPU, NCCL on GPUs).

    python -m benchmarks.bench_distributed [--images 512] [--train 1024] [--batch 64] [--steps 45] [--repeats 2]

Every configuration runs under ``python -m torch.distributed.run --standalone`` (one process: the
single-process code path, WORLD_SIZE=1), in a fresh AFTZOO_HOME, each process with
OMP_NUM_THREADS threads; configurations alternate for ``--repeats`` rounds and the best run of each
counts, so that a noisy machine slows them alike. Ratios are against "1 process x all cores"
measured in the same run.

- extraction: ``zoo.extract_info`` of EfficientNet-Lite0 (224 px) on ``--images`` digits, a cache miss,
  timed from a barrier once every process has built its model: computing the shards, merging them
  and indexing the file (what the job waits for), not the model build or the interpreter start.
- training: ``transfer.training.trainer.run`` of AFT, ``resnet18-small`` on digits with the Lite0 features
  (extracted beforehand), global batch ``--batch``; steps/s between the first and the last logged
  step before the end, so start-up, data preparation and the final evaluation are not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TEACHER, STUDENT = "efficientnet-lite0", "resnet18-small"


# ------------------------------------------------------------------------------------------
# Workers: run by torchrun, print one RESULT line from rank 0
# ------------------------------------------------------------------------------------------
def _report(ctx, **values) -> None:
    if ctx.is_main:
        print("RESULT " + json.dumps(values), flush=True)


def work_extract(images: int) -> None:
    import torch.distributed as dist

    from transfer.training import distributed
    from zoo.models import load
    from zoo.registry import get

    with distributed.session() as ctx:
        model = load(get(TEACHER))  # built before the clock starts: every process builds its own
        import zoo

        if ctx.active:
            dist.barrier()
        started = time.perf_counter()
        info = zoo.extract_info(model, "digits", "train", limit=images, batch_size=32, progress=False)
        _report(ctx, seconds=time.perf_counter() - started, cached=info.cached, examples=images)


def work_train(train: int, batch: int, steps: int) -> None:
    from transfer.training import distributed
    from transfer.training.trainer import TransferConfig, run

    log_every = 5
    config = TransferConfig(dataset="digits", student=STUDENT, teachers=[TEACHER], method="aft", steps=steps,
                            lr=1e-3, batch_size=batch, limit_train=train, limit_test=64, log_every=log_every,
                            eval_every=10 * steps, checkpoint_every=10 * steps)
    times: dict[int, float] = {}
    with distributed.session() as ctx:
        result = run(config, progress=False, on_step=lambda m: times.setdefault(m["step"], time.perf_counter()))
        if ctx.is_main:  # on_step runs on rank 0 only
            timed = sorted(s for s in times if s < result.steps)  # the last step also evaluates: not counted
            first, last = timed[0], timed[-1]
            _report(ctx, steps=last - first, seconds=times[last] - times[first], batch=batch, status=result.status)


# ------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------
def launch(processes: int, threads: int, home: str, *worker_args: str) -> dict:
    env = {**os.environ, "AFTZOO_HOME": home, "OMP_NUM_THREADS": str(threads), "AFTZOO_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           "-m", "benchmarks.bench_distributed", "--worker", *worker_args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def prepare_features(home: str, train: int) -> None:
    """The teacher's features for the training runs, once (1 process)."""
    launch(1, os.cpu_count() or 1, home, "extract", "--images", str(train))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512, help="digits images to extract features of")
    ap.add_argument("--train", type=int, default=1024, help="training examples")
    ap.add_argument("--batch", type=int, default=64, help="global batch (each of P processes takes batch / P)")
    ap.add_argument("--steps", type=int, default=45, help="training steps (rounded up to whole epochs)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker = argparse.ArgumentParser()
        worker.add_argument("kind", choices=("extract", "train"))
        worker.add_argument("--images", type=int, default=512)
        worker.add_argument("--train", type=int, default=1024)
        worker.add_argument("--batch", type=int, default=64)
        worker.add_argument("--steps", type=int, default=45)
        w = worker.parse_args(args.worker)
        if w.kind == "extract":
            work_extract(w.images)
        else:
            work_train(w.train, w.batch, w.steps)
        return

    cores = os.cpu_count() or 1
    configs = [(1, cores), (2, max(1, cores // 2)), (1, 1)]  # (processes, threads each); the first is the baseline
    label = {c: f"{c[0]} process{'es' if c[0] > 1 else ''} x {c[1]} thread{'s' if c[1] > 1 else ''}" for c in configs}
    extract: dict = {c: [] for c in configs}
    train: dict = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="aftzoo-bench-dist-") as root:
        prepare_features(os.path.join(root, "train"), args.train)
        for r in range(args.repeats):
            for c in configs:
                home = os.path.join(root, f"extract-{r}-{c[0]}-{c[1]}")
                out = launch(*c, home, "extract", "--images", str(args.images))
                assert not out["cached"]
                extract[c].append(out["seconds"])
                out = launch(*c, os.path.join(root, "train"), "train", "--train", str(args.train), "--batch",
                             str(args.batch), "--steps", str(args.steps))
                train[c].append(out["seconds"] / out["steps"])

    print(f"{cores} CPU cores, repeats {args.repeats} (best run of each counts)")
    print(f"\n== extraction: {TEACHER} (224 px) on {args.images} digits, cache miss: shards, merge, index")
    base = min(extract[configs[0]])
    for c in configs:
        best = min(extract[c])
        print(f"  {label[c]:<26} {best:7.2f} s  {args.images / best:7.1f} ex/s   {base / best:5.2f}x")
    print(f"\n== training: AFT, {STUDENT} on {args.train} digits, global batch {args.batch}, "
          f"teacher {TEACHER} (1280-d)")
    base = min(train[configs[0]])
    for c in configs:
        best = min(train[c])
        print(f"  {label[c]:<26} {1 / best:7.2f} steps/s  {args.batch / best:7.1f} ex/s   {base / best:5.2f}x")


if __name__ == "__main__":
    main()
