"""Shared plumbing of the evidence scripts: sizes, the seeds loop, mean ± SE, tables, JSON and plots.

Every number comes from the real library: students are trained by ``transfer.training.trainer.run`` and
teachers scored by ``transfer.ranking.rank``, so every run (each beta trial included) lands in
the catalog of the current AFTZOO_HOME and shows on the app's Runs page.

Sizes (one per flag; the JSON and PNG names say which):
  default   "small": minutes on 2 CPU cores (text: about 20). Fewer examples, steps and seeds, and a
            2-point beta grid (images) or beta fixed at 1 (text); SETTINGS below says exactly.
  --full    the issue's setting: text uses 1,000 training examples, the whole 2,551-example test
            split, 3 seeds and the trainer's 7-point beta grid.
  --tiny    seconds: a smoke test of the plumbing (tests/test_evidence.py); its numbers mean nothing.

beta: for each regularised method it is chosen once, on seed 0, by the trainer's own hold-out
search (beta="auto": train on 90% of the training examples with each beta of the grid, keep the
best hold-out accuracy, retrain on all of them with it); the other seeds reuse that beta. The
paper also tunes once per method and data set (its Appendix A), then reports 3 runs.

Identical runs are not repeated: before training, the catalog is searched for a completed run with
the same configuration (every field that changes the result). So experiments share their common
runs (AFT with Lite2 appears in five of them) and rerunning a script only redraws its figure;
``--fresh`` trains everything again. Run one script at a time per AFTZOO_HOME: the catalog takes
one writer (a run waits up to 120 s for its turn; several scripts at once slow each other down).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evidence"

# The trainer evaluates every ``eval_every`` steps and at the end, and checkpoints every
# ``checkpoint_every``; here only the final accuracy matters, and evaluating MiniLM on 2,551
# texts costs as much as a training epoch, so both happen only at the end.
EVAL_ONLY_AT_END = 10**9
NO_MID_RUN_CHECKPOINTS = 10**9

# What makes two runs the same experiment (device, logging and checkpoint cadence do not).
RESULT_KEYS = ("dataset", "student", "teachers", "method", "beta", "steps", "lr", "objective_lr", "batch_size",
               "weight_decay", "grad_clip", "seed", "pretrained", "limit_train", "limit_test", "holdout_fraction",
               "schedule", "beta_holdout", "validation_size", "evaluate_on")

METHOD_LABELS = {"stl": "STL", "kd": "KD", "rkd": "RKD", "ft": "FT", "btune": "B-Tuning", "aft": "AFT",
                 "aft_nokernel": "AFT, no kernel", "aft_identity": "AFT, identity weights (s fixed)",
                 "aft_dense": "AFT, dense weights", "aft_rbf": "AFT, RBF kernel"}


# ---------------------------------------------------------------------------------------------
# Sizes: one setting per modality and size, shared by every script so that runs are shared too
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    dataset: str
    student: str
    teachers: tuple[str, ...]        # the real teachers, strongest first
    limit_train: int                 # the first N training examples (the splits are already shuffled)
    limit_test: int | None           # None: the whole, fixed test split
    steps: int                       # the trainer rounds up to whole epochs
    batch_size: int
    lr: float                        # the student's; AFT's s and the baselines' maps use the trainer's 1e-2
    seeds: int
    beta_grid: tuple[float, ...]
    pretrained: bool = True
    note: str = ""
    seed_offset: int = 0             # seeds are seed_offset, seed_offset + 1, ...

    @property
    def modality(self) -> str:
        from zoo.datasets import DATASETS

        if self.dataset in DATASETS:
            return DATASETS[self.dataset].modality
        from zoo.datasets import load_dataset  # a user's data set

        return load_dataset(self.dataset).modality

    def config(self, method: str, teachers: list[str] | tuple[str, ...], seed: int, beta: float | str):
        from transfer.training.trainer import TransferConfig

        return TransferConfig(dataset=self.dataset, student=self.student, teachers=list(teachers), method=method,
                              beta=beta, beta_grid=self.beta_grid, steps=self.steps, lr=self.lr,
                              batch_size=self.batch_size, seed=seed, pretrained=self.pretrained,
                              limit_train=self.limit_train, limit_test=self.limit_test,
                              eval_every=EVAL_ONLY_AT_END, checkpoint_every=NO_MID_RUN_CHECKPOINTS)

    def describe(self) -> str:
        test = "the whole test split" if self.limit_test is None else f"the first {self.limit_test:,} test examples"
        epochs = self.steps * self.batch_size / self.limit_train
        return (f"{self.dataset}: student {self.student}, {self.limit_train:,} training examples, {test}; "
                f"{self.steps} steps of {self.batch_size} (about {epochs:.0f} epochs), lr {self.lr:g}, "
                f"{self.seeds} seeds, beta grid {list(self.beta_grid)}")


TINY_STUDENT = "evidence-tiny-resnet"
SMALL_GRID = (1.0, 10.0)      # two candidates an order of magnitude apart: the hold-out search, cheaply
FULL_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)   # the trainer's own grid (transfer.training.trainer.BETA_GRID)

# Measured here (1 torch thread, other work on the 2 cores): a MiniLM-L6 step on 64 texts takes 4-5 s,
# so one epoch of 1,000 texts is over a minute; a ResNet-18 step on 128 images at 32x32 takes 0.5 s.
SETTINGS: dict[tuple[str, str], Setting] = {
    # Text, the paper's section 4.2 offline: MiniLM-L6 (pre-trained, 22.7M) learns Rotten Tomatoes sentiment
    # from mpnet (109M). Batch 64 is the paper's for text. MiniLM's features are L2-normalised, so its fresh
    # head needs a larger step than fine-tuning usually takes: STL on 1,000 texts for 3 epochs reached 80.2%
    # with lr 3e-4, 78.6% with 1e-4 and collapsed to the majority class with 1e-3.
    ("text", "full"): Setting("rotten_tomatoes", "minilm-l6", ("mpnet-base", "minilm-l6"), limit_train=1000,
                              limit_test=None, steps=48, batch_size=64, lr=3e-4, seeds=3, beta_grid=FULL_GRID),
    # Small: half the texts, 2 epochs, 500 test texts, 2 seeds, and beta fixed at 1 (a one-point grid: no
    # hold-out search), which would alone cost 10 more trainings. About 20 minutes.
    ("text", "small"): Setting("rotten_tomatoes", "minilm-l6", ("mpnet-base", "minilm-l6"), limit_train=500,
                               limit_test=500, steps=16, batch_size=64, lr=3e-4, seeds=2, beta_grid=(1.0,)),
    ("text", "tiny"): Setting("rotten_tomatoes", "minilm-l6", ("mpnet-base", "minilm-l6"), limit_train=40,
                              limit_test=16, steps=1, batch_size=20, lr=3e-4, seeds=2, beta_grid=(1.0,)),
    # Vision: a ResNet-18 at 32x32 from scratch (11M, no pre-training) on Fashion-MNIST, with ImageNet
    # EfficientNet-Lite2 and Lite0 as teachers. lr 1e-3 is Adam's usual rate for training from scratch.
    ("image", "full"): Setting("fashion_mnist", "resnet18-small", ("efficientnet-lite2", "efficientnet-lite0"),
                               limit_train=4000, limit_test=None, steps=625, batch_size=128, lr=1e-3, seeds=3,
                               beta_grid=FULL_GRID, pretrained=False),
    # Small: 1,000 training images, 8 epochs, 2,000 test images, 2 seeds, beta searched over (1, 10).
    ("image", "small"): Setting("fashion_mnist", "resnet18-small", ("efficientnet-lite2", "efficientnet-lite0"),
                                limit_train=1000, limit_test=2000, steps=64, batch_size=128, lr=1e-3, seeds=2,
                                beta_grid=SMALL_GRID, pretrained=False),
    # Tiny (tests): timm's 0.4M-parameter test ResNet as the student (registered by ``start``), 100 digits.
    ("image", "tiny"): Setting("digits", TINY_STUDENT, ("efficientnet-lite0", "efficientnet-lite2"),
                               limit_train=100, limit_test=32, steps=1, batch_size=50, lr=1e-3, seeds=2,
                               beta_grid=(1.0,), pretrained=False),
}


# ---------------------------------------------------------------------------------------------
# Command line and context
# ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    name: str                  # the experiment, e.g. "text"; names the JSON and PNG
    size: str                  # "small", "full" or "tiny"
    out: Path
    seeds_override: int | None
    fresh: bool
    keep_checkpoints: bool
    args: argparse.Namespace
    started: float = field(default_factory=time.perf_counter)
    load_at_start: float = field(default_factory=lambda: os.getloadavg()[0])
    train_seconds: float = 0.0   # the recorded training time of every run used, trained now or found in the catalog
    counts: dict = field(default_factory=lambda: {"trained": 0, "reused": 0})

    def setting(self, modality: str) -> Setting:
        s = SETTINGS[(modality, self.size)]
        if self.seeds_override:
            s = dataclasses.replace(s, seeds=self.seeds_override)
        if self.args.steps:
            s = dataclasses.replace(s, steps=self.args.steps)
        if self.args.beta is not None:   # one value: that beta, no hold-out search; several: the grid searched
            s = dataclasses.replace(s, beta_grid=self.args.beta)
        if getattr(self.args, "dataset", None):
            s = dataclasses.replace(s, dataset=self.args.dataset)
            if s.modality != modality:
                raise SystemExit(f"--dataset {self.args.dataset} is {s.modality} data; this experiment's setting "
                                 f"is {modality} (use --modality {s.modality} where the script has it)")
        if getattr(self.args, "seed_offset", 0):
            s = dataclasses.replace(s, seed_offset=self.args.seed_offset)
        return s

    @property
    def label(self) -> str:
        """``small size`` (``, 640 steps, beta 1`` when changed): for figure titles."""
        return (f"{self.size} size" + (f", {self.args.steps} steps" if self.args.steps else "")
                + (f", beta {_betas_text(self.args.beta, ', ')}" if self.args.beta is not None else ""))

    @property
    def suffix(self) -> str:
        """The output names say the size, and any change to it (``noise_steps640_beta1.json``)."""
        parts = [] if self.size == "small" else [self.size]
        parts += [f"steps{self.args.steps}"] if self.args.steps else []
        parts += [f"beta{_betas_text(self.args.beta, '-')}"] if self.args.beta is not None else []
        return "".join(f"_{p}" for p in parts)

    @property
    def command(self) -> str:
        return "python -m benchmarks.evidence." + self.name + "".join(" " + shlex.quote(a) for a in sys.argv[1:])


def _betas(text: str) -> tuple[float, ...]:
    """``--beta``: "1" or "0.01,0.1,1" -> sorted distinct values, each a number >= 0."""
    try:
        values = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (1 or 0.01,0.1,1); got {text!r}") from None
    if not values or not all(v >= 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"every beta must be a number >= 0; got {text!r}")
    return values


def _betas_text(values: tuple[float, ...], sep: str) -> str:
    return sep.join(f"{v:g}" for v in values)


def start(name: str, doc: str, add_args=None) -> Context:
    """Parse the common flags (plus the script's own, through ``add_args(parser)``) and print a header."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.evidence.{name}", description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the paper-sized setting (hours on 2 CPU cores)")
    size.add_argument("--tiny", action="store_true", help="a seconds-long smoke run; its numbers mean nothing")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (0, 1, ...); default: the size's")
    ap.add_argument("--steps", type=int, default=None, help="training steps instead of the size's (rounded up to "
                    "whole epochs); the output names say so")
    ap.add_argument("--beta", type=_betas, default=None, metavar="B[,B...]",
                    help="one beta: fixed, no hold-out search; several (0.01,0.1,1): the grid the hold-out search "
                         "tries, instead of the size's; the output names say so")
    ap.add_argument("--dataset", default=None, metavar="NAME",
                    help="any registered data set of the experiment's modality (user data included) instead of the "
                         "size's; its teachers' features are extracted on first use")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed (runs use seeds S, S+1, ...)")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object on stdout (method -> per-seed test accuracies, plus the chosen "
                         "betas); the tables go to stderr")
    ap.add_argument("--out", type=Path, default=DOCS, help="where the JSON and PNG go (default docs/evidence)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on 2 cores shared with other work, 2 threads ran a MiniLM "
                         "step 4x slower than 1 (oversubscription). 0: torch's default")
    ap.add_argument("--fresh", action="store_true", help="train again even where the catalog holds the same run")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep the students' checkpoints (MiniLM's are 270 MB each; by default they are deleted "
                         "once a run is recorded, and its catalog entry says it has none)")
    if add_args:
        add_args(ap)
    args = ap.parse_args()
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be at least 1")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.json:  # the human-readable output moves to stderr; stdout carries the one JSON object
        args.stdout, sys.stdout = sys.stdout, sys.stderr
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    ctx = Context(name, "full" if args.full else "tiny" if args.tiny else "small", args.out, args.seeds,
                  args.fresh, args.keep_checkpoints, args)
    if ctx.size == "tiny":
        import zoo
        from zoo.models import random_spec

        zoo.register(random_spec("resnet", name=TINY_STUDENT, hub_id="test_resnet", image_size=32, role="student",
                                 description="timm test_resnet at 32x32, random weights (smoke tests)"),
                     overwrite=True)
    from storage.settings import get_settings

    print(f"# evidence: {name} ({ctx.label})  home {get_settings().home}  torch threads "
          f"{args.threads or 'default'}  load average {ctx.load_at_start:.1f} on {os.cpu_count()} cores", flush=True)
    return ctx



def start_one_modality(name: str, doc: str, text_help: str = "MiniLM-L6 student, slower") -> tuple[Context, Setting]:
    """``start`` with ``--modality image|text`` (image by default); a text run's outputs are named ``<name>_text``."""
    ctx = start(name, doc, lambda ap: ap.add_argument(
        "--modality", choices=("image", "text"), default="image", help=f"image (default, minutes) or text ({text_help})"))
    if ctx.args.modality == "text":
        ctx.name = f"{name}_text"
    return ctx, ctx.setting(ctx.args.modality)

# ---------------------------------------------------------------------------------------------
# Teachers that are not in the zoo: pure noise, and a randomly initialised network
# ---------------------------------------------------------------------------------------------
def noise_teacher(like: str, seed: int = 0) -> str:
    """Register (in this process) a pure-noise teacher as wide as ``like``; returns its name."""
    import zoo
    from zoo.registry import noise_spec

    real = zoo.get(like)
    return zoo.register(noise_spec(real.feature_dim, real.modality, seed=seed), overwrite=True).name


def random_teacher(modality: str) -> str:
    """Register a randomly initialised network (no pre-training) as a weak teacher; returns its name."""
    import zoo
    from zoo.models import random_spec

    if modality == "image":   # EfficientNet-Lite0's architecture at 32x32, random weights: 1280-d features
        spec = random_spec("efficientnet-lite", name="random-efficientnet-lite0", role="teacher",
                           description="EfficientNet-Lite0 architecture at 32x32, random weights (seed 0)")
    else:                     # a 2-layer, 32-wide BERT with random weights: 32-d [CLS] features
        spec = random_spec("bert", name="random-bert-tiny", role="teacher",
                           description="2-layer 32-wide BERT, random weights (seed 0)")
    return zoo.register(spec, overwrite=True).name


def extract_teachers(s: Setting, teachers) -> None:
    """Extract (or find cached) each teacher's features of the training examples, with a progress bar."""
    from zoo.extract import extract_info

    for teacher in dict.fromkeys(teachers):
        info = extract_info(teacher, s.dataset, "train", limit=s.limit_train, progress=True)
        print(f"  features {teacher}: {info.shape[0]:,} x {info.shape[1]} "
              f"({'cached' if info.cached else f'extracted in {info.seconds:.0f} s'})", flush=True)


# ---------------------------------------------------------------------------------------------
# Runs: train through the library, or reuse an identical completed run from the catalog
# ---------------------------------------------------------------------------------------------
def _key(config: dict) -> str:
    values = {k: config.get(k) for k in RESULT_KEYS}
    values["beta"] = values["beta"] if values["beta"] == "auto" else float(values["beta"])
    if values["beta"] == "auto":  # the grid matters only when beta is searched
        from transfer.training.objectives import BETA_GRIDS

        # None: the method's own grid. A recorded beta-auto run says which betas it tried (its trials): a grid that
        # changed since must not match it.
        grid = (config.get("beta_grid") or [t["beta"] for t in config.get("trials", [])]
                or BETA_GRIDS.get(config.get("method"), ()))
        values["beta_grid"] = [float(b) for b in grid]
    return json.dumps(values, sort_keys=True, default=str)


def _find_completed(cfg) -> dict | None:
    from storage.catalog import open_catalog

    want, auto = _key(cfg.to_dict()), cfg.beta == "auto"
    with open_catalog() as cat:
        rows = cat.query("SELECT id, config, test_accuracy, wall_seconds FROM runs WHERE status = 'completed' "
                         "AND dataset = ? "
                         "AND student = ? AND method = ? ORDER BY created_at DESC",
                         [cfg.dataset, cfg.student, cfg.method])
    for row in rows:
        config = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        if (config.get("kind") == "beta-auto") == auto and _key(config) == want:
            return {"id": row["id"], "config": config, "accuracy": row["test_accuracy"],
                    "wall_seconds": row["wall_seconds"] or 0.0}
    return None


def _drop_checkpoints(run_ids) -> None:
    """Delete the checkpoints of recorded runs (and say so in the catalog): evidence runs are measurements."""
    from storage.catalog import open_catalog
    from storage.settings import get_settings

    with open_catalog() as cat:
        for run_id in run_ids:
            ckpt = get_settings().home / "runs" / run_id / "checkpoint.pt"
            if ckpt.is_file():
                ckpt.unlink()
                cat.update_run(run_id, checkpoint=None)


def final_weights(run_id: str) -> dict[str, float]:
    """AFT's mean learned weight sigmoid(s) at the end of a run: overall, and per teacher with >= 2 teachers."""
    from transfer.training.trainer import history

    h = history(run_id)
    cols = [c for c in h.columns if str(c).startswith("weight_mean")]
    if not cols:
        return {}
    last = h.dropna(subset=cols, how="all").iloc[-1]
    return {c: float(last[c]) for c in cols if not math.isnan(last[c])}


def train(ctx: Context, cfg) -> dict:
    """One configuration (beta may be "auto"): its final test accuracy, run id and chosen beta."""
    from transfer.training.trainer import run

    started = time.perf_counter()
    done = None if ctx.fresh else _find_completed(cfg)
    if done is not None:
        config = done["config"]
        out = {"accuracy": done["accuracy"], "reused": True, "train_seconds": done["wall_seconds"],
               "run_id": config.get("final_run", done["id"]), "beta": config.get("chosen_beta", cfg.beta),
               "trials": config.get("trials", []), "beta_auto_run": done["id"] if cfg.beta == "auto" else None}
    else:
        res = run(cfg, progress=False)
        out = {"accuracy": res.test_accuracy, "reused": False, "run_id": res.run_id, "train_seconds": res.wall_seconds,
               "beta": res.config.get("chosen_beta", cfg.beta), "trials": res.trials,
               "beta_auto_run": res.config.get("beta_auto_run")}
        if not ctx.keep_checkpoints:
            _drop_checkpoints([res.run_id, *(t["run_id"] for t in res.trials)])
    out["weights"] = final_weights(out["run_id"]) if cfg.method.startswith("aft") else {}
    ctx.train_seconds += out["train_seconds"]
    ctx.counts["reused" if out["reused"] else "trained"] += 1
    out["seconds"] = time.perf_counter() - started
    trials = "  ".join(f"beta {t['beta']:g}: {t['holdout_accuracy']:.3f}" for t in out["trials"])
    took = "(reused from the catalog)" if out["reused"] else f"{out['seconds']:.0f} s"
    print(f"  {cfg.method:<12} {'+'.join(cfg.teachers) or '-':<38} seed {cfg.seed}  beta {out['beta']:<5g} "
          f"test acc {out['accuracy']:.4f}  {took}" + (f"\n      hold-out: {trials}" if trials and not out["reused"]
                                                        else ""), flush=True)
    return out


def seeds_loop(ctx: Context, s: Setting, method: str, teachers=()) -> dict:
    """``method`` with ``teachers`` over the setting's seeds; beta tuned on seed 0 and reused (see the module doc)."""
    # STL has no regulariser (beta unused); a one-point grid means that beta, without a search.
    beta: float | str = 1.0 if method == "stl" else "auto" if len(s.beta_grid) > 1 else s.beta_grid[0]
    per_seed = []
    for seed in range(s.seed_offset, s.seed_offset + s.seeds):
        r = train(ctx, s.config(method, teachers, seed, beta))
        beta = r["beta"]
        per_seed.append({"seed": seed, **r})
    accs = [r["accuracy"] for r in per_seed]
    mean, se = mean_se(accs)
    weights = {k: [r["weights"][k] for r in per_seed if k in r["weights"]] for k in per_seed[0]["weights"]}
    return {"method": method, "label": METHOD_LABELS.get(method, method), "teachers": list(teachers),
            "accuracy": accs, "mean": mean, "se": se, "n": len(accs), "beta": None if method == "stl" else beta,
            "holdout_trials": per_seed[0]["trials"], "weights": weights,
            "runs": [r["run_id"] for r in per_seed], "reused": all(r["reused"] for r in per_seed)}


# ---------------------------------------------------------------------------------------------
# Statistics and tables
# ---------------------------------------------------------------------------------------------
def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); SE is nan for one value."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_se needs at least one value")
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), se


def pm(mean: float, se: float, scale: float = 100.0, digits: int = 1) -> str:
    """``81.2 ± 0.4`` (accuracies in %, by default)."""
    if math.isnan(se):
        return f"{mean * scale:.{digits}f} (1 seed)"
    return f"{mean * scale:.{digits}f} ± {se * scale:.{digits}f}"


def pmr(result: dict) -> str:
    """``pm`` of a ``seeds_loop`` result."""
    return pm(result["mean"], result["se"])


def error_reduction(acc: float, baseline: float) -> float:
    """Relative reduction of the error rate against ``baseline`` (the paper's "cuts STL's error by 15%")."""
    return (acc - baseline) / (1.0 - baseline) if baseline < 1 else float("nan")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def result_rows(results: list[dict], baseline: dict | None = None) -> list[list]:
    """Table rows for ``seeds_loop`` results: method, teachers, accuracy mean ± SE, seeds, beta, error cut."""
    rows = []
    for r in results:
        cut = ""
        if baseline is not None and r is not baseline:
            cut = f"{100 * error_reduction(r['mean'], baseline['mean']):+.0f}%"
        rows.append([r["label"], " + ".join(r["teachers"]) or "-", pm(r["mean"], r["se"]), r["n"],
                     "-" if r["beta"] is None else f"{r['beta']:g}", cut])
    return rows


RESULT_HEADERS = ["method", "teachers", "test accuracy % (mean ± SE)", "seeds", "beta", "error cut vs STL"]


# ---------------------------------------------------------------------------------------------
# Output: JSON and PNG into docs/evidence (or --out)
# ---------------------------------------------------------------------------------------------
def figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


LINE_STYLES = [("#c0392b", "--"), ("#27ae60", ":"), ("#8e44ad", "-.")]


def dot_plot(ax, labels: list[str], values: list[list[float]], *, lines=(), ylabel: str = "test accuracy (%)",
             title: str = "", scale: float = 100.0, colors=None) -> None:
    """Each column: the mean (large marker) with standard-error whiskers, and every seed as a small dot.
    ``lines`` are (value, label) references drawn across (STL's mean, a teacher's linear probe). Markers rather
    than bars: the axis is zoomed to a few points, and bars cut off at a zoomed axis exaggerate differences."""
    x = np.arange(len(labels))
    colors = colors or ["#2e86c1"] * len(labels)
    for i, v in enumerate(values):
        v = np.asarray(v, dtype=float) * scale
        se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0
        ax.errorbar(i, v.mean(), yerr=se, fmt="o", markersize=8, capsize=5, color=colors[i], zorder=3)
        ax.scatter(np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), v, s=10, color="#555555", zorder=2)
    for (value, label), (color, style) in zip(lines, LINE_STYLES):
        ax.axhline(value * scale, color=color, linestyle=style, linewidth=1.2, label=label, zorder=1)
    if lines:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    everything = [x * scale for v in values for x in v] + [value * scale for value, _ in lines]
    lo, hi = min(everything), max(everything)
    pad = max(0.5, 0.1 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def save(ctx: Context, payload: dict, fig=None) -> dict:
    """Write ``<name>[_full|_tiny].json`` (and ``.png``) into the output folder; returns the paths."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    stem = f"{ctx.name}{ctx.suffix}"   # a string: "beta0.1" must not read as a file extension
    wall = time.perf_counter() - ctx.started
    from storage.settings import get_settings

    payload = {"experiment": ctx.name, "size": ctx.size, "label": ctx.label, "command": ctx.command,
               "created": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": round(wall, 1),
               # What the figure costs from an empty catalog (training only; feature extraction is extra),
               # however much of it this invocation found already done.
               "train_seconds_total": round(ctx.train_seconds, 1), "configurations": dict(ctx.counts),
               "torch_threads": ctx.args.threads, "load_average_at_start": round(ctx.load_at_start, 2),
               "aftzoo_home": str(get_settings().home), **payload}
    paths = {"json": str(ctx.out / f"{stem}.json")}
    Path(paths["json"]).write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    if fig is not None:
        fig.tight_layout()
        paths["png"] = str(ctx.out / f"{stem}.png")
        fig.savefig(paths["png"], dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
    if getattr(ctx.args, "json", False):
        summary = {"betas": {}}
        for key, r in (payload.get("results") or {}).items() if isinstance(payload.get("results"), dict) else (
                (r["method"] + ("+" + "+".join(r["teachers"]) if len(r.get("teachers") or ()) > 1 else ""), r)
                for r in payload.get("results") or []):
            summary[key] = r["accuracy"]
            summary["betas"][key] = r.get("beta")
        print(json.dumps(summary), file=ctx.args.stdout, flush=True)
    print(f"\nwrote {', '.join(paths.values())}  ({wall / 60:.1f} min; the runs it shows took "
          f"{ctx.train_seconds / 60:.1f} min of training, {ctx.counts['trained']} configurations trained now, "
          f"{ctx.counts['reused']} found in the catalog)", flush=True)
    return paths


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)
