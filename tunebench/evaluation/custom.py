"""Scorer for user tasks: string metrics chosen by name, or the user's own functions.

``options["metrics"]`` lists the metrics to compute (default ``["exact_match",
"exact_match_normalized"]``). A name is either a built-in of :data:`METRICS` or a dotted path
to a function in the user's code, ``"mypkg.metrics:my_metric"`` or ``"mypkg.metrics.my_metric"``.
A metric takes ``(prediction: str, gold: str)`` and returns ``bool`` (a rate) or a ``float``
(averaged; keep it in [0, 1] so that it reads like the other metrics). A metric that raises on
one example makes that example's verdict None, with the reason in its ``error``; the others
are still scored. Each metric is stored under its name as written, with ``_ci95`` (and
``_n`` when some examples could not be scored).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.evaluation.common import add_mean, add_rate

REQUIRED_FIELDS = ("prediction", "gold")
DEFAULT_METRICS = ("exact_match", "exact_match_normalized")

Metric = Callable[[str, str], bool | float]


def exact_match(prediction: str, gold: str) -> bool:
    """Equal after stripping surrounding whitespace (a trailing newline is not an error)."""
    return prediction.strip() == gold.strip()


def exact_match_normalized(prediction: str, gold: str) -> bool:
    """Equal after folding case and collapsing every run of whitespace to one space."""
    return _fold(prediction) == _fold(gold)


def json_match(prediction: str, gold: str) -> bool:
    """Both parse as JSON to equal values; an unparseable prediction is wrong.

    Object key order is ignored, list order is not, and ``true`` differs from ``1`` (Python's
    ``True == 1`` would say otherwise). A gold that is not JSON raises: the example cannot be
    scored, which is the data's fault, not the model's.
    """
    try:
        gold_value = _strict_json(gold)
    except ValueError as exc:
        raise ValueError(f"gold is not valid JSON ({exc})") from None
    try:
        pred_value = _strict_json(prediction)
    except ValueError:
        return False
    return _json_equal(pred_value, gold_value)


METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "exact_match_normalized": exact_match_normalized,
    "json_match": json_match,
}


def register_metric(name: str, function: Metric) -> None:
    """Add a metric to :data:`METRICS` under ``name`` (for code that calls tunebench directly)."""
    if not callable(function):
        raise TunebenchError(f"metric '{name}': {function!r} is not callable")
    METRICS[name] = function


def resolve_metric(name: str) -> Metric:
    """The function behind a built-in name or a ``module:function`` / ``module.function`` path."""
    if not isinstance(name, str) or not name.strip():
        raise TunebenchError(f"metric {name!r}: expected a metric name or a dotted path")
    if name in METRICS:
        return METRICS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
    elif "." in name:
        module_name, _, attr = name.rpartition(".")
    else:
        known = ", ".join(sorted(METRICS))
        raise TunebenchError(
            f"metric '{name}': unknown (built-in: {known}; or a path like 'mypkg.metrics:my_metric')"
        )
    return _import_metric(name, module_name.strip(), attr.strip())


def _import_metric(name: str, module_name: str, attr: str) -> Metric:
    """Import ``module_name`` and fetch the callable ``attr``; every failure is one line."""
    if not module_name or not attr:
        raise TunebenchError(f"metric '{name}': expected 'module:function' or 'module.function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error in the user's module (syntax, import) is theirs to fix
        raise TunebenchError(
            f"metric '{name}': cannot import module '{module_name}' ({type(exc).__name__}: {_line(exc)})"
        ) from None
    function = getattr(module, attr, None)
    if function is None:
        raise TunebenchError(f"metric '{name}': module '{module_name}' has no attribute '{attr}'")
    if not callable(function):
        raise TunebenchError(f"metric '{name}': '{attr}' in '{module_name}' is not callable")
    return function


def selected_metrics(options: dict[str, Any]) -> dict[str, Metric]:
    """Resolve ``options["metrics"]`` (a list, or a comma-separated string) before scoring."""
    names = options.get("metrics", DEFAULT_METRICS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, list | tuple) or not names:
        raise TunebenchError(
            f"custom option 'metrics' must be a non-empty list of metric names, got {names!r}"
        )
    # dict.fromkeys drops repeats but keeps the user's order.
    return {name: resolve_metric(name) for name in dict.fromkeys(names)}


def score(rows: list[dict[str, Any]], options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply each selected metric to every row; return per-example rows and metrics."""
    metrics_fns = selected_metrics(options)
    per_example = [_score_row(row, metrics_fns) for row in rows]
    metrics: dict[str, Any] = {"n": len(rows), "metrics": list(metrics_fns)}
    for name in metrics_fns:
        values = [r[name] for r in per_example]
        known = [v for v in values if v is not None]
        subset = len(known) != len(values)
        if all(isinstance(v, bool) for v in known):
            add_rate(metrics, name, values, with_n=subset)
        else:
            add_mean(metrics, name, [float(v) for v in known])
            if subset:
                metrics[f"{name}_n"] = len(known)
    return per_example, metrics


def _score_row(row: dict[str, Any], metrics_fns: dict[str, Metric]) -> dict[str, Any]:
    """One per-example row: each metric's value (None where it failed) and the reasons."""
    out: dict[str, Any] = {"id": row["id"], **dict.fromkeys(metrics_fns)}
    prediction, gold = row["prediction"], row["gold"]
    bad = [f for f, v in (("prediction", prediction), ("gold", gold)) if not isinstance(v, str)]
    if bad:
        out["error"] = f"{' and '.join(bad)} not a string"
        return out
    reasons = []
    for name, function in metrics_fns.items():
        try:
            out[name] = _check_value(function(prediction, gold))
        except Exception as exc:  # a user's metric may fail on one example; keep scoring the rest
            reasons.append(f"{name}: {type(exc).__name__}: {_line(exc)}")
    out["error"] = "; ".join(reasons) or None
    return out


def _check_value(value: object) -> bool | float:
    """Accept a bool or a finite number (numpy scalars included) from a metric."""
    if isinstance(value, bool):
        return value
    if getattr(getattr(value, "dtype", None), "kind", None) == "b":  # numpy.bool_ is not a bool
        return bool(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"returned {type(value).__name__}, expected bool or float") from None
    if not math.isfinite(number):
        raise ValueError(f"returned {number}")
    return number


def _fold(text: str) -> str:
    """Case-folded text with whitespace runs collapsed (and ends stripped)."""
    return " ".join(text.casefold().split())


def _strict_json(text: str) -> Any:
    """Parse JSON, refusing the NaN/Infinity extensions Python's parser accepts."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _json_equal(a: Any, b: Any) -> bool:
    """Structural equality that keeps JSON's types apart (bool vs number, int 1 == float 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (errors stay one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
