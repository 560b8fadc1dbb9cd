"""Report figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

DPI = 110


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    # Fixed metadata keeps the PNG bytes reproducible for the same numbers.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def loss_curves(title: str, curves: dict[str, list[dict[str, Any]]]) -> bytes:
    """Training (dashed) and validation (solid) loss of every system, against epochs.

    Epochs are the one x-axis LoRA and OpenAI logs share (their steps mean different batches).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (system, rows) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        for split, style in (("train", "--"), ("validation", "-")):
            points = [(r.get("epoch", r["step"]), r["loss"]) for r in rows if r.get("split") == split]
            if points:
                xs, ys = zip(*points, strict=True)
                marker = "o" if split == "validation" else None
                ax.plot(xs, ys, style, color=color, marker=marker, markersize=3, label=f"{system} {split}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def grouped_bars(
    title: str,
    ylabel: str,
    groups: list[str],
    series: dict[str, list[float | None]],
    errors: dict[str, list[tuple[float, float] | None]] | None = None,
) -> bytes:
    """One group of bars per x label (e.g. task/metric), one bar per series (system)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        heights = [v if v is not None else 0.0 for v in values]
        yerr = None
        if errors and name in errors:
            lows, highs = [], []
            for v, ci in zip(values, errors[name], strict=True):
                lows.append(max(0.0, v - ci[0]) if v is not None and ci else 0.0)
                highs.append(max(0.0, ci[1] - v) if v is not None and ci else 0.0)
            yerr = np.array([lows, highs])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=yerr, capsize=3, label=name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def break_even_plot(title: str, lines: list[dict[str, Any]]) -> bytes:
    """Monthly cost against monthly queries: self-hosted steps (24/7 GPUs) vs per-token APIs.

    Each line is ``{"label", "kind": "self"|"api", "monthly", "capacity"}`` or
    ``{"label", "kind": "api", "per_query"}``; break-even points are marked.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    top = max(
        [ln["capacity"] * 3 for ln in lines if ln["kind"] == "self"]
        + [ln.get("break_even") * 3 for ln in lines if ln.get("break_even")]
        + [1e4]
    )
    volumes = np.logspace(2, np.log10(top), 400)
    for ln in lines:
        if ln["kind"] == "self":
            costs = ln["monthly"] * np.maximum(1, np.ceil(volumes / ln["capacity"]))
            ax.plot(volumes, costs, drawstyle="steps-post", label=ln["label"])
        else:
            ax.plot(volumes, volumes * ln["per_query"], "--", label=ln["label"])
        if ln.get("break_even"):
            ax.plot([ln["break_even"]], [ln["break_even_cost"]], "ko", markersize=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries per month")
    ax.set_ylabel("USD per month")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _png(fig)
