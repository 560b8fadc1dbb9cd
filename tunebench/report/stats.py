"""Paired significance for the report: the tests of :mod:`tunebench.evaluation.significance`.

McNemar's exact test compares per-example right/wrong verdicts, a seeded paired sign-flip
permutation test compares continuous per-example scores (F1 and the like), and Holm's
correction controls the family-wise error over the pairs of one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunebench.evaluation.significance import (
    PERMUTATION_RESAMPLES,
    PERMUTATION_SEED,
    holm,
    is_binary,
    mcnemar_exact,
    paired_permutation_test,
    paired_test,
)

__all__ = [
    "PERMUTATION_RESAMPLES",
    "PERMUTATION_SEED",
    "holm",
    "is_binary",
    "mcnemar_exact",
    "paired_permutation_test",
    "paired_test",
    "scores_of",
]


def scores_of(per_example: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """id -> the ``key`` score of each example (True/False, a number or None); None when the rows
    lack ``key`` or a value is neither (text: not a score to test)."""
    if not per_example or key not in per_example[0]:
        return None
    values = {r["id"]: r.get(key) for r in per_example}
    if not all(v is None or isinstance(v, bool | int | float) for v in values.values()):
        return None
    return values
