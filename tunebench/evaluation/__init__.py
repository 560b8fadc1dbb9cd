"""Evaluation stage: predictions JSONL in, ``metrics.json`` + ``per_example.jsonl`` out.

One interface for every task. A task's scorer is a module exposing::

    REQUIRED_FIELDS: tuple[str, ...]          # fields each predictions row must carry
    def score(rows: list[dict], options: dict) -> tuple[list[dict], dict]

``score`` returns one dict per row (always with ``id`` and ``error``) and the metrics dict
(conventions in :mod:`tunebench.evaluation.common`). :func:`evaluate` reads the file, checks
the fields, calls the scorer and writes the outputs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.evaluation.common import write_outputs
from tunebench.io import read_jsonl

SCORERS = {
    "sql": "tunebench.evaluation.sql",
    "viggo": "tunebench.evaluation.viggo",
    "custom": "tunebench.evaluation.custom",
}


def get_scorer(task: str) -> Any:
    """Import the scorer module of ``task`` (a one-line error for an unknown task)."""
    if task not in SCORERS:
        raise TunebenchError(f"unknown task '{task}' (known: {', '.join(sorted(SCORERS))})")
    return importlib.import_module(SCORERS[task])


def evaluate(
    task: str,
    predictions: str | Path,
    out_dir: str | Path,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``predictions`` for ``task`` and write the results into ``out_dir``."""
    scorer = get_scorer(task)
    rows = read_jsonl(predictions, required=("id", *scorer.REQUIRED_FIELDS))
    per_example, metrics = scorer.score(rows, dict(options or {}))
    metrics = {"task": task, "predictions": str(predictions), **metrics}
    write_outputs(out_dir, per_example, metrics)
    return metrics
