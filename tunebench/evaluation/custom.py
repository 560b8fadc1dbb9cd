"""Scorer for user tasks: metrics chosen by name, or the user's own functions.

``options["metrics"]`` lists the metrics to compute (default ``["exact_match",
"exact_match_normalized"]``). A name is a built-in or a dotted path to a function in the user's
code, ``"mypkg.metrics:my_metric"``, ``"mypkg.metrics.my_metric"`` or a file's path,
``"/path/to/my_metrics.py:my_metric"``. The built-ins:

* per example, in :data:`METRICS`: ``exact_match``, ``exact_match_normalized``, ``json_valid``,
  ``json_match``, ``json_field_f1``, ``token_f1``, ``label_accuracy`` (definitions in their
  docstrings here and in :mod:`tunebench.evaluation.structured`);
* built from an option, in :data:`CONFIGURED_METRICS`: ``json_schema_valid`` (option
  ``json_schema``: the schema as a mapping, or the path of a JSON file holding it);
* over the whole set, in :data:`SET_METRICS`: ``macro_f1`` (each example's row holds whether its
  label is right, for paired tests; the aggregate is macro-F1 with a bootstrap interval).

A metric takes ``(prediction: str, gold: str)`` and returns ``bool`` (a rate) or a ``float``
(averaged; keep it in [0, 1] so that it reads like the other metrics). A metric that raises on
one example makes that example's verdict None, with the reason in its ``error``; the others
are still scored; one that fails on every example is an error. Each metric is stored under its
name as written, with ``_ci95`` (and ``_n`` when some examples could not be scored).

``options["unwrap_fence"]`` (default false): an answer (prediction or gold) that is exactly one
Markdown code fence is replaced by the fence's content before every metric
(:func:`tunebench.evaluation.structured.unwrap_fence`), as for chat models that fence answers.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.evaluation import structured
from tunebench.evaluation.common import add_mean, add_rate
from tunebench.io import read_json

REQUIRED_FIELDS = ("prediction", "gold")
DEFAULT_METRICS = ("exact_match", "exact_match_normalized")

Metric = Callable[[str, str], bool | float]


def exact_match(prediction: str, gold: str) -> bool:
    """Equal after stripping surrounding whitespace (a trailing newline is not an error)."""
    return prediction.strip() == gold.strip()


def exact_match_normalized(prediction: str, gold: str) -> bool:
    """Equal after folding case and collapsing every run of whitespace to one space."""
    return _fold(prediction) == _fold(gold)


METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "exact_match_normalized": exact_match_normalized,
    "json_valid": structured.json_valid,
    "json_match": structured.json_match,
    "json_field_f1": structured.json_field_f1,
    "token_f1": structured.token_f1,
    "label_accuracy": structured.label_accuracy,
}
# Metrics that need an option to be built: name -> (option key, factory of the metric).
CONFIGURED_METRICS: dict[str, tuple[str, Callable[[Any], Metric]]] = {
    "json_schema_valid": ("json_schema", structured.json_schema_metric),
}
# Set-level metrics (not a mean of per-example values): name -> (value, 95% interval), each a
# function of (predictions, golds). Each example's row records whether its label is right.
SetMetric = Callable[[list[str], list[str]], Any]
SET_METRICS: dict[str, tuple[SetMetric, SetMetric]] = {
    "macro_f1": (structured.macro_f1, structured.macro_f1_ci),
}


def register_metric(name: str, function: Metric) -> None:
    """Add a metric to :data:`METRICS` under ``name`` (for code that calls tunebench directly)."""
    if not callable(function):
        raise TunebenchError(f"metric '{name}': {function!r} is not callable")
    METRICS[name] = function


def known_metric_names() -> list[str]:
    """Every built-in metric name, sorted."""
    return sorted([*METRICS, *CONFIGURED_METRICS, *SET_METRICS])


def resolve_metric(name: str, options: dict[str, Any] | None = None) -> Metric:
    """The function behind a built-in name or a ``module:function`` / ``module.function`` path.

    A set-level metric resolves to its per-example part (the label is right)."""
    if not isinstance(name, str) or not name.strip():
        raise TunebenchError(f"metric {name!r}: expected a metric name or a dotted path")
    if name in METRICS:
        return METRICS[name]
    if name in SET_METRICS:
        return structured.label_accuracy
    if name in CONFIGURED_METRICS:
        return _configured_metric(name, options or {})
    if ":" in name:  # the last colon: a Windows file path's drive has one too (C:\m.py:fn)
        module_name, _, attr = name.rpartition(":")
    elif "." in name:
        module_name, _, attr = name.rpartition(".")
    else:
        known = ", ".join(known_metric_names())
        raise TunebenchError(
            f"metric '{name}': unknown (built-in: {known}; or a path like 'mypkg.metrics:my_metric')"
        )
    return _import_metric(name, module_name.strip(), attr.strip())


def _import_metric(name: str, module_name: str, attr: str) -> Metric:
    """Import ``module_name`` and fetch the callable ``attr``; every failure is one line."""
    if not module_name or not attr:
        raise TunebenchError(f"metric '{name}': expected 'module:function' or 'module.function'")
    try:
        module = _module_from_file(module_name) if module_name.endswith(".py") else None
        module = module or importlib.import_module(module_name)
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


def _module_from_file(path: str) -> Any:
    """The module of a ``.py`` file (a metric beside the config: ``/dir/my_metrics.py:fn``),
    loaded once per file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: file not found")
    key = f"tunebench_user_metric_{abs(hash(str(file.resolve())))}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{file}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


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
    return {name: resolve_metric(name, options) for name in dict.fromkeys(names)}


def _configured_metric(name: str, options: dict[str, Any]) -> Metric:
    """Build a metric that needs an option (``json_schema_valid`` needs ``json_schema``)."""
    key, factory = CONFIGURED_METRICS[name]
    value = options.get(key)
    if value is None:
        raise TunebenchError(f"metric '{name}' needs the option '{key}'")
    if isinstance(value, str | Path):
        value = read_json(value)
    return factory(value)


def score(rows: list[dict[str, Any]], options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply each selected metric to every row; return per-example rows and metrics."""
    metrics_fns = selected_metrics(options)
    unwrap = options.get("unwrap_fence", False)
    if not isinstance(unwrap, bool):
        raise TunebenchError(f"custom option 'unwrap_fence' must be true or false, got {unwrap!r}")
    if unwrap:
        rows = [_unwrapped(row) for row in rows]
    per_example = [_score_row(row, metrics_fns) for row in rows]
    for name in metrics_fns:
        _check_not_always_failing(name, per_example)
    metrics: dict[str, Any] = {"n": len(rows), "metrics": list(metrics_fns)}
    for name in metrics_fns:
        values = [r[name] for r in per_example]
        known = [v for v in values if v is not None]
        subset = len(known) != len(values)
        if name in SET_METRICS:
            _add_set_metric(metrics, name, rows, values)
        elif all(isinstance(v, bool) for v in known):
            add_rate(metrics, name, values, with_n=subset)
        else:
            add_mean(metrics, name, [float(v) for v in known])
            if subset:
                metrics[f"{name}_n"] = len(known)
    return per_example, metrics


def _unwrapped(row: dict[str, Any]) -> dict[str, Any]:
    """The row with a prediction or gold that is one Markdown code fence replaced by its content."""
    out = dict(row)
    for field in ("prediction", "gold"):
        if isinstance(out.get(field), str):
            out[field] = structured.unwrap_fence(out[field])
    return out


def _add_set_metric(
    metrics: dict[str, Any], name: str, rows: list[dict[str, Any]], values: list[Any]
) -> None:
    """A set-level metric over the scorable rows, with its bootstrap interval (and ``_n``)."""
    scored = [row for row, value in zip(rows, values, strict=True) if value is not None]
    predictions, golds = [r["prediction"] for r in scored], [r["gold"] for r in scored]
    value_of, interval_of = SET_METRICS[name]
    value = value_of(predictions, golds) if scored else None
    metrics[name] = round(value, 6) if value is not None else None
    metrics[f"{name}_ci95"] = interval_of(predictions, golds) if scored else None
    if len(scored) != len(rows):
        metrics[f"{name}_n"] = len(scored)


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


def _check_not_always_failing(name: str, per_example: list[dict[str, Any]]) -> None:
    """A metric that failed on every example is broken, not a score: say why, rather than
    report it as null (which drops it from the table and from ranking the systems)."""
    prefix = f"{name}: "
    reasons = [
        part.removeprefix(prefix)
        for row in per_example
        for part in (row.get("error") or "").split("; ")
        if part.startswith(prefix)
    ]
    if reasons and all(row[name] is None for row in per_example):
        raise TunebenchError(
            f"metric '{name}' failed on every example (first: {reasons[0]}); fix the function "
            "(it takes prediction and gold strings and returns a bool or a finite number)"
        )


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


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (errors stay one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
