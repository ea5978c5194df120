"""The app's drawn charts (matplotlib): rankings and method comparisons.

Drawn here rather than with Gradio's own plots because these need what those lack: bars
that start where the scale says (scores can be negative), error bars, and labels on
every bar. Each function takes the plain frames of ``app.views``.
"""
from __future__ import annotations

import pandas as pd

from app import views


def _figure(rows: int):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 0.9 + 0.42 * max(rows, 1)), layout="constrained")


def _empty(fig, text: str):
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555")
    ax.set_axis_off()
    return fig


def score_chart(table: pd.DataFrame, metric: str):
    """One score per teacher, best at the top, longer bar = better.

    Scores such as LogME are often negative, where bars drawn from zero make the better
    teacher the shorter bar; bars start a little below the lowest score instead (the
    axis says so), and each is labelled with its value.
    """
    long = views.ranking_long(table, [metric]).sort_values("score")
    fig = _figure(len(long))
    if long.empty:
        return _empty(fig, "no scores yet: rank some teachers")
    ax = fig.add_subplot()
    low, high = float(long["score"].min()), float(long["score"].max())
    base = 0.0 if low >= 0 else low - 0.15 * max(high - low, abs(low) * 0.1, 1e-3)
    bars = ax.barh(long["model"], long["score"] - base, left=base, color="#6366f1")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in long["score"]], padding=3)
    label = views.METRIC_LABELS.get(metric, metric)
    ax.set_xlabel(f"{label}, higher is better" + ("" if base == 0 else f" (bars start at {base:.3f})"))
    ax.set_title(f"{label} by teacher, best at the top", loc="left", fontsize=10)
    ax.set_xlim(base, high + 0.25 * max(high - base, 1e-3))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def comparison_chart(table: pd.DataFrame):
    """Test accuracy per method within each matched comparison, with the spread over seeds as error bars."""
    fig = _figure(len(table) + 2 * table["comparison"].nunique() if not table.empty else 1)
    if table.empty:
        return _empty(fig, "no comparison yet: two methods (or betas) run with the same data,\n"
                           "student, steps and example counts appear here")
    ax = fig.add_subplot()
    labels, ticks, y = [], [], 0.0
    for i, (name, group) in enumerate(table.groupby("comparison", sort=False)):
        if i:
            y += 0.8  # a gap between comparisons
        ax.text(0, y - 0.6, name, fontsize=8, color="#333", transform=ax.get_yaxis_transform())
        for _, row in group.iterrows():
            ax.barh(y, row["accuracy"], xerr=row["spread"] if row["runs"] > 1 else None, capsize=3,
                    color=views.PALETTE[len(labels) % len(views.PALETTE)])
            ax.text(row["accuracy"] + 0.01, y, f"{row['accuracy']:.3f} ({row['runs']} run{'s' * (row['runs'] > 1)})",
                    va="center", fontsize=8)
            labels.append(row["method"])
            ticks.append(y)
            y += 1
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("test accuracy (mean over seeds; bars: std)")
    ax.spines[["top", "right"]].set_visible(False)
    return fig
