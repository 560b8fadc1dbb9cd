"""Metrics for structured and free-text answers: JSON, labels and token overlap.

Every per-example metric takes ``(prediction, gold)`` strings and returns a ``bool`` (a rate) or
a ``float`` in [0, 1] (averaged over examples); the custom scorer
(:mod:`tunebench.evaluation.custom`) registers them by name. Set-level scores (macro-F1) and the
error breakdowns take whole lists. Nothing here trims more than documented: a prediction wrapped
in a Markdown code fence is a parse failure for the JSON metrics unless the caller unwrapped it
first with :func:`unwrap_fence` (the custom scorer's ``unwrap_fence`` option).

JSON is read strictly (:func:`parse_json`): surrounding whitespace is allowed, anything else
around the one value is not, and the ``NaN`` / ``Infinity`` / ``-Infinity`` extensions that
Python's parser accepts are refused. Values compare with JSON's types kept apart: numbers by
value (``1`` equals ``1.0``), ``true`` never equals ``1``, ``null`` only equals ``null``.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunebench.errors import TunebenchError
from tunebench.evaluation.common import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

# A whole answer that is one fenced block: ```lang\n ... \n``` (language tag optional).
_ONE_FENCE = re.compile(r"\A```[^\n`]*\n(.*?)\n?```\Z", re.DOTALL)

ROOT = "$"
LIST_STEP = "[]"

# Classification: the targets form a label set when there are at most this many distinct labels.
MAX_LABELS = 20


# --- helpers ---------------------------------------------------------------------------------
def unwrap_fence(text: str) -> str:
    """The content of ``text`` when all of it (after stripping) is ONE Markdown code fence.

    ```` ```json\\n{"a": 1}\\n``` ```` and ```` ```\\nSELECT 1\\n``` ```` give their inner text,
    stripped. Text with anything before or after the fence, with two fences, or with an
    unclosed fence is returned unchanged (stripped): only an answer that is exactly one fenced
    block is unwrapped, so a fence quoted inside an answer is never cut out of it.
    """
    stripped = text.strip()
    match = _ONE_FENCE.match(stripped)
    if match is None or "```" in match.group(1):
        return stripped
    return match.group(1).strip()


def parse_json(text: str) -> Any:
    """The one JSON value in ``text`` (whitespace around it allowed); ValueError otherwise.

    ``NaN``, ``Infinity`` and ``-Infinity`` are refused (they are not JSON), as is trailing text.
    """

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _gold_json(gold: str) -> Any:
    """Parse the gold; a gold that is not JSON makes the example unscorable (the data's fault)."""
    try:
        return parse_json(gold)
    except ValueError as exc:
        raise ValueError(f"gold is not valid JSON ({exc})") from None


def _prediction_json(prediction: str) -> tuple[bool, Any]:
    """(parsed, value) of a prediction; an unparseable prediction is (False, None)."""
    try:
        return True, parse_json(prediction)
    except ValueError:
        return False, None


def json_equal(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values: key order ignored, list order kept, 1 == 1.0, true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _leaf_value(value: Any) -> tuple[Any, ...]:
    """A hashable key of a leaf that compares the way :func:`json_equal` does.

    Python's ``1 == 1.0`` with equal hashes gives numbers by value; booleans get their own tag
    because ``True == 1`` in Python.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if value is None:
        return ("null",)
    if isinstance(value, dict):
        return ("object",)  # only empty objects are leaves
    if isinstance(value, list):
        return ("array",)  # only empty lists are leaves
    return ("string", value)


Leaf = tuple[str, tuple[Any, ...]]


def json_leaves(value: Any, path: str = ROOT) -> Counter[Leaf]:
    """The multiset of (path, value) leaves of a parsed JSON value.

    An object key extends the path with ``.key`` and a list element with ``[]`` (so the leaves
    of a list do not depend on its order); a scalar, an empty object and an empty list are
    leaves. The root path is ``$``: ``{"a": [1, {"b": []}]}`` has the leaves
    ``($.a[], 1)`` and ``($.a[].b, [])``.
    """
    leaves: Counter[Leaf] = Counter()
    if isinstance(value, dict) and value:
        for key, item in value.items():
            leaves += json_leaves(item, f"{path}.{key}")
    elif isinstance(value, list) and value:
        for item in value:
            leaves += json_leaves(item, path + LIST_STEP)
    else:
        leaves[(path, _leaf_value(value))] += 1
    return leaves


def _f1_of_counts(common: int, predicted: int, gold: int) -> float:
    """2·common / (predicted + gold); 1.0 when both sides are empty."""
    total = predicted + gold
    return 1.0 if total == 0 else 2.0 * common / total


# --- JSON metrics ----------------------------------------------------------------------------
def json_valid(prediction: str, gold: str) -> bool:
    """The prediction parses as exactly one JSON value (whitespace around it allowed).

    ``NaN``, ``Infinity`` and trailing text after the value are refused. The gold is not read.
    """
    return _prediction_json(prediction)[0]


def json_match(prediction: str, gold: str) -> bool:
    """The parsed prediction equals the parsed gold; an unparseable prediction is wrong.

    Object key order is ignored, list order is kept, numbers compare by value (``1`` equals
    ``1.0``) and ``true`` differs from ``1`` (Python's ``True == 1`` would say otherwise). A gold
    that is not JSON raises: the example cannot be scored, which is the data's fault.
    """
    gold_value = _gold_json(gold)
    parsed, value = _prediction_json(prediction)
    return parsed and json_equal(value, gold_value)


def json_field_f1(prediction: str, gold: str) -> float:
    """F1 of the (path, value) leaves of the prediction (P) against those of the gold (G).

    Leaves as in :func:`json_leaves` (``.key`` per object key, ``[]`` per list element, so list
    order does not matter; empty objects and lists are leaves; numbers by value), counted as
    multisets: F1 = 2·|P∩G| / (|P|+|G|), where a leaf repeated k times in both counts
    min(k_P, k_G) times in P∩G. 1.0 when both are empty, 0.0 when the prediction is not valid
    JSON. A gold that is not JSON raises (unscorable example). The metric is the mean over
    examples.
    """
    gold_leaves = json_leaves(_gold_json(gold))
    parsed, value = _prediction_json(prediction)
    if not parsed:
        return 0.0
    pred_leaves = json_leaves(value)
    common = sum((pred_leaves & gold_leaves).values())
    return _f1_of_counts(common, sum(pred_leaves.values()), sum(gold_leaves.values()))


def json_schema_metric(schema: dict[str, Any]) -> Callable[[str, str], bool]:
    """The ``json_schema_valid`` metric for ``schema``: the prediction parses (as
    :func:`json_valid`) and validates against ``schema`` with the ``jsonschema`` library, using
    the draft named by the schema's ``$schema`` (the latest draft when absent). ``format``
    keywords are not asserted (jsonschema's default). The gold is not read. An invalid schema is
    a one-line error before any example is scored.
    """
    import jsonschema

    if not isinstance(schema, dict):
        raise TunebenchError(f"json_schema must be a JSON object, got {type(schema).__name__}")
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TunebenchError(f"json_schema is not a valid JSON schema: {exc.message}") from None
    validator = validator_class(schema)

    def json_schema_valid(prediction: str, gold: str) -> bool:
        parsed, value = _prediction_json(prediction)
        return parsed and validator.is_valid(value)

    json_schema_valid.__doc__ = json_schema_metric.__doc__
    return json_schema_valid


# --- free text -------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def text_tokens(text: str) -> list[str]:
    """Tokens for :func:`token_f1`, normalised as SQuAD's evaluation script does.

    In order: lower-case (``str.lower``); delete every ASCII punctuation character
    (``string.punctuation``: ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``, so ``don't`` becomes
    ``dont`` and ``e-mail`` ``email``); delete the English articles ``a``, ``an``, ``the`` as
    whole words; split on whitespace.
    """
    text = text.lower().translate(_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 of the normalised tokens (:func:`text_tokens`) as multisets.

    precision = common / |prediction tokens|, recall = common / |gold tokens|, F1 their harmonic
    mean, where common counts a token repeated k times in both min(k_pred, k_gold) times. 1.0
    when both have no tokens, 0.0 when only one has none.
    """
    pred, gold_tokens = Counter(text_tokens(prediction)), Counter(text_tokens(gold))
    common = sum((pred & gold_tokens).values())
    return _f1_of_counts(common, sum(pred.values()), sum(gold_tokens.values()))


# --- classification --------------------------------------------------------------------------
def label_of(text: str) -> str:
    """A prediction or gold as a label: the text with surrounding whitespace stripped (case kept)."""
    return text.strip()


def is_label_set(golds: Sequence[str], max_labels: int = MAX_LABELS) -> bool:
    """Whether the golds form a small label set (classification metrics apply).

    True when every gold is one non-empty line (after stripping), there are at most
    ``max_labels`` (20) distinct labels and on average each label occurs at least twice
    (``len(golds) >= 2 * distinct``), so that a handful of free-text answers is not read as labels.
    """
    labels = [label_of(g) for g in golds]
    if not labels or any(not label or "\n" in label for label in labels):
        return False
    distinct = len(set(labels))
    return distinct <= max_labels and len(labels) >= 2 * distinct


def label_accuracy(prediction: str, gold: str) -> bool:
    """The predicted label equals the gold label (both stripped, case kept)."""
    return label_of(prediction) == label_of(gold)


def classification_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label precision/recall/F1 over the gold label set.

    The labels are the distinct stripped golds. For each label L: precision = correct L / times
    L was predicted, recall = correct L / support of L, F1 = 2PR/(P+R) (0.0 when L was never
    predicted or never right). A prediction outside the label set is wrong for its gold's label
    (a false negative) and is no label of its own, so one odd output does not add a zero-F1
    class. Macro-F1 is the unweighted mean of the labels' F1. ``per_example`` holds the
    per-example correctness (for paired tests; macro-F1 does not decompose over examples).
    """
    if len(predictions) != len(golds):
        raise ValueError("predictions and golds must have the same length")
    preds = [label_of(p) for p in predictions]
    gold_labels = [label_of(g) for g in golds]
    labels = sorted(set(gold_labels))
    correct = [p == g for p, g in zip(preds, gold_labels, strict=True)]
    support, predicted, right = Counter(gold_labels), Counter(preds), Counter()
    for p, ok in zip(preds, correct, strict=True):
        right[p] += ok
    per_label = {}
    for label in labels:
        precision = right[label] / predicted[label] if predicted[label] else 0.0
        recall = right[label] / support[label]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"support": support[label], "precision": precision, "recall": recall, "f1": f1}
    return {
        "n": len(golds),
        "labels": labels,
        "accuracy": sum(correct) / len(correct) if correct else None,
        "macro_f1": sum(r["f1"] for r in per_label.values()) / len(labels) if labels else None,
        "per_label": per_label,
        "per_example": correct,
    }


def macro_f1(predictions: Sequence[str], golds: Sequence[str]) -> float | None:
    """Macro-F1 over the gold label set (see :func:`classification_scores`)."""
    return classification_scores(predictions, golds)["macro_f1"]


def macro_f1_ci(
    predictions: Sequence[str],
    golds: Sequence[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of :func:`macro_f1`, resampling examples (None when empty).

    Each resample's labels are the golds it contains; seed and resample count are those of
    :func:`tunebench.evaluation.common.bootstrap_ci`, so the interval reproduces.
    """
    if not golds:
        return None
    labels = sorted({label_of(g) for g in golds})
    code = {label: i for i, label in enumerate(labels)}
    gold_codes = np.array([code[label_of(g)] for g in golds])
    # A prediction outside the label set gets a code no gold has.
    pred_codes = np.array([code.get(label_of(p), -1) for p in predictions])
    idx = np.random.default_rng(seed).integers(0, gold_codes.size, size=(resamples, gold_codes.size))
    gold_s, pred_s = gold_codes[idx], pred_codes[idx]
    f1_sum = np.zeros(resamples)
    present = np.zeros(resamples)
    for label in range(len(labels)):
        support = (gold_s == label).sum(axis=1)
        predicted = (pred_s == label).sum(axis=1)
        hits = ((gold_s == label) & (pred_s == label)).sum(axis=1)
        # F1 = 2·hits / (predicted + support), equal to 2PR/(P+R); labels absent from a resample
        # are not averaged in it.
        f1_sum += np.where(support > 0, 2.0 * hits / np.maximum(predicted + support, 1), 0.0)
        present += support > 0
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(f1_sum / present, [tail, 1.0 - tail])
    return [round(float(low), 6), round(float(high), 6)]


# --- error breakdowns ------------------------------------------------------------------------
JSON_CATEGORIES = ("correct", "invalid_json", "missing_field", "wrong_value", "extra_field", "list_order")
TEXT_CATEGORIES = ("correct", "empty", "truncated", "over_long", "other")


def json_field_errors(prediction_value: Any, gold_value: Any) -> list[dict[str, str]]:
    """Per field path, what differs between two parsed values: ``missing_field`` (the gold has
    leaves at the path, the prediction none), ``extra_field`` (the reverse) or ``wrong_value``
    (both have leaves there but not the same multiset). Paths as in :func:`json_leaves`, sorted.
    """
    gold_by_path = _leaves_by_path(json_leaves(gold_value))
    pred_by_path = _leaves_by_path(json_leaves(prediction_value))
    errors = []
    for path in sorted(gold_by_path.keys() | pred_by_path.keys()):
        gold_here, pred_here = gold_by_path.get(path), pred_by_path.get(path)
        if pred_here is None:
            errors.append({"kind": "missing_field", "path": path})
        elif gold_here is None:
            errors.append({"kind": "extra_field", "path": path})
        elif gold_here != pred_here:
            errors.append({"kind": "wrong_value", "path": path})
    return errors


def _leaves_by_path(leaves: Counter[Leaf]) -> dict[str, Counter[tuple[Any, ...]]]:
    out: dict[str, Counter[tuple[Any, ...]]] = {}
    for (path, value), count in leaves.items():
        out.setdefault(path, Counter())[value] += count
    return out


def json_error(prediction: str, gold: str) -> dict[str, Any]:
    """One example's JSON error: ``category`` and the per-path ``fields`` differences.

    Categories: ``correct`` (:func:`json_match`), ``invalid_json``; otherwise the first of
    ``missing_field``, ``wrong_value``, ``extra_field`` found among the field differences (what
    the user loses first); ``list_order`` when the leaves are equal and only the order of some
    list differs. The gold must be JSON (ValueError otherwise).
    """
    gold_value = _gold_json(gold)
    parsed, value = _prediction_json(prediction)
    if not parsed:
        return {"category": "invalid_json", "fields": []}
    if json_equal(value, gold_value):
        return {"category": "correct", "fields": []}
    fields = json_field_errors(value, gold_value)
    kinds = {f["kind"] for f in fields}
    category = next((k for k in ("missing_field", "wrong_value", "extra_field") if k in kinds), "list_order")
    return {"category": category, "fields": fields}


def text_error(prediction: str, gold: str) -> str:
    """One example's text error category, on the stripped texts.

    ``correct`` (equal), ``empty`` (the prediction is empty), ``truncated`` (the prediction is a
    strict prefix of the gold), ``over_long`` (longer than twice the gold, in characters),
    ``other``; the first that applies, in that order.
    """
    pred, gold_text = prediction.strip(), gold.strip()
    if pred == gold_text:
        return "correct"
    if not pred:
        return "empty"
    if gold_text.startswith(pred):
        return "truncated"
    if len(pred) > 2 * len(gold_text):
        return "over_long"
    return "other"


def error_breakdown(
    predictions: Sequence[str], golds: Sequence[str], kind: str, ids: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Counts of the error categories over a set (``kind``: ``json`` or ``text``).

    Returns ``categories`` (category -> count, every category listed, ``correct`` included),
    ``per_example`` (id, category and, for JSON, the field differences) and, for JSON,
    ``fields`` ("kind path" -> count over all examples, most frequent first). An example whose
    gold is not JSON gets the category ``gold_invalid``.
    """
    if kind not in ("json", "text"):
        raise ValueError(f"error breakdown kind must be 'json' or 'text', got {kind!r}")
    ids = list(ids) if ids is not None else list(range(len(golds)))
    categories = Counter(dict.fromkeys(JSON_CATEGORIES if kind == "json" else TEXT_CATEGORIES, 0))
    fields: Counter[str] = Counter()
    per_example = []
    for example_id, prediction, gold in zip(ids, predictions, golds, strict=True):
        if kind == "text":
            row: dict[str, Any] = {"id": example_id, "category": text_error(prediction, gold)}
        else:
            try:
                row = {"id": example_id, **json_error(prediction, gold)}
            except ValueError:
                row = {"id": example_id, "category": "gold_invalid", "fields": []}
            fields.update(f"{f['kind']} {f['path']}" for f in row["fields"])
        categories[row["category"]] += 1
        per_example.append(row)
    out: dict[str, Any] = {"categories": dict(categories), "per_example": per_example}
    if kind == "json":
        out["fields"] = dict(fields.most_common())
    return out
