"""Why a ViGGO prediction is wrong: one primary category per example, with every difference.

A prediction is wrong when it is not the gold MR exactly (the study's metric). Both are parsed
with :mod:`tunebench.evaluation.mr` and compared slot by slot (:func:`viggo.compare`); the
primary category is the first that applies, in this order:

* ``gold_inconsistent`` (benchmark) - a slot the prediction gets wrong or misses has a gold value
  that does not occur in the reference sentence (case-insensitive, whitespace folded), for the
  attributes whose value is written out in the sentence (:data:`VERBATIM_ATTRIBUTES`: name,
  developer, release_year, exp_release_date); only when the row carries the ``sentence``;
* ``wrong_dialogue_act`` - the function (inform, request, ...) differs;
* ``missing_slot`` - a gold attribute is absent from the prediction;
* ``extra_slot`` - the prediction has an attribute the gold has not;
* ``wrong_slot_value`` - an attribute is present on both sides with another value;
* ``list_order`` - the same function, slots and values, in another order (the order of the slots,
  or of a list attribute's items such as ``genres[shooter, puzzle]``);
* ``unclassified`` - the rest (an unparseable prediction, a duplicated attribute, a difference in
  whitespace only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunebench.evaluation.common import summarize_errors
from tunebench.evaluation.mr import MR, parse_mr
from tunebench.evaluation.viggo import compare

BENCHMARK_CATEGORIES = ("gold_inconsistent",)
CATEGORIES = (
    "gold_inconsistent",
    "wrong_dialogue_act",
    "missing_slot",
    "extra_slot",
    "wrong_slot_value",
    "list_order",
    "unclassified",
)
VERBATIM_ATTRIBUTES = frozenset({"name", "developer", "release_year", "exp_release_date"})


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def classify(prediction: str, gold: str, sentence: str | None = None) -> dict[str, Any]:
    """``{"category", "differences"}`` of a prediction already known to differ from the gold."""
    row = compare(prediction, gold)
    if row["error"] is not None:
        return {"category": "unclassified", "differences": [row["error"]]}
    if not row["parsed"]:
        return {
            "category": "unclassified",
            "differences": [f"prediction does not parse: {row['parse_error']}"],
        }
    errors = row["errors"]
    differences = []
    if errors["wrong_function"]:
        differences.append(f"dialogue act {row['gold_function']} -> {row['predicted_function']}")
    differences += [f"missing {a}" for a in errors["missing"]]
    differences += [f"extra {a}" for a in errors["extra"]]
    differences += [f"wrong value {a}" for a in errors["wrong_value"]]
    differences += [f"duplicated {a}" for a in errors["duplicated"]]
    inconsistent = _inconsistent_gold(gold, sentence, [*errors["missing"], *errors["wrong_value"]])
    if inconsistent:
        category = "gold_inconsistent"
        differences = [*(f"gold {a}[{v}] is not in the sentence" for a, v in inconsistent), *differences]
    elif errors["wrong_function"]:
        category = "wrong_dialogue_act"
    elif errors["missing"]:
        category = "missing_slot"
    elif errors["extra"]:
        category = "extra_slot"
    elif errors["wrong_value"]:
        category = "wrong_slot_value"
    elif row["mr_match"] and _order_differs(prediction, gold):
        category = "list_order"
        differences.append("same slots and items in another order")
    else:
        category = "unclassified"
    return {"category": category, "differences": differences}


def _inconsistent_gold(gold: str, sentence: str | None, attributes: Sequence[str]) -> list[tuple[str, str]]:
    """(attribute, value) of the given gold slots whose verbatim value the sentence lacks."""
    gold_mr = parse_mr(gold)
    if not sentence or not isinstance(gold_mr, MR):
        return []
    text = _fold(sentence)
    wanted = set(attributes) & VERBATIM_ATTRIBUTES
    return [(a, v) for a, v in gold_mr.slots if a in wanted and _fold(v) not in text]


def _order_differs(prediction: str, gold: str) -> bool:
    """Same slots and items, written in another order (not only other whitespace)."""
    pred_mr, gold_mr = parse_mr(prediction), parse_mr(gold)
    if not isinstance(pred_mr, MR) or not isinstance(gold_mr, MR):
        return False
    return [(a, _fold(v)) for a, v in pred_mr.slots] != [(a, _fold(v)) for a, v in gold_mr.slots]


def analyze(rows: Sequence[dict[str, Any]], examples_per_category: int = 3) -> dict[str, Any]:
    """Error analysis of a run's ViGGO predictions (rows of ``predictions/<split>.jsonl``).

    Wrong = not an exact match (stripped texts differ). Returns
    :func:`~tunebench.evaluation.common.summarize_errors`'s result.
    """
    classified = []
    for row in rows:
        prediction, gold = row.get("prediction"), row["gold"]
        if isinstance(prediction, str) and prediction.strip() == gold.strip():
            continue
        result = classify(prediction if isinstance(prediction, str) else "", gold, row.get("sentence"))
        brief = {"id": row["id"], "prediction": prediction, "gold": gold, "sentence": row.get("sentence")}
        classified.append({**brief, **result})
    return summarize_errors(classified, len(rows), CATEGORIES, BENCHMARK_CATEGORIES, examples_per_category)
