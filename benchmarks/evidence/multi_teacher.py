"""Experiment 3, multiple teachers (the paper's Fig. 2c): teachers alone and combined, with AFT.

    python -m benchmarks.evidence.multi_teacher [--modality image|text|both] [--full] [--seeds N]

Images: the ResNet-18 from scratch on Fashion-MNIST with EfficientNet-Lite0, Lite2, and
Lite0 + Lite2 (their features side by side, one weight per dimension). Text: MiniLM-L6 on
Rotten Tomatoes with MiniLM-L6 (its own pre-trained features), mpnet, and both. STL is
the reference; beta is chosen on the 10% hold-out for each.

Claim checked: AFT gains from combining teachers (the paper: yes for vision models with
complementary pre-training, Fig. 2c; often no for similar language models, Fig. 5).
"""
from __future__ import annotations

from benchmarks.evidence import common


def add_args(ap) -> None:
    ap.add_argument("--modality", choices=("image", "text", "both"), default="image",
                    help="image (default, minutes), text (MiniLM-L6 + mpnet, slower) or both")


def one(ctx, modality: str) -> dict:
    s = ctx.setting(modality)
    b, a = s.teachers   # the stronger teacher is listed first; here the weaker one goes first
    print(f"\n## {modality}: " + s.describe(), flush=True)
    common.extract_teachers(s, [a, b])
    stl = common.seeds_loop(ctx, s, "stl")
    results = [common.seeds_loop(ctx, s, "aft", t) for t in ([a], [b], [a, b])]
    single = max(results[:2], key=lambda r: r["mean"])
    both = results[2]
    gain = 100 * (both["mean"] - single["mean"])
    verdict = (f"{modality}: AFT with {a} + {b} {common.pm(both['mean'], both['se'])} % against the better single "
               f"teacher ({single['teachers'][0]}) {common.pm(single['mean'], single['se'])} %: "
               f"{gain:+.1f} points ({stl['n']} seeds; STL {common.pm(stl['mean'], stl['se'])} %).")
    print("\n" + common.markdown_table(common.RESULT_HEADERS, common.result_rows([stl, *results], stl)))
    print("\n" + verdict)
    return {"setting": s, "stl": stl, "results": results, "gain_points_vs_best_single": gain, "verdict": verdict}


def main() -> None:
    ctx = common.start("multi_teacher", __doc__, add_args)
    modalities = ["image", "text"] if ctx.args.modality == "both" else [ctx.args.modality]
    if ctx.args.modality != "image":
        ctx.name = f"multi_teacher_{ctx.args.modality}"
    parts = {m: one(ctx, m) for m in modalities}

    fig, axes = common.figure(ncols=len(parts), width=5.2)
    for ax, p in zip(axes[0], parts.values()):
        short = lambda t: t.replace("efficientnet-", "").replace("-base", "")  # noqa: E731
        labels = [" + ".join(map(short, r["teachers"])) for r in p["results"]]
        s = p["setting"]
        common.dot_plot(ax, labels, [r["accuracy"] for r in p["results"]], lines=[(p["stl"]["mean"], "STL")],
                    colors=["#5dade2", "#5dade2", "#1b4f72"],
                    title=f"AFT, {s.student} on {s.dataset}: teachers alone and combined\n"
                          f"({ctx.label}, {p['stl']['n']} seeds)")
    common.save(ctx, {"parts": parts, "verdict": " ".join(p["verdict"] for p in parts.values())}, fig)


if __name__ == "__main__":
    main()
