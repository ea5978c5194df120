"""The experiment that can decide (issue 20): is there a gap, and does AFT close it better than STL and KD?

    python -m benchmarks.evidence.decisive --dataset rotten_tomatoes --student tiny-mlp-text \\
        --teacher mpnet-base --limit-train 1000 --validation 500 --steps 300 --lr 1e-3 --seeds 5
    python -m benchmarks.evidence.decisive --dataset fashion_mnist --student tiny-cnn \\
        --teacher efficientnet-lite2 --limit-train 500 --validation 500 --steps 300 --lr 1e-3 --batch 128

1. The gap: the teacher's linear-probe accuracy (5-fold cross-validated on the training examples' cached
   features) next to STL's test accuracy; ``--curve 100,300,1000`` adds STL's learning curve (seed 0).
2. The protocol: ``--methods`` (default stl,kd,aft) over ``--seeds`` seeds from ``--seed-offset``, paired by
   seed. Each regularised method's beta is chosen once, on the first seed, from the method's own grid
   (``objectives.BETA_GRIDS``) on ``--validation`` training examples the run never trains on (the ones after
   the first ``--limit-train``), then reused for the other seeds. Reports mean ± SE, the paired differences
   AFT - STL and AFT - KD with 95% t-intervals, and AFT's error reduction against STL.
3. ``--noise``: AFT and KD with a pure-noise block added to the teacher, its energy equal to the real block's
   centred energy (per-entry scale sqrt(E / d)); reports the learned noise/real weight ratio and c* =
   <K_s, K_t> / ||K_t||^2 over off-diagonal entries (student at initialisation, real teacher kernel).

Every run goes through ``transfer.training.trainer.run`` into the catalog of AFTZOO_HOME; a completed identical
run is reused, so an interrupted invocation resumes where it stopped. ``--json`` prints one object mapping each
method to its per-seed test accuracies, plus the chosen betas.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

TINY_MLP = "tiny-mlp-text"


def register_students() -> None:
    """The frozen-embedding token-MLP text student (zoo/tiny.py ``token_mlp``), registered in this process."""
    import zoo
    from zoo.registry import ModelSpec

    zoo.register(ModelSpec(name=TINY_MLP, family="tiny", modality="text", role="student", source="tiny",
                           hub_id="token_mlp", random_init=True, feature_rule="sentence", max_length=128,
                           prompt=False, tokenizer="pack:minilm-l6", feature_dim=256, params=164_608,
                           config_overrides={"init_from": "minilm-l6"},
                           description="MiniLM-L6's word embeddings (frozen) -> token MLP 384-256-256, mean"),
                 overwrite=True)


def t_interval(diffs) -> tuple[float, float, float]:
    """Mean and 95% t-interval of paired differences."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float(d.mean()), math.nan, math.nan
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def c_star(student_name: str, dataset, n: int, psi: np.ndarray, batch: int = 64, batches: int = 8) -> float:
    """<K_s, K_t> / ||K_t||^2 over off-diagonal entries, averaged over batches; both kernels centred and row-normalised
    as AFT builds them; the student as built for seed 0."""
    import torch

    from transfer.training.aft import centre_normalise
    from transfer.training.students import build_student

    student = build_student(student_name, dataset.num_classes, seed=0).eval()
    train = dataset.split("train").head(n)
    batch = min(batch, n)
    batches = max(1, min(batches, n // batch))
    rows = np.random.default_rng(0).permutation(n)[:batch * batches].reshape(batches, batch)
    values = []
    with torch.no_grad():
        for idx in rows:
            inputs = train.inputs[idx] if isinstance(train.inputs, np.ndarray) else [train.inputs[i] for i in idx]
            phi = student(student.preprocess(inputs, "{text}"))[1].float()
            ks = centre_normalise(phi) @ centre_normalise(phi).T
            zt = centre_normalise(torch.from_numpy(psi[idx]))
            kt = zt @ zt.T
            off = ~torch.eye(batch, dtype=torch.bool)
            values.append(float((ks[off] * kt[off]).sum() / (kt[off] ** 2).sum()))
    return float(np.mean(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="rotten_tomatoes", help="any registered data set (user data included)")
    ap.add_argument("--student", default=TINY_MLP)
    ap.add_argument("--teacher", default="mpnet-base")
    ap.add_argument("--limit-train", type=int, default=1000)
    ap.add_argument("--validation", type=int, default=500, help="unused training examples that choose beta")
    ap.add_argument("--limit-test", type=int, default=None, help="default: the whole test split")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--methods", default="stl,kd,aft")
    ap.add_argument("--curve", default="", help="STL learning curve: comma-separated step counts (seed 0)")
    ap.add_argument("--noise", action="store_true", help="also AFT and KD with an equal-energy noise block")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests); numbers mean nothing")
    ap.add_argument("--json", action="store_true", help="print one JSON object (per-seed accuracies, betas)")
    ap.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = ap.parse_args()
    if args.tiny:
        args.limit_train, args.validation, args.limit_test, args.steps, args.seeds = 60, 20, 20, 2, 2
    import torch

    torch.set_num_threads(1)
    register_students()
    import zoo
    from benchmarks.evidence import common
    from transfer.ranking.scores import probe_accuracy
    from transfer.training.objectives import BETA_GRIDS
    from transfer.training.trainer import TransferConfig
    from zoo.datasets import load_dataset
    from zoo.extract import extract_info
    from zoo.registry import noise_spec

    started = time.perf_counter()
    log = (lambda *a: None) if args.json else print
    ctx = common.Context("decisive", "tiny" if args.tiny else "small", None, args.seeds, False, False, args)
    data = load_dataset(args.dataset)
    psi = np.asarray(extract_info(args.teacher, data, "train", limit=args.limit_train).features, np.float32)
    labels = data.split("train").head(args.limit_train).labels
    probe = probe_accuracy(psi, labels) if not args.tiny else math.nan
    log(f"# decisive: {args.dataset}, student {args.student}, teacher {args.teacher}; {args.limit_train} training "
        f"examples, {args.validation} for beta, {args.steps} steps of {args.batch}, lr {args.lr:g}")
    log(f"teacher linear probe (5-fold CV on the training features): {probe:.4f}")

    def cfg(method, seed, beta, teachers=(args.teacher,), steps=None):
        return TransferConfig(dataset=args.dataset, student=args.student, method=method,
                              teachers=[] if method == "stl" else list(teachers), beta=beta,
                              steps=steps or args.steps, lr=args.lr, batch_size=args.batch, seed=seed,
                              limit_train=args.limit_train, limit_test=args.limit_test,
                              validation_size=args.validation, eval_every=common.EVAL_ONLY_AT_END,
                              checkpoint_every=common.NO_MID_RUN_CHECKPOINTS)

    out = {"setting": vars(args), "probe": probe, "curve": {}, "results": {}, "betas": {}, "trials": {}}
    for steps in [int(s) for s in args.curve.split(",") if s]:
        out["curve"][steps] = common.train(ctx, cfg("stl", args.seed_offset, 1.0, steps=steps))["accuracy"]
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)

    def over_seeds(method, teachers=(args.teacher,), key=None, beta=None):
        key = key or method
        accs, runs = [], []
        for seed in seeds:
            if beta is None and method != "stl":
                r = common.train(ctx, cfg(method, seed, "auto", teachers))
                beta = float(r["beta"])
                out["trials"][key] = r["trials"]
            else:
                r = common.train(ctx, cfg(method, seed, 1.0 if method == "stl" else beta, teachers))
            accs.append(r["accuracy"])
            runs.append(r)
        out["results"][key] = accs
        out["betas"][key] = beta
        return runs

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        over_seeds(method)

    if args.noise:
        centred = psi - psi.mean(0, keepdims=True)
        energy = float((centred ** 2).sum(1).mean())
        scale = math.sqrt(energy / psi.shape[1])
        noise = zoo.register(noise_spec(psi.shape[1], data.modality, seed=0, scale=scale,
                                        name=f"noise-{data.modality}-{psi.shape[1]}-equal"), overwrite=True).name
        weights = {}
        for method in ("aft", "kd"):
            beta = out["betas"].get(method) or BETA_GRIDS[method][len(BETA_GRIDS[method]) // 2]
            runs = over_seeds(method, (args.teacher, noise), key=f"{method}+noise", beta=beta)
            if method == "aft":
                weights = [r["weights"] for r in runs]
        real = [w.get(f"weight_mean/{args.teacher}", math.nan) for w in weights]
        fake = [w.get(f"weight_mean/{noise}", math.nan) for w in weights]
        out["noise"] = {"scale": scale, "real_centred_energy": energy, "weights_real": real, "weights_noise": fake,
                        "ratio": [f / r for f, r in zip(fake, real)],
                        "c_star_init": c_star(args.student, data, args.limit_train, psi) if not args.tiny else None}
    out["wall_seconds"] = time.perf_counter() - started
    report(out, args, log)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    if args.json:
        print(json.dumps({**{k: v for k, v in out["results"].items()}, "betas": out["betas"]}))


def report(out: dict, args, log) -> None:
    from benchmarks.evidence.common import error_reduction, mean_se

    res = out["results"]
    if out["curve"]:
        log("STL learning curve (seed %d): " % args.seed_offset
            + ", ".join(f"{s} steps {a:.4f}" for s, a in out["curve"].items()))
    log("| method | beta | test acc (mean ± SE) | per seed |\n|---|---|---|---|")
    for key, accs in res.items():
        m, se = mean_se(accs)
        log(f"| {key} | {out['betas'].get(key) if key != 'stl' else '-'} | {100 * m:.2f} ± {100 * se:.2f} | "
            + " ".join(f"{100 * a:.1f}" for a in accs) + " |")
    for a, b in (("aft", "stl"), ("aft", "kd"), ("kd", "stl")):
        if a in res and b in res:
            mean, lo, hi = t_interval(np.array(res[a]) - np.array(res[b]))
            log(f"paired {a.upper()} - {b.upper()}: {100 * mean:+.2f} points, 95% interval "
                f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    if "aft" in res and "stl" in res:
        log(f"AFT's error reduction vs STL: {100 * error_reduction(np.mean(res['aft']), np.mean(res['stl'])):+.1f}%")
    if "noise" in out:
        n = out["noise"]
        log(f"noise block: per-entry scale {n['scale']:.4g} (real block's centred energy {n['real_centred_energy']:.4g});"
            f" AFT weights real {np.nanmean(n['weights_real']):.4f}, noise {np.nanmean(n['weights_noise']):.4f}, "
            f"noise/real ratio {np.nanmean(n['ratio']):.3f} (per seed " + ", ".join(f"{r:.3f}" for r in n["ratio"])
            + f"); c* at init {n['c_star_init']}")
    log(f"wall time {out['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
