"""Evaluation stage: predictions JSONL in, ``metrics.json`` + ``per_example.jsonl`` out.

One interface for every task. A task's scorer is a module exposing::

    REQUIRED_FIELDS: tuple[str, ...]          # fields each predictions row must carry
    def score(rows: list[dict], options: dict) -> tuple[list[dict], dict]

``score`` returns one dict per row (always with ``id`` and ``error``) and the metrics dict
(conventions in :mod:`tunebench.evaluation.common`). :func:`evaluate` reads the file, checks
the fields and the ids (each once, and each one of the gold set's when there is one), calls the
scorer and writes the outputs.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.evaluation.common import write_outputs
from tunebench.io import iter_jsonl, read_jsonl

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
    gold_ids: Iterable[Any] | None = None,
) -> dict[str, Any]:
    """Score ``predictions`` for ``task`` and write the results into ``out_dir``.

    ``gold_ids``: the ids the predictions may have (default: those of ``prepared/<split>.jsonl``
    when ``predictions`` is a run directory's ``predictions/<split>.jsonl``).
    """
    scorer = get_scorer(task)
    rows = read_jsonl(predictions, required=("id", *scorer.REQUIRED_FIELDS))
    if gold_ids is None:
        gold_ids = prepared_ids_beside(Path(predictions))
    check_ids(predictions, rows, gold_ids)
    per_example, metrics = scorer.score(rows, dict(options or {}))
    metrics = {"task": task, "predictions": str(predictions), **metrics}
    write_outputs(out_dir, per_example, metrics)
    return metrics


def check_ids(predictions: str | Path, rows: list[dict[str, Any]], gold_ids: Iterable[Any] | None) -> None:
    """Refuse a row whose id came before, or that is not in ``gold_ids`` (when given): scoring
    it would count an example twice or count one that is not in the set."""
    known = None if gold_ids is None else {_id_key(i) for i in gold_ids}
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        key = _id_key(row["id"])
        if key in seen:
            raise TunebenchError(
                f"{predictions}: row {number}: id {key} appears twice (first in row {seen[key]})"
            )
        seen[key] = number
        if known is not None and key not in known:
            raise TunebenchError(f"{predictions}: row {number}: id {key} is not in the gold set")


def prepared_ids_beside(predictions: Path) -> list[Any] | None:
    """The ids of a run directory's ``prepared/<split>.jsonl`` for its
    ``predictions/<split>.jsonl`` (None for a predictions file elsewhere)."""
    prepared = predictions.parent.parent / "prepared" / predictions.name
    if predictions.parent.name != "predictions" or not prepared.is_file():
        return None
    return [row.get("id") for row in iter_jsonl(prepared)]


def _id_key(value: Any) -> str:
    """An id as it is named in messages (JSON, so 1 and "1" stay apart)."""
    return json.dumps(value, ensure_ascii=False)
