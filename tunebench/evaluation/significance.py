"""Paired significance of two systems scored on the same examples, from per-example scores.

* Binary scores (right/wrong): McNemar's exact test. Of the examples where the systems disagree,
  ``b`` are right only for the first and ``c`` only for the second; under the null hypothesis
  (equal accuracy) each disagreement is a fair coin, so the two-sided p-value is
  ``min(1, 2 · P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``.
* Continuous scores (per-example F1 and the like): a paired permutation test by sign flips.
  Under the null hypothesis the two scores of an example are exchangeable, so each
  per-example difference is as likely to have the opposite sign. The p-value is
  ``(1 + #{resamples with |mean of sign-flipped differences| >= |observed mean difference|})
  / (1 + resamples)``, two-sided, with a fixed seed so that it reproduces.

Examples where either score is unknown (None) are left out of both tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

PERMUTATION_RESAMPLES = 10_000
PERMUTATION_SEED = 0


def _known_pairs(first: Sequence[Any], second: Sequence[Any]) -> list[tuple[Any, Any]]:
    if len(first) != len(second):
        raise ValueError("paired score lists must have the same length")
    return [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]


def mcnemar_exact(first: Sequence[bool | None], second: Sequence[bool | None]) -> dict[str, Any]:
    """The exact McNemar test of two paired verdict lists (same examples, same order)."""
    pairs = _known_pairs(first, second)
    only_first = sum(1 for a, b in pairs if a and not b)
    only_second = sum(1 for a, b in pairs if b and not a)
    discordant = only_first + only_second
    if discordant == 0:
        p = 1.0
    else:
        k = min(only_first, only_second)
        tail = sum(comb(discordant, i) for i in range(k + 1)) / 2**discordant
        p = min(1.0, 2.0 * tail)
    return {
        "test": "mcnemar_exact",
        "n": len(pairs),
        "only_first": only_first,
        "only_second": only_second,
        "p_value": p,
    }


def paired_permutation_test(
    first: Sequence[float | None],
    second: Sequence[float | None],
    resamples: int = PERMUTATION_RESAMPLES,
    seed: int = PERMUTATION_SEED,
) -> dict[str, Any]:
    """Two-sided paired sign-flip permutation test of the mean difference (first - second)."""
    pairs = _known_pairs(first, second)
    diffs = np.array([float(a) - float(b) for a, b in pairs], dtype=np.float64)
    out: dict[str, Any] = {
        "test": "paired_permutation",
        "n": len(pairs),
        "mean_first": float(np.mean([float(a) for a, _ in pairs])) if pairs else None,
        "mean_second": float(np.mean([float(b) for _, b in pairs])) if pairs else None,
        "mean_difference": float(diffs.mean()) if pairs else None,
        "resamples": resamples,
        "seed": seed,
    }
    if not pairs or not np.any(diffs):
        out["p_value"] = 1.0
        return out
    observed = abs(diffs.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, diffs.size))
    flipped = np.abs((signs * diffs).mean(axis=1))
    # A small tolerance so that resamples equal to the observed mean count as "as extreme"
    # despite floating-point summation order.
    extreme = int(np.sum(flipped >= observed - 1e-12))
    out["p_value"] = (1 + extreme) / (1 + resamples)
    return out


def is_binary(scores: Sequence[Any]) -> bool:
    """Every known score is a bool or exactly 0 or 1."""
    return all(isinstance(s, bool) or s in (0, 1) for s in scores if s is not None)


def paired_test(first: Sequence[Any], second: Sequence[Any], seed: int = PERMUTATION_SEED) -> dict[str, Any]:
    """McNemar for binary per-example scores, the paired permutation test otherwise."""
    if is_binary(first) and is_binary(second):
        return mcnemar_exact(first, second)
    return paired_permutation_test(first, second, seed=seed)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over one table), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
