"""Paired significance: McNemar's exact test on per-example verdicts, Holm's correction.

Two systems scored on the same examples disagree on some of them: ``b`` where only the first is
right, ``c`` where only the second is. Under the null hypothesis (equal accuracy) each
disagreement is a fair coin, so the two-sided exact p-value is ``min(1, 2 * P(X <= min(b, c)))``
for ``X ~ Binomial(b + c, 1/2)``. Examples where either verdict is unknown (None) are left out.
Holm's step-down correction controls the family-wise error over all pairs of one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any


def mcnemar_exact(first: Sequence[bool | None], second: Sequence[bool | None]) -> dict[str, Any]:
    """The exact McNemar test of two paired verdict lists (same examples, same order)."""
    if len(first) != len(second):
        raise ValueError("paired verdict lists must have the same length")
    pairs = [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    only_first = sum(1 for a, b in pairs if a and not b)
    only_second = sum(1 for a, b in pairs if b and not a)
    discordant = only_first + only_second
    if discordant == 0:
        p = 1.0
    else:
        k = min(only_first, only_second)
        tail = sum(comb(discordant, i) for i in range(k + 1)) / 2**discordant
        p = min(1.0, 2.0 * tail)
    return {"n": len(pairs), "only_first": only_first, "only_second": only_second, "p_value": p}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
