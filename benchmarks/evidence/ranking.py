"""Experiment 5, ranking against outcome (the paper's Fig. 3): do LogME and the linear probe predict AFT's result?

    python -m benchmarks.evidence.ranking [--modality image|text] [--full] [--seeds N]

For each teacher on this machine, ``transfer.ranking.rank`` scores its features of the
training examples (LogME, and a 5-fold logistic-regression probe), and AFT trains the
student with that teacher alone (beta chosen on the 10% hold-out). Teachers, from strong to
none: images EfficientNet-Lite2, Lite0, a randomly initialised EfficientNet-Lite0 at 32x32,
pure Gaussian noise (1280-d); text mpnet, MiniLM-L6, a random 2-layer BERT, noise (768-d).

Claim checked: AFT's accuracy follows the teacher's quality (the paper: correlation 0.97
with the linear probe). Reported: Spearman's rho and Kendall's tau of each score against
AFT's mean accuracy, and Pearson's r for the probe; with 4 teachers these are coarse (a
rank correlation can only be -1, -0.8, ... 1), so the per-teacher table is the real content.
"""
from __future__ import annotations

import math

from benchmarks.evidence import common


def correlations(x: list[float], y: list[float]) -> dict:
    from scipy import stats

    if len(x) < 3:
        return {"spearman": float("nan"), "kendall": float("nan"), "pearson": float("nan"), "n": len(x)}
    return {"spearman": float(stats.spearmanr(x, y).statistic), "kendall": float(stats.kendalltau(x, y).statistic),
            "pearson": float(stats.pearsonr(x, y).statistic), "n": len(x)}


def main() -> None:
    ctx, s = common.start_one_modality("ranking", __doc__)
    modality = ctx.args.modality
    teachers = [*dict.fromkeys(s.teachers), common.random_teacher(modality), common.noise_teacher(s.teachers[0])]
    print(s.describe(), f"\nteachers: {', '.join(teachers)}", flush=True)
    common.extract_teachers(s, teachers)

    from transfer.ranking import rank

    scores = rank(s.dataset, teachers, metrics=("logme", "probe"), limit=s.limit_train, progress=False)
    score = {r.model: {"logme": float(r.logme), "probe": float(r.probe), "dim": int(r.dim)}
             for r in scores.itertuples()}
    stl = common.seeds_loop(ctx, s, "stl")
    aft = {t: common.seeds_loop(ctx, s, "aft", [t]) for t in teachers}

    y = [aft[t]["mean"] for t in teachers]
    corr = {m: correlations([score[t][m] for t in teachers], y) for m in ("logme", "probe")}
    order = {m: sorted(teachers, key=lambda t: -score[t][m]) for m in ("logme", "probe")}
    outcome_order = sorted(teachers, key=lambda t: -aft[t]["mean"])
    verdict = (f"Over {len(teachers)} teachers, AFT's accuracy has Spearman rho {corr['logme']['spearman']:+.2f} with "
               f"LogME and {corr['probe']['spearman']:+.2f} with the linear probe (Pearson r with the probe "
               f"{corr['probe']['pearson']:+.2f}; the paper: 0.97); LogME ranks "
               f"{' > '.join(order['logme'])}, AFT's outcome {' > '.join(outcome_order)}.")

    rows = [[t, score[t]["dim"], f"{score[t]['logme']:.3f}", f"{100 * score[t]['probe']:.1f}",
             common.pm(aft[t]["mean"], aft[t]["se"]), f"{aft[t]['beta']:g}"] for t in teachers]
    rows.append(["(no teacher: STL)", "-", "-", "-", common.pm(stl["mean"], stl["se"]), "-"])
    print("\n" + common.markdown_table(["teacher", "dim", "LogME", "linear probe %", "AFT test accuracy %", "beta"],
                                       rows))
    print("\n" + common.markdown_table(
        ["score vs AFT accuracy", "Spearman rho", "Kendall tau", "Pearson r", "teachers"],
        [[m, *(f"{c[k]:+.2f}" for k in ("spearman", "kendall", "pearson")), c["n"]] for m, c in corr.items()]))
    print("\n" + verdict)

    fig, axes = common.figure(ncols=2, width=5.0)
    for ax, metric, xlabel in zip(axes[0], ("logme", "probe"), ("LogME score", "linear probe accuracy (%)")):
        scale = 100.0 if metric == "probe" else 1.0
        for i, t in enumerate(teachers):
            x, se = score[t][metric] * scale, aft[t]["se"]
            ax.errorbar(x, 100 * aft[t]["mean"], yerr=0 if math.isnan(se) else 100 * se, fmt="o", capsize=4)
            ax.annotate(t.replace("efficientnet-", ""), (x, 100 * aft[t]["mean"]), textcoords="offset points",
                        xytext=(5, 6 if i % 2 == 0 else -12), fontsize=7)   # alternate: close teachers overlap
        ax.axhline(100 * stl["mean"], color="#c0392b", linestyle="--", linewidth=1, label="STL (no teacher)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AFT test accuracy (%)")
        c = corr[metric]
        ax.set_title(f"{s.dataset}, {s.student}: rho {c['spearman']:+.2f}, tau {c['kendall']:+.2f}, r "
                     f"{c['pearson']:+.2f}\n({ctx.label}, {stl['n']} seeds)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    common.save(ctx, {"setting": s, "teachers": teachers, "scores": score, "stl": stl, "aft": aft,
                      "correlations": corr, "verdict": verdict}, fig)


if __name__ == "__main__":
    main()
