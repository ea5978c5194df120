"""Experiment 1, text (the paper's section 4.2, offline): MiniLM-L6 learns Rotten Tomatoes from mpnet.

    python -m benchmarks.evidence.text [--full] [--seeds N] [--methods aft] [--beta 0.01,0.1,1]

The pre-trained MiniLM-L6 (22.7M parameters) is trained with each objective, with
all-mpnet-base-v2 (109M) as the teacher: STL (fine-tuning alone), KD, RKD, FT,
B-Tuning and AFT, on the same training examples and seeds. beta is chosen on a 10%
hold-out of the training set for each regularised method. Each teacher's linear-probe
accuracy (5-fold logistic regression on its features of the same training examples) and
LogME are reported too, as the x-axis of the paper's Fig. 3.

Claim checked: AFT cuts STL's test error by about 15% (the paper's average over 8 text
and 6 vision data sets) and beats the other objectives.
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks.evidence import common

METHODS = ("stl", "kd", "rkd", "ft", "btune", "aft")


def _methods(text: str) -> tuple[str, ...]:
    chosen = {m.strip() for m in text.split(",") if m.strip()}
    if not chosen or chosen - set(METHODS):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(METHODS)}; got {text!r}")
    return tuple(m for m in METHODS if m in chosen or m == "stl")   # STL is the baseline of every table


def add_args(ap) -> None:
    ap.add_argument("--methods", type=_methods, default=METHODS, metavar="M[,M...]",
                    help=f"a subset of {','.join(METHODS)} (STL is always trained: it is the baseline); "
                         "the output names say so")


def main() -> None:
    ctx = common.start("text", __doc__, add_args)
    methods = ctx.args.methods
    if methods != METHODS:
        ctx.name = "text_" + "-".join(methods)
    s = ctx.setting("text")
    teacher = s.teachers[0]   # mpnet-base
    print(s.describe(), flush=True)
    common.extract_teachers(s, s.teachers)

    # What a linear model gets from each frozen feature set (mpnet: the teacher; MiniLM: the student's start).
    from transfer.ranking import rank

    scores = rank(s.dataset, list(s.teachers), metrics=("probe", "logme"), limit=s.limit_train, progress=False)
    probes = {r.model: {"probe": float(r.probe), "logme": float(r.logme)} for r in scores.itertuples()}

    # The floor: always answering the test split's majority class (a student that learned nothing).
    from zoo.datasets import load_dataset

    test_labels = load_dataset(s.dataset).split("test").labels[:s.limit_test]
    majority = float(np.bincount(test_labels).max() / len(test_labels))

    results = [common.seeds_loop(ctx, s, m, [] if m == "stl" else [teacher]) for m in methods]
    stl, aft = results[0], next((r for r in results if r["method"] == "aft"), None)
    cut = common.error_reduction(aft["mean"], stl["mean"]) if aft else None
    best = max(results, key=lambda r: r["mean"])
    verdict = ((f"AFT changed STL's test error by {0.0 - 100 * cut:+.0f}% "
                f"({common.pm(stl['mean'], stl['se'])} -> {common.pm(aft['mean'], aft['se'])} %, {aft['n']} seeds; "
                f"the paper: about -15%); " if aft else "") + f"best objective here: {best['label']}.")

    print("\n" + common.markdown_table(common.RESULT_HEADERS, common.result_rows(results, stl)))
    print("\n" + common.markdown_table(
        ["frozen features", "linear probe % (5-fold CV, training examples)", "LogME"],
        [[m, f"{100 * v['probe']:.1f}", f"{v['logme']:.3f}"] for m, v in probes.items()]))
    print(f"\nmajority class of the {len(test_labels):,} test texts: {100 * majority:.1f}%")
    print("\n" + verdict)

    fig, axes = common.figure(width=7.0)
    ax = axes[0][0]
    common.dot_plot(ax, [r["label"] for r in results], [r["accuracy"] for r in results],
                lines=[(stl["mean"], "STL"), (probes[teacher]["probe"], f"{teacher} linear probe"),
                       (majority, "majority class")],
                title=f"MiniLM-L6 on Rotten Tomatoes, teacher {teacher}\n({ctx.label}, mean ± SE, "
                      f"{stl['n']} seeds)")
    common.save(ctx, {"setting": s, "teacher": teacher, "results": results, "probes": probes, "majority": majority,
                      "error_cut_aft_vs_stl": cut, "verdict": verdict}, fig)


if __name__ == "__main__":
    main()
