"""CLI commands that spread work over processes: ``launch`` (torchrun) and ``sweep`` (the job queue).

``aftzoo launch [OPTIONS] -- extract|transfer ARGS`` builds a ``python -m torch.distributed.run``
command line and replaces itself with it (so Ctrl+C and signals reach torchrun, which stops its
workers); each worker is ``python -m app.launch_worker extract|transfer ARGS``: it joins the process
group (``transfer.training.distributed.session``) and runs the ordinary command, whose library code shards
the work. Rank 0 alone prints results; every rank prints its errors.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Optional

import typer
from rich.table import Table

from app.output import console, err, fail, print_json, user_errors

LAUNCHABLE = ("extract", "transfer")
BACKENDS = ("c10d", "static")
# Everything after the first word that is not an option of `launch` itself goes to the command it launches.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False}


def _processes_per_node(requested: Optional[int]) -> int:
    if requested is not None:
        if requested < 1:
            fail(f"--nproc-per-node must be at least 1; got {requested}", code=2)
        return requested
    import torch

    return max(1, torch.cuda.device_count())  # one process per GPU; one process without CUDA


def torchrun_command(args: list[str], *, nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: Optional[str] = None, rdzv_id: str = "aftzoo",
                     rdzv_backend: str = "c10d") -> list[str]:
    """The torchrun command line that runs ``aftzoo ARGS`` in ``nproc_per_node`` processes on each of ``nnodes`` nodes.

    One node without an endpoint: ``--standalone`` (a private rendezvous on a free port). Several nodes:
    every node runs the same command against ``rdzv_endpoint``, a HOST:PORT that all nodes reach, usually
    on the first node; with the ``c10d`` backend ranks are given out at the rendezvous, with ``static``
    each node passes its own ``node_rank`` and takes ranks ``node_rank * nproc_per_node`` onwards.
    """
    if not args or args[0] not in LAUNCHABLE:
        raise ValueError(f"launch runs one of: {', '.join(LAUNCHABLE)}; got {shlex.join(args) or 'nothing'}")
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"--nproc-per-node and --nnodes must be at least 1; got {nproc_per_node} and {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank must be in 0..{nnodes - 1} (one per node); got {node_rank}")
    if rdzv_backend not in BACKENDS:
        raise ValueError(f"--rdzv-backend must be one of {', '.join(BACKENDS)}; got {rdzv_backend!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", rdzv_id):
        raise ValueError(f"--rdzv-id is letters, digits, '.', '_' and '-' (the same on every node); got {rdzv_id!r}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node),
           "--nnodes", str(nnodes)]
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise ValueError("several nodes need --rdzv-endpoint HOST:PORT, an address of the first node that every "
                             "node reaches (e.g. node0.cluster:29500)")
        cmd.append("--standalone")
    else:
        if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", rdzv_endpoint):
            raise ValueError(f"--rdzv-endpoint must be HOST:PORT; got {rdzv_endpoint!r}")
        cmd += ["--rdzv-backend", rdzv_backend, "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
        if rdzv_backend == "static":  # torchrun ignores the node rank with c10d, which assigns ranks itself
            cmd += ["--node-rank", str(node_rank)]
    return [*cmd, "-m", "app.launch_worker", *args]


def launch_cmd(
        ctx: typer.Context,
        nproc_per_node: Optional[int] = typer.Option(
            None, "--nproc-per-node", help="Processes on this node (default: one per GPU; 1 without CUDA)."),
        nnodes: int = typer.Option(1, "--nnodes", help="Nodes taking part; each runs this same command."),
        node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0 to nnodes-1 (static rendezvous)."),
        rdzv_endpoint: Optional[str] = typer.Option(
            None, "--rdzv-endpoint", help="HOST:PORT of the rendezvous, on the first node (several nodes)."),
        rdzv_id: str = typer.Option("aftzoo", "--rdzv-id", help="A job id, the same on every node."),
        rdzv_backend: str = typer.Option("c10d", "--rdzv-backend", help="c10d (ranks given out at the rendezvous) "
                                         "or static (ranks from --node-rank)."),
        timeout: Optional[float] = typer.Option(
            None, "--timeout", help="Seconds a process waits for a silent peer before failing "
            "(default: AFTZOO_DIST_TIMEOUT, else 900)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the torchrun command instead of running it.")
) -> None:
    """Run `extract` or `transfer` in several processes with torchrun, on this node or on many:
    aftzoo launch --nproc-per-node 2 -- transfer -d digits -s resnet18-small -t efficientnet-lite0"""
    if timeout is not None and not timeout > 0:
        fail(f"--timeout must be a number of seconds > 0; got {timeout}", code=2)
    nproc = _processes_per_node(nproc_per_node)
    try:
        cmd = torchrun_command(list(ctx.args), nproc_per_node=nproc, nnodes=nnodes,
                               node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id,
                               rdzv_backend=rdzv_backend)
    except ValueError as exc:
        fail(str(exc), code=2)
    if dry_run:
        console.print(shlex.join(cmd), highlight=False, markup=False, soft_wrap=True)
        return
    env = dict(os.environ)
    if timeout is not None:
        env["AFTZOO_DIST_TIMEOUT"] = str(timeout)
    # torchrun would give each process 1 thread; share this node's cores among its processes instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    err.print(f"launch: {shlex.join(cmd)}", highlight=False, markup=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)  # torchrun takes this process's place: signals and exit status are its own


# ---------------------------------------------------------------------------------------------
# aftzoo sweep
# ---------------------------------------------------------------------------------------------
def _numbers(option: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        fail(f"{option} must be one or more comma-separated numbers, e.g. 0.1,1,10; got {text!r}", code=2)
    return values


def sweep_cmd(
        dataset: str = typer.Option(..., "--dataset", "-d", help="Data set name."),
        student: str = typer.Option(..., "--student", "-s", help="Student model name."),
        teachers: str = typer.Option("", "--teachers", "-t", help="Comma-separated teacher names."),
        method: str = typer.Option("aft", "--method", help="aft, stl, kd, rkd, ft, btune, or an AFT ablation."),
        beta: str = typer.Option("1.0", "--beta", help="Regulariser weights to try, comma-separated: 0.1,1,10."),
        lr: str = typer.Option("1e-4", "--lr", help="Student learning rates to try, comma-separated."),
        objective_lr: str = typer.Option("1e-2", "--objective-lr", help="Objective learning rates to try."),
        parallel: int = typer.Option(2, "--parallel", help="Trials trained at once, each in its own process; "
                                     "they share the cores."),
        holdout: float = typer.Option(0.1, "--holdout", help="Part of the training set the trials are scored on "
                                      "(0: the test split, optimistic for the best trial)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per trial (default: TransferConfig's)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default 128 (images) / 64 (text)."),
        seed: int = typer.Option(0, "--seed"),
        limit_train: Optional[int] = typer.Option(None, "--limit-train", help="Use the first N training examples."),
        limit_test: Optional[int] = typer.Option(None, "--limit-test", help="Evaluate on the first N test examples."),
        eval_every: int = typer.Option(100, "--eval-every"),
        from_scratch: bool = typer.Option(False, "--from-scratch", help="Initialise the student at random."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Try every combination of --beta, --lr and --objective-lr as parallel jobs; print the trials, best first."""
    from transfer.jobs.queue import sweep
    from transfer.training.trainer import TransferConfig

    grid = {"beta": _numbers("--beta", beta), "lr": _numbers("--lr", lr),
            "objective_lr": _numbers("--objective-lr", objective_lr)}
    base = TransferConfig(dataset=dataset, student=student, teachers=[t.strip() for t in teachers.split(",")
                                                                       if t.strip()],
                          method=method, beta=grid["beta"][0], batch_size=batch_size, seed=seed,
                          **({"steps": steps} if steps else {}),
                          limit_train=limit_train, limit_test=limit_test, eval_every=eval_every,
                          pretrained=not from_scratch)
    with user_errors("interrupted; the running trials were cancelled and keep their checkpoints"):
        rows = sweep(base, grid, parallel=parallel, holdout_fraction=holdout)
    best = rows[0] if rows and rows[0]["state"] == "completed" else None
    failed = [r for r in rows if r["state"] != "completed"]
    if as_json:
        print_json({"trials": rows, "best": best})
    else:
        scored = "hold-out" if holdout else "test"
        table = Table("run", *grid, "state", f"{scored} accuracy", "minutes", "error",
                      title=f"{len(rows)} trials, {parallel} at a time")
        for r in rows:
            table.add_row(r["run_id"], *(f"{r[k]:g}" for k in grid), r["state"],
                          "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                          "-" if r["seconds"] is None else f"{r['seconds'] / 60:.2f}", r["error"] or "")
        console.print(table)
        if best:
            console.print(f"best: {best['run_id']} (" + ", ".join(f"{k} {best[k]:g}" for k in grid)
                          + f"), {scored} accuracy {best['accuracy']:.4f}", highlight=False)
    if failed:
        raise typer.Exit(1)

