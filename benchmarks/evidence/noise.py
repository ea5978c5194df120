"""Experiment 2, noise robustness (the paper's Fig. 6b and 6c): add a teacher of pure Gaussian noise.

    python -m benchmarks.evidence.noise [--modality image|text] [--full] [--seeds N]

The real teacher (EfficientNet-Lite2 for images, mpnet for text) is paired with a "teacher"
whose features are i.i.d. Gaussian noise as wide as the real one (``zoo.registry.noise_spec``:
a fixed random function of each example, so half of the teacher dimensions say nothing about
the label). KD and AFT are trained with the real teacher alone and with real + noise; beta is
chosen on the 10% hold-out for each, as everywhere.

Claims checked: AFT's accuracy barely moves when the noise is added, KD's falls toward STL
(Fig. 6b), and AFT learns smaller weights sigmoid(s) on the noise dimensions (Fig. 6c; the
trainer logs the mean weight per teacher).
"""
from __future__ import annotations

import numpy as np

from benchmarks.evidence import common


def main() -> None:
    ctx, s = common.start_one_modality("noise", __doc__, "MiniLM-L6 on Rotten Tomatoes, teacher mpnet; slower")
    real = s.teachers[0]
    noise = common.noise_teacher(real)
    print(s.describe(), f"\nteachers: {real} and {noise}", flush=True)
    common.extract_teachers(s, [real, noise])

    stl = common.seeds_loop(ctx, s, "stl")
    results = {"stl": stl}
    for method in ("kd", "aft"):
        results[method] = common.seeds_loop(ctx, s, method, [real])
        results[f"{method}+noise"] = common.seeds_loop(ctx, s, method, [real, noise])

    def drop(method: str) -> float:   # accuracy lost to the noise, in points
        return 100 * (results[method]["mean"] - results[f"{method}+noise"]["mean"])

    w = results["aft+noise"]["weights"]
    w_real, w_noise = w.get(f"weight_mean/{real}", []), w.get(f"weight_mean/{noise}", [])
    weights = {"real": common.mean_se(w_real), "noise": common.mean_se(w_noise)}
    # How much of KD's gain over STL the noise erased (1 = all of it: KD fell to STL).
    kd_gain = results["kd"]["mean"] - stl["mean"]
    kd_erased = (results["kd"]["mean"] - results["kd+noise"]["mean"]) / kd_gain if kd_gain > 0 else float("nan")
    w_pm = {k: common.pm(*v, scale=1, digits=3) for k, v in weights.items()}
    verdict = (f"Adding noise changed AFT by {0.0 - drop('aft'):+.1f} points and KD by {0.0 - drop('kd'):+.1f} "
               f"points (STL {common.pmr(stl)} %); AFT's mean weight on the noise dimensions {w_pm['noise']} "
               f"against {w_pm['real']} on the real ones ({stl['n']} seeds).")

    rows = common.result_rows(list(results.values()), stl)
    print("\n" + common.markdown_table(common.RESULT_HEADERS, rows))
    print("\n" + common.markdown_table(
        ["AFT with real + noise", "mean learned weight sigmoid(s) (mean ± SE over seeds)"],
        [[f"{real} dimensions", w_pm["real"]], [f"{noise} dimensions", w_pm["noise"]]]))
    print("\n" + verdict)

    fig, axes = common.figure(ncols=2, width=5.2)
    order = ["stl", "kd", "kd+noise", "aft", "aft+noise"]
    labels = ["STL", "KD", "KD + noise", "AFT", "AFT + noise"]
    common.dot_plot(axes[0][0], labels, [results[k]["accuracy"] for k in order], lines=[(stl["mean"], "STL")],
                colors=["#555555", "#e67e22", "#a04000", "#5dade2", "#1b4f72"],
                title=f"{s.student} on {s.dataset}, teacher {real} (+ {noise})\n({ctx.label}, {stl['n']} seeds)")
    ax = axes[0][1]
    for i, (v, color) in enumerate(((w_real, "#1b4f72"), (w_noise, "#888888"))):
        m, se = common.mean_se(v)
        ax.errorbar(i, m, yerr=0 if se != se else se, fmt="o", markersize=8, capsize=5, color=color, zorder=3)
        ax.scatter(np.full(len(v), i) + np.linspace(-0.08, 0.08, len(v)), v, s=10, color="#555555", zorder=2)
    ax.set_xlim(-0.6, 1.6)
    ax.axhline(0.5, color="#555555", linestyle=":", linewidth=1, label="initial weight sigmoid(0) = 0.5")
    shown = [*w_real, *w_noise, 0.5]
    ax.set_ylim(max(0.0, min(shown) - 0.05), min(1.0, max(shown) + 0.05))   # zoomed: the gap may be small
    ax.set_xticks([0, 1], [f"{real}\ndimensions", "noise\ndimensions"], fontsize=8)
    ax.set_ylabel("AFT's mean learned weight sigmoid(s)")
    ax.set_title("Fig. 6c: AFT's weights, real vs noise", fontsize=9)
    ax.legend(fontsize=8)
    common.save(ctx, {"setting": s, "real_teacher": real, "noise_teacher": noise, "results": results,
                      "aft_weights": {"real": w_real, "noise": w_noise}, "accuracy_drop_points":
                      {"aft": drop("aft"), "kd": drop("kd")}, "kd_gain_erased": kd_erased, "verdict": verdict}, fig)


if __name__ == "__main__":
    main()
