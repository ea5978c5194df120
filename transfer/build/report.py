"""The report card of a build: Markdown and a self-contained HTML page beside the export, with the data
behind them (report.json). Every number is read from the build's summary, which the flow reads from the
catalog: the card and the catalog say the same thing."""
from __future__ import annotations

import json
from pathlib import Path

CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
       "th{background:#f3f3f7}code,pre{background:#f6f6f6}pre{padding:.6em;overflow-x:auto}")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def pct_se(x: float | None, se: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} ± {100 * se:.1f}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _cuts(degraded: list[str]) -> str:
    """The budget's cuts, each run of the same kind ("steps 2500", "steps 1250", ...) shown by its last."""
    import re

    kept: list[str] = []
    for item in degraded:
        key = re.split(r"\d", item, maxsplit=1)[0]
        if kept and re.split(r"\d", kept[-1], maxsplit=1)[0] == key:
            kept[-1] = item
        else:
            kept.append(item)
    return "; ".join(kept) or "nothing"


def _candidates(s: dict) -> list[str]:
    rows = []
    for c in s["candidates"]:
        mark = " **(chosen)**" if c["run_id"] == s["chosen"]["run_id"] else ""
        rows.append([c["label"] + mark, ", ".join(c["teachers"]) or "-", pct_se(c["holdout_accuracy"], c["holdout_se"]),
                     pct(c.get("test_accuracy")), c.get("steps") or "-", c["how"] or "-", f"`{c['run_id']}`"])
    n = s["candidates"][0]["holdout_n"]
    return [f"## Candidates on the hold-out ({n:,} examples, {100 * s['config']['holdout_fraction']:.0f}% of the "
            "training set)", "",
            "Each candidate trained on the rest of the training set; ± is the binomial standard error on the "
            "hold-out. Test accuracy is of the same trial model.", "",
            *_table(["candidate", "teachers", "hold-out accuracy", "test accuracy", "steps", "how", "run"], rows)]


def _teachers(s: dict) -> list[str]:
    lat = s["latency"]
    by_name = {t["teacher"]: t for t in lat["teachers"]}
    student_mb = s["export"][s["export"]["shipped"]]["bytes"] / 1e6
    rows = [[f"student {s['resolved']['student']} ({s['export']['shipped']}, onnxruntime)",
             "-", "-", f"{s['resolved']['params'] / 1e6:.1f}M" if s["resolved"].get("params") else "-", f"{student_mb:.1f} MB",
             f"{lat['student_ms']:.2f}", f"{1000 / lat['student_ms']:.0f}"]]
    for r in s["ranking"]:
        t = by_name.get(r["model"])
        rows.append([f"teacher {r['model']} (PyTorch)" + ("" if t else ", not used"),
                     "-" if r.get("logme") is None else f"{r['logme']:.3f}", pct(r.get("probe")),
                     f"{t['teacher_params'] / 1e6:.1f}M" if t else "-",
                     f"{4 * t['teacher_params'] / 1e6:.1f} MB (fp32)" if t else "-",
                     f"{t['teacher_ms']:.2f}" if t else "-", f"{1000 / t['teacher_ms']:.0f}" if t else "-"])
    n = s["ranking"][0]["n"] if s["ranking"] else 0
    return ["## Student against teachers", "",
            f"Linear probe: 5-fold cross-validated logistic regression on the teacher's features of {n:,} training "
            f"examples. Latency: best of 3 passes over the same {lat['inputs']} test inputs, in one batch, "
            "preprocessing included.", "",
            *_table(["model", "LogME", "linear probe", "params", "size", "ms per input", "inputs per second"], rows)]


def markdown(s: dict) -> str:
    f, e = s["final"], s["export"]
    no_teacher = s["chosen"]["method"] == "stl"
    lines = [f"# Report card: {s['dataset']} -> {s['resolved']['student']}", "",
             f"**Built:** {s['chosen']['label']}" + ("" if no_teacher else f" with {', '.join(f['teachers'])}")
             + f", retrained on all {s['plan']['examples']:,} training examples: **test accuracy "
             f"{pct(f['test_accuracy'])}**. STL's trial: {pct(s['stl_test_accuracy'])} on the test split.", "",
             f"**Why:** {s['why']}", ""]
    if no_teacher:
        lines += ["**No teacher helped here.** The shipped student is plain fine-tuning (STL).", ""]
    lines += _candidates(s) + [""] + _teachers(s) + [""]
    if s["aft_weights"]:
        lines += ["## AFT's learned weights", "", "Mean of sigmoid(s) over each teacher's feature dimensions "
                  "(0.5 at the start).", "",
                  *_table(["teacher", "mean weight"], [[t, f"{w:.3f}"] for t, w in s["aft_weights"].items()]), ""]
    parity = e["fp32"]["parity"]["model"]
    lines += ["## Export", "",
              f"- ONNX float32: parity with PyTorch on {e['fp32']['parity']['examples']} test examples: max |logit "
              f"difference| {parity['max_abs_logit_diff']:.1e}, top-1 agreement {parity['top1_agreement']:.3f} "
              f"({'passed' if e['fp32']['parity']['passed'] else 'FAILED'}).",
              f"- int8 decision: {e['decision']}.",
              f"- Shipped: `{e['path']}` ({e[e['shipped']]['bytes'] / 1e6:.1f} MB); download: `{e['zip']}`.",
              f"- Serve it: `{e['serve_command']}`", ""]
    plan, minutes = s["plan"], s["budget"]["minutes"]
    lines += ["## Budget", "",
              f"- Budget: {'none' if minutes is None else f'{minutes:g} minutes'}; "
              f"planned {plan['estimate_seconds'] / 60:.1f} minutes from a measured "
              f"{s['costs']['step_seconds']:.2f} s per step; this invocation took {s['wall_seconds'] / 60:.1f} minutes.",
              f"- Gave up, in order: {_cuts(plan['degraded'])}"
              + ("" if plan["fits"] else " (still over the budget: the smallest plan was run)") + ".",
              f"- Order of giving up: {'; '.join(s['budget']['order'])}.", "",
              "## Repeat it", "", f"`{s['command']}`", "", "```toml", Path(s["config_file"]).read_text().strip()
              if Path(s["config_file"]).is_file() else "", "```", ""]
    return "\n".join(lines)


def html(md: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(md)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def write(folder: Path, summary: dict) -> dict:
    """Write report.md, report.html and report.json into ``folder``; return their paths and the Markdown."""
    md = markdown(summary)
    paths = {"markdown": folder / "report.md", "html": folder / "report.html", "json": folder / "report.json"}
    paths["markdown"].write_text(md)
    paths["html"].write_text(html(md, f"aftzoo build {summary['build_id']}"))
    paths["json"].write_text(json.dumps({k: v for k, v in summary.items() if k != "card"}, indent=2, default=str))
    return {**{k: str(p) for k, p in paths.items()}, "text": md}
