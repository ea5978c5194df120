"""Experiment 6, ablations (the paper's section 5.3, Fig. 7b): which parts of AFT matter?

    python -m benchmarks.evidence.ablations [--modality image|text] [--full] [--seeds N]

AFT against its variants, same student, teacher (Lite2 for images, mpnet for text), data
and seeds, beta chosen on the 10% hold-out for each:
  no kernel         a learned linear map teacher -> student, centred features, MSE (the paper's Eq. 6);
  identity weights  s fixed: every teacher dimension weighted equally, nothing learned;
  dense weights     a dense d_t x d_t map (from the identity) instead of the diagonal sigmoid(s);
  RBF kernel        an RBF kernel of the normalised features instead of the linear one.

Claim checked (the paper): the kernel and the learned weights are essential (no kernel and
identity weights do worse), the RBF kernel changes little, a dense map is slightly worse.
"""
from __future__ import annotations

from benchmarks.evidence import common

METHODS = ("aft", "aft_nokernel", "aft_identity", "aft_dense", "aft_rbf")


def main() -> None:
    ctx, s = common.start_one_modality("ablations", __doc__)
    teacher = s.teachers[0]
    print(s.describe(), f"\nteacher: {teacher}", flush=True)
    common.extract_teachers(s, [teacher])

    stl = common.seeds_loop(ctx, s, "stl")
    results = [common.seeds_loop(ctx, s, m, [teacher]) for m in METHODS]
    aft = results[0]
    diffs = {r["method"]: 100 * (r["mean"] - aft["mean"]) for r in results[1:]}
    verdict = ("Against AFT " + common.pm(aft["mean"], aft["se"]) + " %: " + ", ".join(
        f"{r['label']} {d:+.1f}" for r, d in zip(results[1:], diffs.values())) + f" points ({aft['n']} seeds).")

    print("\n" + common.markdown_table(common.RESULT_HEADERS, common.result_rows([stl, *results], stl)))
    print("\n" + verdict)

    fig, axes = common.figure(width=6.4)
    short = {"aft": "AFT", "aft_nokernel": "no kernel", "aft_identity": "identity\nweights",
             "aft_dense": "dense\nweights", "aft_rbf": "RBF kernel"}
    common.dot_plot(axes[0][0], [short[r["method"]] for r in results], [r["accuracy"] for r in results],
                lines=[(stl["mean"], "STL")], colors=["#1b4f72"] + ["#5dade2"] * (len(results) - 1),
                title=f"AFT ablations: {s.student} on {s.dataset}, teacher {teacher}\n"
                      f"({ctx.label}, {aft['n']} seeds)")
    common.save(ctx, {"setting": s, "teacher": teacher, "stl": stl, "results": results,
                      "points_vs_aft": diffs, "verdict": verdict}, fig)


if __name__ == "__main__":
    main()
