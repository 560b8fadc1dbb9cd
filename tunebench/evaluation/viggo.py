"""ViGGO scorer: predicted vs gold meaning representations (``function(attr[value], ...)``).

Metrics (each a float in [0, 1] with ``_ci95``, a 95% bootstrap interval over examples):

* ``exact_match`` - the study's metric: ``prediction.strip() == gold.strip()``.
* ``mr_match`` - same function and the same attribute/value pairs, in any order; list values
  (genres, platforms, player_perspective) compared as sets of items; whitespace in values folded
  (and case, with ``options["ignore_case"]``); a duplicated attribute is never a match.
* ``function_accuracy`` - the predicted function equals the gold one.
* ``parse_rate`` - the prediction parses as an MR (see :mod:`tunebench.evaluation.mr`).
* ``slot_precision`` / ``slot_recall`` / ``slot_f1`` - **micro-averaged** over all
  attribute=value pairs of the set (a pair counts as correct when the attribute is present with
  the whole value right); ``slot_f1_example_mean`` is the mean of the per-example F1.
* ``attribute_precision`` / ``attribute_recall`` / ``attribute_f1`` - the same over attribute
  names only (was the right attribute mentioned, whatever its value), micro-averaged.

An unparseable prediction counts as predicting nothing: wrong function, every gold attribute
missing. Unknown functions and attributes are parsed, listed per example and scored as wrong
(they can never equal a gold one). Only a gold MR that does not parse makes an example
unscorable (verdicts None, reason in ``error``); ``exact_match`` is still computed for it.

Counts (all rows): ``unparseable``, ``unknown_function`` and ``unknown_attribute`` (examples
with at least one), ``gold_invalid``. Breakdowns for reports, over scorable rows:
``error_counts`` (examples for wrong_function / unparseable / unknown_function, attributes for
missing / extra / wrong_value / duplicated / unknown_attribute), ``per_attribute``
(support / predicted / correct / missing / extra / wrong_value, and P/R/F1 per attribute),
``per_function`` and ``function_confusion`` (gold function -> predicted function -> count).

Per example: ``id``, ``exact_match``, ``mr_match``, ``function_match``, ``parsed`` and
``parse_error``, ``errors`` (``wrong_function``, and attribute lists ``missing`` / ``extra`` /
``wrong_value`` / ``duplicated``), ``attribute_status`` (attribute -> correct / missing / extra /
wrong_value), ``unknown_function``, ``unknown_attributes``, ``slots`` and ``attributes``
(correct / predicted / gold counts), ``slot_f1``, ``gold_function``, ``predicted_function``,
``error``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunebench.errors import TunebenchError
from tunebench.evaluation.common import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, add_mean, add_rate
from tunebench.evaluation.mr import ATTRIBUTES, FUNCTIONS, MR, parse_mr

REQUIRED_FIELDS = ("prediction", "gold")

UNPARSEABLE = "<unparseable>"
_KNOWN_FUNCTIONS = frozenset(FUNCTIONS)
_KNOWN_ATTRIBUTES = frozenset(ATTRIBUTES)


def score(rows: list[dict[str, Any]], options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every row (``id``, ``prediction``, ``gold``); return per-example rows and metrics."""
    ignore_case = options.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise TunebenchError(f"viggo option 'ignore_case' must be true or false, got {ignore_case!r}")
    per_example = [
        {"id": row["id"], **compare(row["prediction"], row["gold"], ignore_case=ignore_case)} for row in rows
    ]
    return per_example, aggregate(per_example)


def compare(prediction: object, gold: object, ignore_case: bool = False) -> dict[str, Any]:
    """Compare one prediction with its gold MR; the per-example row, without ``id``."""
    exact = (
        prediction.strip() == gold.strip() if isinstance(prediction, str) and isinstance(gold, str) else False
    )
    pred_mr = parse_mr(prediction)
    gold_mr = parse_mr(gold)
    row: dict[str, Any] = {
        "exact_match": exact,
        "mr_match": None,
        "function_match": None,
        "parsed": isinstance(pred_mr, MR),
        "parse_error": None if isinstance(pred_mr, MR) else str(pred_mr),
        "errors": None,
        "attribute_status": None,
        "unknown_function": None,
        "unknown_attributes": [],
        "slots": None,
        "attributes": None,
        "slot_f1": None,
        "gold_function": None,
        "predicted_function": pred_mr.function if isinstance(pred_mr, MR) else None,
        "error": None,
    }
    if isinstance(pred_mr, MR):
        if pred_mr.function not in _KNOWN_FUNCTIONS:
            row["unknown_function"] = pred_mr.function
        row["unknown_attributes"] = sorted({a for a in pred_mr.attributes if a not in _KNOWN_ATTRIBUTES})
    if not isinstance(gold_mr, MR):
        row["error"] = f"gold is not a valid MR: {gold_mr}"
        return row
    row["gold_function"] = gold_mr.function
    row.update(_diff(pred_mr if isinstance(pred_mr, MR) else None, gold_mr, ignore_case))
    return row


def _diff(pred: MR | None, gold: MR, ignore_case: bool) -> dict[str, Any]:
    """Verdicts, error breakdown and slot counts of a parsed (or None = unparseable) prediction."""
    gold_slots = gold.normalized(ignore_case)
    pred_slots = pred.normalized(ignore_case) if pred else {}
    pred_attrs = pred.attributes if pred else []
    function_match = pred is not None and pred.function == gold.function
    errors = {
        "wrong_function": not function_match,
        "missing": [a for a in gold_slots if a not in pred_slots],
        "extra": [a for a in pred_slots if a not in gold_slots],
        "wrong_value": [a for a in gold_slots if a in pred_slots and pred_slots[a] != gold_slots[a]],
        "duplicated": pred.duplicated() if pred else [],
    }
    correct = sum(1 for a in gold_slots if a in pred_slots and pred_slots[a] == gold_slots[a])
    # Precision is over every written slot, so a duplicated attribute costs precision.
    slots = {"correct": correct, "predicted": len(pred_attrs), "gold": len(gold_slots)}
    attr_correct = sum(1 for a in gold_slots if a in pred_slots)
    attributes = {"correct": attr_correct, "predicted": len(pred_slots), "gold": len(gold_slots)}
    # One word per attribute of either side, so reports can tally attributes without re-parsing.
    status = {a: "missing" for a in errors["missing"]} | {a: "extra" for a in errors["extra"]}
    status |= {a: "wrong_value" for a in errors["wrong_value"]}
    status = {a: status.get(a, "correct") for a in [*gold_slots, *errors["extra"]]}
    mr_match = function_match and not any(
        errors[k] for k in ("missing", "extra", "wrong_value", "duplicated")
    )
    return {
        "mr_match": mr_match,
        "function_match": function_match,
        "errors": errors,
        "attribute_status": status,
        "slots": slots,
        "attributes": attributes,
        "slot_f1": _f1(correct, slots["predicted"], slots["gold"]),
    }


def _f1(correct: int, predicted: int, gold: int) -> float:
    """F1 of one example; two empty sides agree perfectly."""
    total = predicted + gold
    return 1.0 if total == 0 else round(2.0 * correct / total, 6)


def aggregate(per_example: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of the whole set from the per-example rows of :func:`compare`."""
    scored = [r for r in per_example if r["error"] is None]
    subset = len(scored) != len(per_example)
    metrics: dict[str, Any] = {"n": len(per_example), "n_scored": len(scored)}
    add_rate(metrics, "exact_match", [r["exact_match"] for r in per_example])
    add_rate(metrics, "mr_match", [r["mr_match"] for r in per_example], with_n=subset)
    add_rate(metrics, "function_accuracy", [r["function_match"] for r in per_example], with_n=subset)
    add_rate(metrics, "parse_rate", [r["parsed"] for r in per_example])
    for kind in ("slots", "attributes"):
        prefix = "slot" if kind == "slots" else "attribute"
        _add_micro_prf(metrics, prefix, [r[kind] for r in scored])
    add_mean(metrics, "slot_f1_example_mean", [r["slot_f1"] for r in scored])
    metrics["unparseable"] = sum(1 for r in per_example if not r["parsed"])
    metrics["unknown_function"] = sum(1 for r in per_example if r["unknown_function"] is not None)
    metrics["unknown_attribute"] = sum(1 for r in per_example if r["unknown_attributes"])
    metrics["gold_invalid"] = len(per_example) - len(scored)
    metrics["error_counts"] = _error_counts(scored)
    metrics["per_attribute"] = _per_attribute(scored)
    metrics["per_function"], metrics["function_confusion"] = _per_function(scored)
    return metrics


def _add_micro_prf(metrics: dict[str, Any], prefix: str, counts: Sequence[dict[str, int]]) -> None:
    """Micro precision/recall/F1 (ratios of sums) with bootstrap intervals over examples."""
    correct = np.array([c["correct"] for c in counts], dtype=np.float64)
    predicted = np.array([c["predicted"] for c in counts], dtype=np.float64)
    gold = np.array([c["gold"] for c in counts], dtype=np.float64)
    # F1 = 2·correct / (predicted + gold): a ratio of sums like the other two.
    for name, num, den in (
        ("precision", correct, predicted),
        ("recall", correct, gold),
        ("f1", 2.0 * correct, predicted + gold),
    ):
        key = f"{prefix}_{name}"
        metrics[key] = round(float(num.sum() / den.sum()), 6) if den.sum() > 0 else None
        metrics[f"{key}_ci95"] = ratio_bootstrap_ci(num, den)


def ratio_bootstrap_ci(
    numerators: np.ndarray,
    denominators: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of ``sum(num)/sum(den)``, resampling examples.

    :func:`~tunebench.evaluation.common.bootstrap_ci` handles means; a micro-averaged score is a
    ratio of sums, so examples (not slots) must be resampled together with their denominators.
    Same seed and resample count as the shared helper, so intervals are reproducible.
    """
    if numerators.size == 0 or denominators.sum() <= 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, numerators.size, size=(resamples, numerators.size))
    num, den = numerators[idx].sum(axis=1), denominators[idx].sum(axis=1)
    ratios = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(ratios, [tail, 1.0 - tail])
    return [round(float(low), 6), round(float(high), 6)]


def _error_counts(scored: list[dict[str, Any]]) -> dict[str, int]:
    """Totals of each error kind (attribute kinds count attributes, the others examples)."""
    counts = {
        "wrong_function": sum(1 for r in scored if r["errors"]["wrong_function"]),
        "unparseable": sum(1 for r in scored if not r["parsed"]),
        "unknown_function": sum(1 for r in scored if r["unknown_function"] is not None),
        "unknown_attribute": sum(len(r["unknown_attributes"]) for r in scored),
    }
    for kind in ("missing", "extra", "wrong_value", "duplicated"):
        counts[kind] = sum(len(r["errors"][kind]) for r in scored)
    return counts


def _per_attribute(scored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per attribute: how often it was expected, predicted, right, missing, extra or wrong."""
    table: dict[str, Counter[str]] = {a: Counter() for a in ATTRIBUTES}
    for r in scored:
        for attr, status in r["attribute_status"].items():
            row = table.setdefault(attr, Counter())
            row[status] += 1
            row["support"] += status != "extra"
            row["predicted"] += status != "missing"
    out: dict[str, dict[str, Any]] = {}
    # Ontology order first (stable report tables), then any unknown names the model invented.
    for attr in [*ATTRIBUTES, *sorted(set(table) - _KNOWN_ATTRIBUTES)]:
        c = table[attr]
        row = {k: int(c[k]) for k in ("support", "predicted", "correct", "missing", "extra", "wrong_value")}
        row["precision"] = round(c["correct"] / c["predicted"], 6) if c["predicted"] else None
        row["recall"] = round(c["correct"] / c["support"], 6) if c["support"] else None
        row["f1"] = _f1(c["correct"], c["predicted"], c["support"]) if c["predicted"] + c["support"] else None
        out[attr] = row
    return out


def _per_function(
    scored: list[dict[str, Any]],
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Per gold function: support, correct function, full MR match; plus the confusion table."""
    per: dict[str, Counter[str]] = {f: Counter() for f in FUNCTIONS}
    confusion: dict[str, Counter[str]] = {}
    for r in scored:
        gold_fn = r["gold_function"]
        pred_fn = r["predicted_function"] if r["parsed"] else UNPARSEABLE
        counts = per.setdefault(gold_fn, Counter())
        counts["support"] += 1
        counts["function_match"] += bool(r["function_match"])
        counts["mr_match"] += bool(r["mr_match"])
        confusion.setdefault(gold_fn, Counter())[pred_fn] += 1
    per_out = {f: {k: int(c[k]) for k in ("support", "function_match", "mr_match")} for f, c in per.items()}
    # Gold functions in ontology order so the confusion table reads the same in every run.
    order = [*FUNCTIONS, *sorted(set(confusion) - _KNOWN_FUNCTIONS)]
    confusion_out = {g: dict(sorted(confusion[g].items())) for g in order if g in confusion}
    return per_out, confusion_out
