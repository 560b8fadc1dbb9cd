"""Custom-task metrics: the built-ins, user metrics by dotted path, and the one-line errors."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunebench.errors import TunebenchError
from tunebench.evaluation import custom, evaluate, structured


def rows_of(*pairs: tuple[Any, Any]) -> list[dict[str, Any]]:
    return [{"id": i, "prediction": p, "gold": g} for i, (p, g) in enumerate(pairs)]


def test_exact_match_strips_only_the_ends() -> None:
    assert custom.exact_match("SELECT 1\n", "  SELECT 1") is True
    assert custom.exact_match("SELECT  1", "SELECT 1") is False
    assert custom.exact_match("select 1", "SELECT 1") is False


def test_exact_match_normalized_folds_case_and_whitespace() -> None:
    assert custom.exact_match_normalized("Hello\t  WORLD\n", "hello world") is True
    assert custom.exact_match_normalized("Straße", "STRASSE") is True  # casefold, not lower
    assert custom.exact_match_normalized("helloworld", "hello world") is False


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ('{"b": 2, "a": [1, "x"]}', '{"a": [1, "x"], "b": 2}', True),  # key order ignored
        ("[1, 2]", "[2, 1]", False),  # list order matters
        ("1.0", "1", True),
        ("true", "1", False),  # JSON booleans are not numbers
        ('{"a": false}', '{"a": 0}', False),
        ('"1"', "1", False),
        ("null", "null", True),
        ("```json\n{}\n```", "{}", False),  # unparseable prediction = wrong
        ("NaN", "1", False),  # not JSON
        ("", "{}", False),
    ],
)
def test_json_match(prediction: str, gold: str, expected: bool) -> None:
    assert structured.json_match(prediction, gold) is expected


def test_json_match_with_invalid_gold_is_unscorable() -> None:
    per_example, metrics = custom.score(
        rows_of(("{}", "{}"), ("{}", "not json")), {"metrics": ["json_match"]}
    )
    assert per_example[0]["json_match"] is True
    assert per_example[1]["json_match"] is None and "gold is not valid JSON" in per_example[1]["error"]
    assert metrics["json_match"] == 1.0 and metrics["json_match_n"] == 1


def test_score_defaults_and_metric_shape() -> None:
    rows = rows_of(("Paris", "Paris"), ("paris ", "Paris"), ("Lyon", "Paris"), ("PARIS", "Paris"))
    per_example, metrics = custom.score(rows, {})
    assert metrics["metrics"] == ["exact_match", "exact_match_normalized"]
    assert metrics["exact_match"] == 0.25 and metrics["exact_match_normalized"] == 0.75
    low, high = metrics["exact_match_normalized_ci95"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    assert "exact_match_n" not in metrics
    assert [r["exact_match_normalized"] for r in per_example] == [True, True, False, True]
    assert all(r["error"] is None for r in per_example)


def test_non_string_fields_are_unscorable() -> None:
    per_example, metrics = custom.score(rows_of(("a", "a"), (None, "a")), {"metrics": ["exact_match"]})
    assert per_example[1]["exact_match"] is None and per_example[1]["error"] == "prediction not a string"
    assert metrics["exact_match"] == 1.0 and metrics["exact_match_n"] == 1


def test_metrics_option_accepts_a_comma_string_and_drops_repeats() -> None:
    _, metrics = custom.score(rows_of(("1", "1")), {"metrics": "json_match, exact_match,json_match"})
    assert metrics["metrics"] == ["json_match", "exact_match"]


@pytest.mark.parametrize("bad", [[], 3, {"exact_match": True}])
def test_metrics_option_must_be_a_list(bad: object) -> None:
    with pytest.raises(TunebenchError, match="option 'metrics'"):
        custom.score(rows_of(("a", "a")), {"metrics": bad})


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[str]:
    """A real module in tmp_path, importable for the test's duration."""
    name = f"user_metrics_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            def char_overlap(prediction, gold):
                a, b = set(prediction), set(gold)
                return len(a & b) / len(a | b) if a | b else 1.0

            def starts_same(prediction, gold):
                return prediction[:1] == gold[:1]

            def explodes(prediction, gold):
                if prediction == "boom":
                    raise RuntimeError("kaboom\\nsecond line")
                return True

            def returns_text(prediction, gold):
                return "yes"

            def returns_nan(prediction, gold):
                return float("nan")

            NOT_CALLABLE = 3
            """
        ),
        encoding="utf-8",
    )
    (tmp_path / f"{name}_broken.py").write_text("def oops(:\n", encoding="utf-8")
    # A package, so that "pkg.module.function" must split at the last dot.
    (tmp_path / f"{name}_pkg").mkdir()
    (tmp_path / f"{name}_pkg" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / f"{name}_pkg" / "scoring.py").write_text(
        "def same_length(prediction, gold):\n    return len(prediction) == len(gold)\n", encoding="utf-8"
    )
    sys.path.insert(0, str(tmp_path))
    yield name
    sys.path.remove(str(tmp_path))
    for module in (name, f"{name}_broken", f"{name}_pkg", f"{name}_pkg.scoring"):
        sys.modules.pop(module, None)


def test_user_metric_by_colon_and_dotted_path(user_module: str) -> None:
    colon, dotted = f"{user_module}:char_overlap", f"{user_module}.starts_same"
    per_example, metrics = custom.score(rows_of(("ab", "ab"), ("ab", "bc")), {"metrics": [colon, dotted]})
    assert [r[colon] for r in per_example] == [1.0, pytest.approx(1 / 3)]
    assert metrics[colon] == pytest.approx((1 + 1 / 3) / 2, abs=1e-6)
    assert [r[dotted] for r in per_example] == [True, False]
    assert metrics[dotted] == 0.5 and len(metrics[f"{dotted}_ci95"]) == 2


def test_user_metric_in_a_package_by_dotted_and_colon_path(user_module: str) -> None:
    for name in (f"{user_module}_pkg.scoring.same_length", f"{user_module}_pkg.scoring:same_length"):
        per_example, metrics = custom.score(rows_of(("ab", "cd"), ("a", "cd")), {"metrics": [name]})
        assert [r[name] for r in per_example] == [True, False]
        assert metrics[name] == 0.5


def test_user_metric_failing_on_one_row_keeps_the_others(user_module: str) -> None:
    name = f"{user_module}:explodes"
    per_example, metrics = custom.score(rows_of(("ok", "x"), ("boom", "x")), {"metrics": [name]})
    assert per_example[1][name] is None
    assert per_example[1]["error"] == f"{name}: RuntimeError: kaboom"
    assert metrics[name] == 1.0 and metrics[f"{name}_n"] == 1
    # A metric that fails on every example is an error that says why, not a null score.
    with pytest.raises(TunebenchError, match="expected bool or float"):
        custom.score(rows_of(("a", "a")), {"metrics": [f"{user_module}:returns_text"]})
    with pytest.raises(TunebenchError, match="returned nan"):
        custom.score(rows_of(("a", "a")), {"metrics": [f"{user_module}:returns_nan"]})


def test_resolve_metric_builtin_and_registry(user_module: str) -> None:
    assert custom.resolve_metric("json_match") is custom.METRICS["json_match"]
    function = custom.resolve_metric(f"{user_module}:starts_same")
    custom.register_metric("starts_same", function)
    try:
        assert custom.resolve_metric("starts_same") is function
    finally:
        del custom.METRICS["starts_same"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bleu", "metric 'bleu': unknown (built-in: exact_match, exact_match_normalized, json_field_f1"),
        ("no_such_pkg_xyz.metrics:f", "metric 'no_such_pkg_xyz.metrics:f': cannot import module"),
        ("{mod}:missing", "metric '{mod}:missing': module '{mod}' has no attribute 'missing'"),
        ("{mod}.NOT_CALLABLE", "is not callable"),
        ("{mod}_broken:oops", "metric '{mod}_broken:oops': cannot import module '{mod}_broken' (SyntaxError"),
        ("{mod}:", "expected 'module:function'"),
        ("", "expected a metric name"),
    ],
)
def test_bad_metric_names_are_one_line_errors(user_module: str, name: str, message: str) -> None:
    name, message = name.format(mod=user_module), message.format(mod=user_module)
    with pytest.raises(TunebenchError) as info:
        custom.score(rows_of(("a", "a")), {"metrics": ["exact_match", name]})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_evaluate_custom_end_to_end(tmp_path: Path, user_module: str) -> None:
    path = tmp_path / "pred.jsonl"
    rows = rows_of(('{"a": 1}', '{"a":1}'), ("B", "b"))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    options = {"metrics": ["exact_match_normalized", "json_match", f"{user_module}.starts_same"]}
    metrics = evaluate("custom", path, tmp_path / "out", options)
    assert metrics["task"] == "custom"
    assert metrics["exact_match_normalized"] == 0.5 and metrics["json_match"] == 1.0
    assert metrics["json_match_n"] == 1  # "b" is not JSON: unscorable, not wrong
    written = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert written == metrics
    lines = (tmp_path / "out" / "per_example.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1]
