"""What every task's evaluator shares: bootstrap confidence intervals and the output files.

Each task plugs in a function ``score(rows, options) -> (per_example, metrics)``; this module
turns its output into ``metrics.json`` and ``per_example.jsonl`` with one convention:

* a metric ``m`` is a float in [0, 1] stored flat as ``metrics["m"]``, its 95% bootstrap interval
  as ``metrics["m_ci95"] = [low, high]`` and, when it is computed on a subset of the examples,
  the subset's size as ``metrics["m_n"]``;
* a per-example verdict is ``True``/``False`` or ``None`` where it could not be computed, with
  the reason in that row's ``error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunebench.io import write_json, write_jsonl

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    values: Sequence[float | bool],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (None when empty).

    The seed is fixed so that re-scoring the same predictions reproduces the same interval.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(resamples, data.size))
    means = data[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return [round(float(low), 6), round(float(high), 6)]


def add_rate(
    metrics: dict[str, Any], name: str, verdicts: Sequence[bool | None], with_n: bool = False
) -> None:
    """Store the mean of the non-null ``verdicts`` as ``name`` with its CI (and ``name_n``)."""
    known = [bool(v) for v in verdicts if v is not None]
    metrics[name] = round(sum(known) / len(known), 6) if known else None
    metrics[f"{name}_ci95"] = bootstrap_ci(known)
    if with_n:
        metrics[f"{name}_n"] = len(known)


def add_mean(metrics: dict[str, Any], name: str, values: Sequence[float]) -> None:
    """Store the mean of float ``values`` (e.g. per-example F1) with its CI."""
    metrics[name] = round(float(np.mean(values)), 6) if len(values) else None
    metrics[f"{name}_ci95"] = bootstrap_ci(values)


def write_outputs(out_dir: str | Path, per_example: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` and ``per_example.jsonl`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "per_example.jsonl", per_example)
    write_json(out / "metrics.json", metrics)


def summarize_errors(
    classified: Sequence[dict[str, Any]],
    scored: int,
    categories: Sequence[str],
    benchmark: Sequence[str],
    examples_per_category: int = 3,
) -> dict[str, Any]:
    """Counts and examples of classified wrong predictions, split into model and benchmark.

    ``classified``: one dict per wrong example with ``id`` and ``category`` (plus whatever the
    examples should show, e.g. prediction and gold). Returns ``scored`` (examples with a
    verdict), ``wrong``, ``categories`` (category -> ``count`` and up to
    ``examples_per_category`` ``examples``, every category listed in ``categories``' order),
    ``split`` (``model`` / ``benchmark`` counts; ``benchmark`` counts the categories in
    ``benchmark``) and ``per_example`` (the classified rows).
    """
    table: dict[str, dict[str, Any]] = {c: {"count": 0, "examples": []} for c in categories}
    for row in classified:
        entry = table.setdefault(row["category"], {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples_per_category:
            entry["examples"].append({k: v for k, v in row.items() if k != "category"})
    blamed_on_benchmark = sum(table[c]["count"] for c in benchmark if c in table)
    return {
        "scored": scored,
        "wrong": len(classified),
        "categories": table,
        "split": {"model": len(classified) - blamed_on_benchmark, "benchmark": blamed_on_benchmark},
        "per_example": list(classified),
    }
