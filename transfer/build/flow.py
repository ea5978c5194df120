"""Build a small model in one flow: rank -> candidates -> hold-out trials -> winner on all data -> export -> card.

1. Rank the teachers of the data's modality (LogME and a linear probe) and keep the top k.
2. Price the plan from measured times and fit it to ``--budget-minutes`` (``transfer.build.budget``).
3. Train every candidate (STL, and each teacher method at each beta of its own grid) on the training
   split less a hold-out, as jobs of a ``JobQueue`` in parallel; each is a recorded run.
4. Choose on the hold-out by the one-standard-error rule: the simplest candidate whose accuracy is within
   one standard error of the difference from the best, and never one below STL.
5. Retrain the choice on all the training data, export it to ONNX (parity checked) and to int8, ship int8
   when its test accuracy stays within the tolerance, and write the report card (``transfer.build.report``).

The build's id is a hash of its configuration. Its plan is saved on first run, and its runs are named
from the id, so a rerun of the same build (after kill -9, say) reuses completed trials from the catalog
and resumes the interrupted ones from their checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from storage.catalog import open_catalog
from transfer.build import budget
from transfer.build.config import (DEFAULT_METHODS, DEFAULT_STUDENTS, SCRATCH_LR, BuildConfig, BuildError,
                                   _TRAINER, build_dir)
from transfer.training.objectives import BETA_GRIDS

# Simpler first: no teacher; a linear map; an MLP; relations; LogME weights; learned kernel weights.
SIMPLICITY = ("stl", "kd", "ft", "rkd", "btune", "aft", "aft_identity", "aft_rbf", "aft_dense", "aft_nokernel")
RANK_SAMPLE = 300   # examples ranked under a budget (then only the chosen teachers are extracted in full)
LATENCY_INPUTS = 16
POLL_SECONDS = 1.0


# ---------------------------------------------------------------------------------------------
# Progress: a status file the app reads, and a callback the CLI draws
# ---------------------------------------------------------------------------------------------
class Status:
    def __init__(self, folder: Path, build_id: str, clock: budget.Clock, on_progress: Callable | None):
        self.path, self.clock, self.on_progress = folder / "status.json", clock, on_progress
        self.state = {"build_id": build_id, "stage": "starting", "fraction": 0.0, "message": "", "done": False,
                      "error": None, "eta_seconds": None, "budget_seconds": clock.budget}

    def update(self, **fields) -> None:
        self.state.update(fields, elapsed_seconds=round(self.clock.elapsed(), 1), pid=os.getpid())
        tmp = self.path.with_name(f".status.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state, default=str))
        os.replace(tmp, self.path)
        if self.on_progress:
            self.on_progress(dict(self.state))


def read_status(build_id: str) -> dict | None:
    path = build_dir(build_id) / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Resolving the configuration: student, teachers, methods, grids
# ---------------------------------------------------------------------------------------------
def auto_teachers(modality: str, student: str) -> list[str]:
    """Every teacher of ``modality`` whose real weights are on this machine (not random, not the student)."""
    from zoo.registry import list_specs, weights_status

    return [s.name for s in list_specs(role="teacher", modality=modality)
            if s.name != student and weights_status(s) in ("pack", "cache", "folder")]


def _resolve(cfg: BuildConfig) -> dict:
    from zoo.datasets import load_dataset
    from zoo.registry import load_persisted, weights_status
    from zoo.registry import resolve as get_spec  # an entry point: models of earlier sessions and hub names too

    data = load_dataset(cfg.dataset)
    if cfg.teachers == "auto":
        load_persisted()  # "auto" picks among every teacher this machine knows, registered earlier ones included
    student = cfg.student or DEFAULT_STUDENTS[data.modality]
    spec = get_spec(student)
    if spec.modality != data.modality:
        raise BuildError(f"student {student} reads {spec.modality}, but {cfg.dataset} holds {data.modality}s; "
                         f"choose a {data.modality} student (`aftzoo models --role student --modality {data.modality}`)")
    scratch = weights_status(spec) in (None, "random")
    teachers = cfg.teachers if isinstance(cfg.teachers, list) else (
        auto_teachers(data.modality, student) if cfg.teachers == "auto" else
        [t.strip() for t in str(cfg.teachers).split(",") if t.strip()])
    for t in teachers:
        if get_spec(t).modality != data.modality:
            raise BuildError(f"teacher {t} reads {get_spec(t).modality}s, but {cfg.dataset} holds {data.modality}s")
    methods = list(dict.fromkeys(["stl", *(cfg.methods or DEFAULT_METHODS[data.modality])]))
    if not teachers:
        methods = ["stl"]
    grids = {m: [float(b) for b in (cfg.betas or {}).get(m) or BETA_GRIDS[m]] for m in methods if m != "stl"}
    n_train = len(data.split("train")) if not cfg.limit_train else min(cfg.limit_train, len(data.split("train")))
    return {"modality": data.modality, "student": student, "params": spec.params, "pretrained": not scratch, "teachers": teachers,
            "methods": methods, "grids": grids, "n_train": n_train,
            "lr": cfg.lr or (SCRATCH_LR if scratch else _TRAINER["lr"]),
            "batch_size": min(cfg.batch_size or (128 if data.modality == "image" else 64), n_train)}


def _transfer_config(cfg: BuildConfig, r: dict, plan: budget.Plan, method: str, beta: float | None, *,
                     holdout: bool, parent: str):
    from transfer.training.trainer import TransferConfig

    steps = plan.steps
    every = cfg.checkpoint_every or max(1, steps // 5)
    return TransferConfig(**{
        **cfg.extra, "dataset": cfg.dataset, "student": r["student"],
        "teachers": [] if method == "stl" else list(plan.teachers), "method": method,
        "beta": 0.0 if beta is None else float(beta), "steps": steps, "lr": r["lr"], "batch_size": r["batch_size"],
        "seed": cfg.seed, "pretrained": r["pretrained"], "limit_train": _limit(cfg, r, plan),
        "limit_test": cfg.limit_test, "holdout_fraction": cfg.holdout_fraction if holdout else 0.0,
        "eval_every": max(1, steps // 4), "log_every": max(1, min(10, steps // 10)), "checkpoint_every": every,
        "device": cfg.device, "parent": parent})


def _limit(cfg: BuildConfig, r: dict, plan: budget.Plan) -> int | None:
    """The trainer's limit_train for the plan: the user's, or the examples the budget kept."""
    return cfg.limit_train if plan.examples >= r["n_train"] else plan.examples


def _parallel(cfg: BuildConfig) -> int:
    """Trials at once: the user's, else one per core (up to 4): on CPU their steps share the cores, but their
    process start-ups and evaluations overlap."""
    return cfg.parallel or max(1, min(os.cpu_count() or 1, 4))


def _run_id(build_id: str, method: str, beta: float | None, final: bool = False) -> str:
    return f"{build_id}-{'final-' if final else ''}{method}" + ("" if beta is None else f"-b{beta:g}")


# ---------------------------------------------------------------------------------------------
# Ranking and pricing (once per build: saved in plan.json)
# ---------------------------------------------------------------------------------------------
def _rank(cfg: BuildConfig, r: dict, status: Status) -> tuple[list[dict], dict[str, float]]:
    """Score each teacher; return the rows best first and each teacher's seconds per extracted example."""
    from transfer.ranking import rank

    limit = min(RANK_SAMPLE, r["n_train"]) if cfg.budget_minutes else cfg.limit_train
    rows, per_example = [], {}
    for i, teacher in enumerate(r["teachers"]):
        status.update(stage="rank", fraction=0.02 + 0.08 * i / len(r["teachers"]),
                      message=f"ranking {teacher} ({i + 1} of {len(r['teachers'])})")
        started = time.perf_counter()
        frame = rank(cfg.dataset, [teacher], ("logme", "probe"), limit=limit, progress=False)
        per_example[teacher] = (time.perf_counter() - started) / frame["n"].iloc[0]
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in frame.iloc[0].to_dict().items()})
    rows.sort(key=lambda row: -(row["logme"] if row["logme"] is not None else -math.inf))
    return rows, per_example


def _step_seconds(cfg: BuildConfig, r: dict) -> float:
    """Seconds per training step of the student, timed on real batches (one warm-up, then two)."""
    import numpy as np
    import torch

    from storage.settings import resolve_device
    from transfer.training.objectives import make_objective
    from transfer.training.students import build_student
    from transfer.training.trainer import train_step
    from zoo.datasets import load_dataset
    from zoo.prompts import DEFAULT_PROMPT, prompt_for

    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset)
    train = data.split("train")
    student = build_student(r["student"], data.num_classes, pretrained=r["pretrained"], device=device)
    objective = make_objective("stl", student.feature_dim, 0)
    optimizer = torch.optim.Adam(student.parameters(), lr=r["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    prompt = prompt_for(cfg.dataset) if r["modality"] == "text" and student.spec.prompt else DEFAULT_PROMPT
    idx = np.arange(min(r["batch_size"], len(train)))
    inputs = train.inputs[idx] if isinstance(train.inputs, np.ndarray) else [train.inputs[i] for i in idx]
    labels = torch.from_numpy(train.labels[idx]).to(device)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        train_step(student, objective, optimizer, scaler, student.preprocess(inputs, prompt), labels, None, 0.0,
                   1.0, device)
        times.append(time.perf_counter() - started)
    return float(np.mean(times[1:]))


def _plan(cfg: BuildConfig, r: dict, clock: budget.Clock, status: Status) -> dict:
    ranking, per_example = _rank(cfg, r, status) if r["teachers"] else ([], {})
    chosen = [row["model"] for row in ranking][:cfg.top_k]
    status.update(stage="plan", fraction=0.1, message="timing training steps of the student")
    step_s = _step_seconds(cfg, r)
    ranked = int(ranking[0]["n"]) if ranking else None
    costs = budget.Costs(step_s, r["batch_size"], cfg.holdout_fraction, {t: per_example[t] for t in chosen}, ranked,
                         parallel=_parallel(cfg))
    methods = r["methods"] if chosen else ["stl"]
    full = budget.Plan(methods, {m: r["grids"][m] for m in methods if m != "stl"}, chosen, cfg.steps, r["n_train"])
    plan = budget.fit(full, costs, clock.left())
    return {"resolved": r, "ranking": ranking, "costs": dataclasses.asdict(costs), "plan": plan.to_dict(),
            "planned_at_seconds": round(clock.elapsed(), 1)}


# ---------------------------------------------------------------------------------------------
# Trials and the final run, as jobs of a queue
# ---------------------------------------------------------------------------------------------
def _run_jobs(queue, runs: list[tuple[str, object]], status: Status, rate: budget.StepRate, *, stage: str,
              span: tuple[float, float], extra_seconds: float, deadline: float | None) -> dict[str, str]:
    """Train each (run_id, TransferConfig) not yet completed; return how each came to be (trained, reused,
    resumed). Past ``deadline`` (seconds left), runs not yet started are dropped (the first one never)."""
    how, jobs = {}, {}
    with open_catalog() as cat:
        rows = {rid: cat.get_run(rid) for rid, _ in runs}
    for rid, tc in runs:
        row = rows[rid]
        if row is not None and row["status"] == "completed":
            how[rid] = "reused"
        elif row is None:
            jobs[rid], how[rid] = queue.submit(tc, run_id=rid), "trained"
        else:
            jobs[rid], how[rid] = queue.submit_resume(rid), f"resumed (stopped at step {row['step']})"
    first = runs[0][0]
    while True:
        states = {rid: queue.get(job.id) for rid, job in jobs.items()}
        with open_catalog(wait=60) as cat:
            rows = {rid: cat.get_run(rid) or {} for rid, _ in runs}
        done = sum(int(rows[rid].get("step") or 0) for rid, _ in runs)
        total = sum(int(rows[rid].get("total_steps") or tc.steps) for rid, tc in runs)
        rate.observe_start(done)
        left = rate.time_left(done, total, extra_seconds)
        status.update(stage=stage, fraction=span[0] + (span[1] - span[0]) * done / max(total, 1), eta_seconds=left,
                      message=f"{stage}: {sum(s.done for s in states.values())} of {len(jobs)} jobs done, "
                              f"{done}/{total} steps")
        if all(s.done for s in states.values()):
            break
        if deadline is not None and status.clock.left() is not None and status.clock.left() < deadline:
            for rid, s in states.items():
                if s.state == "queued" and rid != first:
                    queue.cancel(s.id)
                    how[rid] = "dropped: out of time"
        time.sleep(POLL_SECONDS)
    for rid, s in states.items():
        if s.state != "completed" and not how[rid].startswith("dropped"):
            how[rid] = f"{s.state}: {s.error}"
    return how


def _test_accuracy(run_id: str) -> float | None:
    """The trial's student (trained on the training split less the hold-out) on the test split, recorded in the
    catalog as its ``test_acc`` metric; read from there when already measured."""
    from storage.settings import resolve_device
    from transfer.training.students import build_student
    from transfer.training.trainer import evaluate, load_checkpoint
    from zoo.datasets import load_dataset
    from zoo.prompts import DEFAULT_PROMPT, prompt_for

    with open_catalog() as cat:
        row = cat.get_run(run_id)
        hist = cat.metrics(run_id)
    if "test_acc" in hist.columns and hist["test_acc"].notna().any():
        return float(hist["test_acc"].dropna().iloc[-1])
    if row is None or row["status"] != "completed" or not row.get("checkpoint") or not Path(row["checkpoint"]).is_file():
        return None
    c = row["config"]
    device = resolve_device(c.get("device"))
    data = load_dataset(row["dataset"])
    test = data.split("test")
    if c.get("limit_test"):
        test = test.head(c["limit_test"])
    student = build_student(row["student"], data.num_classes, pretrained=bool(c.get("pretrained", True)),
                            device=device, seed=int(c.get("seed", 0)))
    student.load_state_dict(load_checkpoint(row["checkpoint"], device)["student"])
    prompt = prompt_for(row["dataset"]) if data.modality == "text" and student.spec.prompt else DEFAULT_PROMPT
    acc = evaluate(student, test.inputs, test.labels, prompt, int(c.get("batch_size_used") or 64), device)
    with open_catalog() as cat:
        cat.log_metrics(run_id, [(int(row["step"]), "test_acc", float(acc))])
    Path(row["checkpoint"]).unlink(missing_ok=True)  # a trial is never exported: its 100+ MB can go
    return float(acc)


def standard_error(accuracy: float, n: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def choose(candidates: list[dict]) -> tuple[dict, str]:
    """The one-standard-error rule, never below STL: among the candidates whose hold-out accuracy is within one
    standard error of the difference from the best, the simplest (method, then smaller beta); return it and why."""
    done = [c for c in candidates if c["holdout_accuracy"] is not None]
    stl = next((c for c in done if c["method"] == "stl"), None)
    if stl is None:
        raise BuildError("the STL trial did not complete, so nothing can be compared with it; see its run's error "
                         "and rerun the same build to resume it")
    best = max(done, key=lambda c: c["holdout_accuracy"])

    def gap_se(c):
        return math.hypot(best["holdout_se"], c["holdout_se"])

    within = [c for c in done if best["holdout_accuracy"] - c["holdout_accuracy"] <= gap_se(c)
              and c["holdout_accuracy"] >= stl["holdout_accuracy"]]
    chosen = min(within, key=lambda c: (SIMPLICITY.index(c["method"]) if c["method"] in SIMPLICITY else 99,
                                        c["beta"] or 0.0))
    pts = lambda x: f"{100 * x:.1f}"  # noqa: E731 - percentage points, one decimal
    n = stl["holdout_n"]
    if chosen is stl and best is stl:
        why = (f"STL had the best hold-out accuracy ({pts(stl['holdout_accuracy'])}% of {n}): no teacher helped, "
               "so the card ships the STL student.")
    elif chosen is stl:
        why = (f"{best['label']} was ahead of STL by {pts(best['holdout_accuracy'] - stl['holdout_accuracy'])} "
               f"points on {n} hold-out examples, inside the noise (one standard error of the difference: "
               f"{pts(gap_se(stl))} points): no teacher helped measurably, so the simpler STL student ships.")
    elif chosen is not best:
        why = (f"{best['label']} was best on the hold-out, but {chosen['label']} is within one standard error of it "
               f"({pts(gap_se(chosen))} points) and simpler, so {chosen['label']} ships; it beat STL by "
               f"{pts(chosen['holdout_accuracy'] - stl['holdout_accuracy'])} points.")
    else:
        why = (f"{chosen['label']} beat STL by {pts(chosen['holdout_accuracy'] - stl['holdout_accuracy'])} points "
               f"on {n} hold-out examples, more than one standard error of the difference "
               f"({pts(gap_se(stl))} points), and no simpler candidate came within one standard error of it.")
    return chosen, why


def _candidates(cfg: BuildConfig, build_id: str, plan: budget.Plan, how: dict, r: dict) -> list[dict]:
    n_hold = math.ceil(cfg.holdout_fraction * plan.examples)
    out = []
    with open_catalog() as cat:
        rows = {_run_id(build_id, m, b): cat.get_run(_run_id(build_id, m, b)) for m, b in plan.trials()}
    for method, beta in plan.trials():
        rid = _run_id(build_id, method, beta)
        row = rows[rid] or {}
        acc = row.get("test_accuracy") if row.get("status") == "completed" else None
        label = "STL" if method == "stl" else f"{method.upper()} (beta {beta:g})"
        out.append({"run_id": rid, "method": method, "beta": beta, "label": label,
                    "teachers": [] if method == "stl" else list(plan.teachers), "holdout_accuracy": acc,
                    "holdout_n": n_hold, "holdout_se": None if acc is None else standard_error(acc, n_hold),
                    "how": how.get(rid), "status": row.get("status"), "wall_seconds": row.get("wall_seconds"),
                    "steps": row.get("step")})
    return out


# ---------------------------------------------------------------------------------------------
# Export, int8 decision, latency, learned weights
# ---------------------------------------------------------------------------------------------
def _export(final_id: str, folder: Path, tolerance: float) -> dict:
    """An fp32 and an int8 export of the final run (reused when already there); int8 ships when its test accuracy
    stays within ``tolerance`` of fp32's."""
    from transfer.export.onnx import export_run
    from transfer.serving.runtime import MANIFEST_FILE, read_manifest

    out = {}
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        path = folder / kind
        if (path / MANIFEST_FILE).is_file() and read_manifest(path).get("run_id") == final_id:
            m = read_manifest(path)
        else:
            export_run(final_id, out=path, quantize=quantize)
            m = read_manifest(path)
        out[kind] = {"path": str(path), "parity": m.get("parity"), "quantization": m.get("quantization"),
                     "bytes": sum(f["bytes"] for f in m["files"].values())}
    q = out["int8"]["quantization"]
    ship = "int8" if q["accuracy_change"] >= -tolerance else "fp32"
    decision = (f"int8 test accuracy {100 * q['accuracy_int8']:.1f}% against float32's {100 * q['accuracy_fp32']:.1f}% "
                f"on {q['eval_examples']} test examples ({100 * q['accuracy_change']:+.1f} points; tolerance "
                f"-{100 * tolerance:.1f}): ships {'int8' if ship == 'int8' else 'float32'}")
    shipped = Path(out[ship]["path"])
    return {**out, "shipped": ship, "decision": decision, "path": str(shipped),
            "serve_command": f"aftzoo serve {shipped}"}


def _zip(folder: Path, shipped: Path, build_id: str) -> str:
    import shutil

    base = folder / f"{build_id}-{shipped.name}"
    return shutil.make_archive(str(base), "zip", root_dir=shipped.parent, base_dir=shipped.name)


def _latency(shipped: str, teachers: list[str]) -> dict:
    """Milliseconds per input of the shipped student (onnxruntime) and of each teacher (PyTorch), same inputs."""
    from transfer.export.latency import seconds_per_input, student_vs_teacher
    from transfer.serving.runtime import load_export
    from zoo.datasets import load_dataset

    rows = [student_vs_teacher(shipped, t, n=LATENCY_INPUTS, batch=LATENCY_INPUTS) for t in teachers]
    if rows:
        return {"student_ms": min(r["student_ms"] for r in rows), "inputs": LATENCY_INPUTS, "teachers": rows}
    student = load_export(shipped)
    inputs = load_dataset(student.manifest["dataset"]).split("test").inputs[:LATENCY_INPUTS]
    return {"student_ms": 1000 * seconds_per_input(student.logits, inputs, LATENCY_INPUTS),
            "inputs": LATENCY_INPUTS, "teachers": []}


def _aft_weights(run_id: str, method: str, teachers: list[str]) -> dict[str, float]:
    """AFT's mean learned weight sigmoid(s) on each teacher's dimensions, at the final run's last evaluation."""
    if not method.startswith("aft"):
        return {}
    with open_catalog() as cat:
        hist = cat.metrics(run_id)
    names = {t: f"weight_mean/{t}" for t in teachers} if len(teachers) > 1 else {teachers[0]: "weight_mean"}
    return {t: float(hist[c].dropna().iloc[-1]) for t, c in names.items() if c in hist.columns and hist[c].notna().any()}


# ---------------------------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------------------------
def run_build(config: BuildConfig | dict, *, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Build a small model (see the module docstring); return the summary the report card is made from."""
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.from_dict(dict(config))
    cfg.validate()
    build_id = cfg.build_id()
    folder = build_dir(build_id)
    folder.mkdir(parents=True, exist_ok=True)
    clock = budget.Clock(cfg.budget_minutes)
    status = Status(folder, build_id, clock, on_progress)
    status.update(stage="starting", message="checking the data set and the models")
    try:
        summary = _build(cfg, build_id, folder, clock, status)
    except BaseException as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        status.update(stage="failed", done=True, error=message, eta_seconds=None)
        try:
            with open_catalog(wait=5) as cat:
                cat.update_run(build_id, status="failed", error=message[:2000])
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            pass
        raise
    status.update(stage="done", fraction=1.0, done=True, eta_seconds=0.0, message=summary["why"],
                  card=summary["card"]["markdown"], html=summary["card"]["html"], zip=summary["export"]["zip"],
                  export=summary["export"]["path"], serve_command=summary["export"]["serve_command"])
    return summary


def _open_build_row(cfg: BuildConfig, build_id: str, r: dict) -> None:
    with open_catalog() as cat:
        if cat.get_run(build_id) is None:
            cat.create_run(build_id, dataset=cfg.dataset, student=r["student"], teachers=r["teachers"],
                           method="build", config={"kind": "build", "build": cfg.to_dict()}, total_steps=None)
        else:
            cat.update_run(build_id, status="running", error=None)


def _load_plan(cfg: BuildConfig, folder: Path, clock: budget.Clock, status: Status) -> dict:
    path = folder / "plan.json"
    if path.is_file():
        return json.loads(path.read_text())
    saved = _plan(cfg, _resolve(cfg), clock, status)
    path.write_text(json.dumps(saved, indent=2, default=str))
    return saved


def _build(cfg: BuildConfig, build_id: str, folder: Path, clock: budget.Clock, status: Status) -> dict:
    from transfer.build import report
    from transfer.build.config import to_toml
    from transfer.jobs.queue import JobQueue
    from zoo.datasets import load_dataset
    from zoo.extract import extract_info

    saved = _load_plan(cfg, folder, clock, status)
    r, plan, costs = saved["resolved"], budget.Plan.from_dict(saved["plan"]), budget.Costs(**saved["costs"])
    _open_build_row(cfg, build_id, r)
    data = load_dataset(cfg.dataset)
    for i, teacher in enumerate(plan.teachers):  # once here: the parallel trials then read the cache
        status.update(stage="features", fraction=0.1 + 0.1 * i / len(plan.teachers),
                      message=f"features of {teacher} for {plan.examples:,} training examples")
        extract_info(teacher, data, "train", limit=_limit(cfg, r, plan), device=cfg.device, progress=False)

    final_steps = plan.steps
    reserve = (budget.SAFETY * final_steps * costs.step_seconds + budget.EXPORT_SECONDS
               + budget.LATENCY_SECONDS_PER_TEACHER * len(plan.teachers))
    rate = budget.StepRate(costs.step_seconds)
    queue = JobQueue(workers=_parallel(cfg))
    try:
        trials = [(_run_id(build_id, m, b), _transfer_config(cfg, r, plan, m, b, holdout=True, parent=build_id))
                  for m, b in plan.trials()]
        # Out of time, the trials not yet started are dropped (STL, the first, never) unless the plan was already
        # over the budget at its smallest: then the card says so, and the smallest plan runs whole.
        how = _run_jobs(queue, trials, status, rate, stage="trials", span=(0.2, 0.75), extra_seconds=reserve,
                        deadline=reserve if plan.fits else None)
        candidates = _candidates(cfg, build_id, plan, how, r)
        for i, c in enumerate(candidates):
            status.update(stage="evaluate", fraction=0.75 + 0.03 * i / len(candidates),
                          message=f"test accuracy of {c['label']}")
            c["test_accuracy"] = _test_accuracy(c["run_id"])
        chosen, why = choose(candidates)
        final_id = _run_id(build_id, chosen["method"], chosen["beta"], final=True)
        final_cfg = _transfer_config(cfg, r, plan, chosen["method"], chosen["beta"], holdout=False, parent=build_id)
        final_how = _run_jobs(queue, [(final_id, final_cfg)], status, rate, stage="final", span=(0.78, 0.9),
                              extra_seconds=reserve - final_steps * costs.step_seconds, deadline=None)
    finally:
        queue.shutdown()
    with open_catalog() as cat:
        final = cat.get_run(final_id)
    if final is None or final["status"] != "completed":
        raise BuildError(f"the final run {final_id} did not complete ({final_how.get(final_id)}); rerun the same "
                         "build to resume it")
    status.update(stage="export", fraction=0.9, message="exporting to ONNX (float32 and int8), checking parity",
                  eta_seconds=budget.EXPORT_SECONDS + budget.LATENCY_SECONDS_PER_TEACHER * len(plan.teachers))
    export = _export(final_id, folder, cfg.int8_tolerance)
    export["zip"] = _zip(folder, Path(export["path"]), build_id)
    status.update(stage="latency", fraction=0.96, message="timing the student against the teachers",
                  eta_seconds=budget.LATENCY_SECONDS_PER_TEACHER * len(plan.teachers))
    (folder / "build.toml").write_text(to_toml(cfg))
    summary = {
        "build_id": build_id, "dataset": cfg.dataset, "config": cfg.to_dict(), "resolved": r,
        "config_file": str(folder / "build.toml"), "command": f"aftzoo build --config {folder / 'build.toml'}",
        "ranking": saved["ranking"], "costs": saved["costs"], "plan": plan.to_dict(),
        "budget": {"minutes": cfg.budget_minutes, "order": list(budget.DEGRADATION_ORDER)},
        "candidates": candidates, "chosen": chosen, "why": why,
        "final": {"run_id": final_id, "method": final["method"], "beta": chosen["beta"], "teachers": final["teachers"],
                  "test_accuracy": final["test_accuracy"], "steps": final["step"],
                  "wall_seconds": final["wall_seconds"], "how": final_how.get(final_id)},
        "stl_test_accuracy": next(c["test_accuracy"] for c in candidates if c["method"] == "stl"),
        "export": export, "latency": _latency(export["path"], plan.teachers),
        "aft_weights": _aft_weights(final_id, chosen["method"], plan.teachers),
        "wall_seconds": round(clock.elapsed(), 1), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    summary["card"] = report.write(folder, summary)
    with open_catalog() as cat:
        cat.update_run(build_id, status="completed", test_accuracy=final["test_accuracy"],
                       wall_seconds=summary["wall_seconds"], config={"kind": "build", **summary})
    return summary
