"""Experiment 4, vision: a small student trained from scratch, with EfficientNet-Lite2 and Lite0 as teachers.

    python -m benchmarks.evidence.vision [--full] [--seeds N]

A ResNet-18 at 32x32 with random initial weights (11M parameters) learns Fashion-MNIST
from a subset of its training images: STL (no teacher), KD and AFT, each with the
ImageNet EfficientNet-Lite2 and, separately, Lite0 as the teacher; beta chosen on a 10%
hold-out for each. The teachers' linear-probe accuracies (5-fold logistic regression on
their features of the same training images) are drawn as references.

Claim checked: AFT beats STL and KD (the paper's Fig. 2a, for pre-trained students).
"""
from __future__ import annotations

from benchmarks.evidence import common


def main() -> None:
    ctx = common.start("vision", __doc__)
    s = ctx.setting("image")
    teachers = list(dict.fromkeys(s.teachers))   # Lite2, Lite0
    print(s.describe(), flush=True)
    common.extract_teachers(s, teachers)
    from transfer.ranking import rank

    scores = rank(s.dataset, teachers, metrics=("probe", "logme"), limit=s.limit_train, progress=False)
    probes = {r.model: {"probe": float(r.probe), "logme": float(r.logme)} for r in scores.itertuples()}

    results = [common.seeds_loop(ctx, s, "stl")]
    for method in ("kd", "aft"):
        results += [common.seeds_loop(ctx, s, method, [t]) for t in teachers]
    stl = results[0]
    best = {m: max((r for r in results if r["method"] == m), key=lambda r: r["mean"]) for m in ("kd", "aft")}
    aft, kd = best["aft"], best["kd"]
    verdict = (f"Best AFT ({' + '.join(aft['teachers'])}) {common.pmr(aft)} % against STL {common.pmr(stl)} % and "
               f"best KD ({' + '.join(kd['teachers'])}) {common.pmr(kd)} % ({stl['n']} seeds): AFT cut STL's error "
               f"by {100 * common.error_reduction(aft['mean'], stl['mean']):.0f}% and KD's by "
               f"{100 * common.error_reduction(aft['mean'], kd['mean']):.0f}%.")

    print("\n" + common.markdown_table(common.RESULT_HEADERS, common.result_rows(results, stl)))
    print("\n" + common.markdown_table(
        ["teacher", "linear probe % (5-fold CV, training images)", "LogME"],
        [[m, f"{100 * v['probe']:.1f}", f"{v['logme']:.3f}"] for m, v in probes.items()]))
    print("\n" + verdict)

    fig, axes = common.figure(width=7.0)
    labels = [r["label"] + ("" if not r["teachers"] else f"\n{r['teachers'][0].replace('efficientnet-', '')}")
              for r in results]
    common.dot_plot(axes[0][0], labels, [r["accuracy"] for r in results],
                lines=[(stl["mean"], "STL"), *((v["probe"], f"{m} linear probe") for m, v in probes.items())],
                title=f"ResNet-18 (32 px, from scratch) on Fashion-MNIST, {s.limit_train:,} images "
                      f"({ctx.label}, {stl['n']} seeds)")
    common.save(ctx, {"setting": s, "results": results, "probes": probes, "verdict": verdict}, fig)


if __name__ == "__main__":
    main()
