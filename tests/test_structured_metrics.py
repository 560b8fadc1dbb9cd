"""Structured and free-text metrics against hand-computed values; error breakdowns; paired tests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tunebench.errors import TunebenchError
from tunebench.evaluation import custom, significance, structured

# --- fence -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ("  ```\nSELECT 1\n```\n", "SELECT 1"),
        ("```sql\nSELECT 1```", "SELECT 1"),
        ('Here you go:\n```json\n{"a": 1}\n```', 'Here you go:\n```json\n{"a": 1}\n```'),  # text before
        ("```\na\n```\n```\nb\n```", "```\na\n```\n```\nb\n```"),  # two fences
        ("```json\n{}", "```json\n{}"),  # unclosed
        ("plain", "plain"),
    ],
)
def test_unwrap_fence_only_unwraps_one_whole_fence(text: str, expected: str) -> None:
    assert structured.unwrap_fence(text) == expected


# --- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('  {"a": [1, 2.5, null, true]}\n', True),
        ('"text"', True),
        ("NaN", False),
        ('{"a": NaN}', False),
        ("[Infinity]", False),
        ("-Infinity", False),
        ('{"a": 1} {"b": 2}', False),  # two values
        ('{"a": 1} trailing', False),
        ("{'a': 1}", False),
        ("", False),
        ('```json\n{"a": 1}\n```', False),  # the metric does not unwrap; the scorer's option does
    ],
)
def test_json_valid(prediction: str, expected: bool) -> None:
    assert structured.json_valid(prediction, "ignored") is expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ('{"b": 2, "a": 1}', '{"a": 1, "b": 2}', True),  # key order ignored
        ('{"a": 1.0}', '{"a": 1}', True),  # 1 == 1.0
        ("1e2", "100", True),
        ("true", "1", False),  # true is not 1
        ("0", "false", False),
        ("[1, 2]", "[2, 1]", False),  # list order kept
        ('{"a": [{"x": 1}, {"y": 2}]}', '{"a": [{"x": 1}, {"y": 2}]}', True),
        ('{"a": 1, "b": null}', '{"a": 1}', False),  # an extra key, even null
        ("NaN", "1", False),
        ("{}", "[]", False),
    ],
)
def test_json_match(prediction: str, gold: str, expected: bool) -> None:
    assert structured.json_match(prediction, gold) is expected


def test_json_leaves_paths_and_empty_containers() -> None:
    leaves = structured.json_leaves(json.loads('{"a": [1, {"b": []}], "c": {}, "d": {"e": "x"}}'))
    assert leaves == Counter(
        {
            ("$.a[]", ("number", 1)): 1,
            ("$.a[].b", ("array",)): 1,
            ("$.c", ("object",)): 1,
            ("$.d.e", ("string", "x")): 1,
        }
    )
    assert structured.json_leaves([]) == Counter({("$", ("array",)): 1})
    assert structured.json_leaves(True) != structured.json_leaves(1)
    assert structured.json_leaves(1) == structured.json_leaves(1.0)


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        # gold leaves: name=x, tags[]=a, tags[]=b (3); prediction: name=x, tags[]=b, tags[]=a (3)
        ('{"name": "x", "tags": ["b", "a"]}', '{"name": "x", "tags": ["a", "b"]}', 1.0),
        # P = {name=x, n=1.0}, G = {name=x, n=1, k=true}: |P∩G| = 2 -> 4/5
        ('{"name": "x", "n": 1.0}', '{"name": "x", "n": 1, "k": true}', 0.8),
        # true vs 1 at the same path: no overlap -> 0
        ('{"k": 1}', '{"k": true}', 0.0),
        # duplicates as a multiset: P = {[]:a x3}, G = {[]:a x1, []:b x1}: |P∩G| = 1 -> 2/5
        ('["a", "a", "a"]', '["a", "b"]', 0.4),
        # G = {[]:a x2}, P = {[]:a x1}: |P∩G| = 1 -> 2/3
        ('["a"]', '["a", "a"]', 2 / 3),
        # empty containers are leaves: P = {e={} , f=1}, G = {e={}, f=[]}: 2/4
        ('{"e": {}, "f": 1}', '{"e": {}, "f": []}', 0.5),
        ("{}", "{}", 1.0),
        ("{}", "[]", 0.0),
        ("not json", '{"a": 1}', 0.0),  # invalid JSON -> 0.0
        ('{"a": NaN}', '{"a": 1}', 0.0),
    ],
)
def test_json_field_f1(prediction: str, gold: str, expected: float) -> None:
    assert structured.json_field_f1(prediction, gold) == pytest.approx(expected)


def test_json_field_f1_is_one_when_both_leaf_sets_are_empty() -> None:
    assert structured._f1_of_counts(0, 0, 0) == 1.0  # unreachable from JSON text, kept by definition


def test_list_order_matters_for_match_not_for_field_f1() -> None:
    assert structured.json_match("[1, 2, 3]", "[3, 2, 1]") is False
    assert structured.json_field_f1("[1, 2, 3]", "[3, 2, 1]") == 1.0


def test_a_gold_that_is_not_json_makes_the_example_unscorable() -> None:
    with pytest.raises(ValueError, match="gold is not valid JSON"):
        structured.json_field_f1("{}", "{oops")
    per_example, metrics = custom.score(
        [{"id": 0, "prediction": "{}", "gold": "{}"}, {"id": 1, "prediction": "{}", "gold": "NaN"}],
        {"metrics": ["json_field_f1"]},
    )
    assert per_example[1]["json_field_f1"] is None and "gold is not valid JSON" in per_example[1]["error"]
    assert metrics["json_field_f1"] == 1.0 and metrics["json_field_f1_n"] == 1


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["name"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('{"name": "x", "year": 1999}', True),
        ('{"name": "x"}', True),
        ('{"year": 1999}', False),  # required missing
        ('{"name": "x", "year": "1999"}', False),  # wrong type
        ('{"name": "x", "other": 1}', False),  # additionalProperties
        ("not json", False),
        ('{"name": "x", "year": NaN}', False),
    ],
)
def test_json_schema_valid(prediction: str, expected: bool) -> None:
    assert structured.json_schema_metric(SCHEMA)(prediction, "") is expected


def test_json_schema_valid_through_the_scorer_from_a_file(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    rows = [
        {"id": i, "prediction": p, "gold": "{}"} for i, p in enumerate(['{"name": "a"}', "{}", "[]", "x"])
    ]
    per_example, metrics = custom.score(
        rows, {"metrics": ["json_schema_valid"], "json_schema": str(schema_file)}
    )
    assert [r["json_schema_valid"] for r in per_example] == [True, False, False, False]
    assert metrics["json_schema_valid"] == 0.25


def test_json_schema_errors_are_one_line() -> None:
    with pytest.raises(TunebenchError, match="needs the option 'json_schema'"):
        custom.score([{"id": 0, "prediction": "{}", "gold": "{}"}], {"metrics": ["json_schema_valid"]})
    with pytest.raises(TunebenchError, match="not a valid JSON schema"):
        structured.json_schema_metric({"type": "no-such-type"})


# --- free text -------------------------------------------------------------------------------


def test_text_tokens_normalisation() -> None:
    assert structured.text_tokens("The cat's e-mail, A DOG; an apple!") == ["cats", "email", "dog", "apple"]
    assert structured.text_tokens("theater another") == ["theater", "another"]  # whole words only


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower", 1.0),
        # P = {paris, france}, G = {paris}: precision 1/2, recall 1 -> 2/3
        ("Paris, France", "Paris", 2 / 3),
        # P = {a? no: "the" removed} -> P = {big, big, dog}, G = {big, dog}: common 2 -> 2*2/(3+2)
        ("the big big dog", "big dog", 0.8),
        ("", "", 1.0),
        ("the", "a", 1.0),  # both have no tokens after normalisation
        ("", "something", 0.0),
        ("cat", "dog", 0.0),
    ],
)
def test_token_f1(prediction: str, gold: str, expected: float) -> None:
    assert structured.token_f1(prediction, gold) == pytest.approx(expected)


# --- classification --------------------------------------------------------------------------


def test_label_set_detection() -> None:
    assert structured.is_label_set(["pos", "neg", "pos", "neg "]) is True
    assert structured.is_label_set(["pos", "neg", "neutral"]) is False  # each label once on average
    assert structured.is_label_set(["a\nb", "a\nb", "c", "c"]) is False  # not one line
    assert structured.is_label_set(["", "", "x", "x"]) is False
    many = [f"label{i}" for i in range(21)] * 3
    assert structured.is_label_set(many) is False  # 21 distinct
    assert structured.is_label_set(many[: 20 * 3]) is False  # still 21 distinct in that slice
    assert structured.is_label_set([f"label{i}" for i in range(20)] * 2) is True


def test_classification_scores_by_hand() -> None:
    golds = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "x", "a"]
    scores = structured.classification_scores(preds, golds)
    # a: predicted 3, right 2, support 3 -> P 2/3, R 2/3, F1 2/3
    # b: predicted 2, right 1, support 2 -> P 1/2, R 1/2, F1 1/2
    # c: predicted 0, support 1 -> F1 0; "x" is no label of its own
    assert scores["labels"] == ["a", "b", "c"]
    assert scores["accuracy"] == pytest.approx(3 / 6)
    assert scores["per_label"]["a"]["f1"] == pytest.approx(2 / 3)
    assert scores["per_label"]["b"]["precision"] == pytest.approx(0.5)
    assert scores["per_label"]["c"] == {"support": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert scores["per_example"] == [True, True, False, True, False, False]


def test_macro_f1_through_the_scorer() -> None:
    golds = ["a", "a", "a", "b", "b", "c"]
    preds = [" a", "a", "b", "b", "x", "a\n"]
    rows = [{"id": i, "prediction": p, "gold": g} for i, (p, g) in enumerate(zip(preds, golds, strict=True))]
    per_example, metrics = custom.score(rows, {"metrics": ["macro_f1", "label_accuracy"]})
    assert metrics["macro_f1"] == pytest.approx(round(7 / 18, 6))
    low, high = metrics["macro_f1_ci95"]
    assert 0.0 <= low <= metrics["macro_f1"] <= high <= 1.0 and low < high
    assert metrics["label_accuracy"] == 0.5
    assert [r["macro_f1"] for r in per_example] == [True, True, False, True, False, False]


def test_macro_f1_ci_of_a_perfect_classifier_is_a_point() -> None:
    golds = ["a", "b"] * 10
    assert structured.macro_f1_ci(golds, golds) == [1.0, 1.0]


def test_unwrap_fence_option_of_the_scorer() -> None:
    rows = [{"id": 0, "prediction": '```json\n{"a": 1}\n```', "gold": '{"a": 1}'}]
    _, plain = custom.score(rows, {"metrics": ["json_match"]})
    _, unwrapped = custom.score(rows, {"metrics": ["json_match"], "unwrap_fence": True})
    assert plain["json_match"] == 0.0 and unwrapped["json_match"] == 1.0


# --- error breakdowns ------------------------------------------------------------------------


def test_json_error_categories() -> None:
    gold = '{"name": "x", "tags": ["a", "b"], "year": 1}'
    assert structured.json_error('{"tags": ["a", "b"], "year": 1}', gold) == {
        "category": "missing_field",
        "fields": [{"kind": "missing_field", "path": "$.name"}],
    }
    assert structured.json_error('{"name": "x", "tags": ["a", "b"], "year": 1, "z": 0}', gold)[
        "category"
    ] == ("extra_field")
    wrong = structured.json_error('{"name": "x", "tags": ["a", "c"], "year": 1.0}', gold)
    assert wrong == {"category": "wrong_value", "fields": [{"kind": "wrong_value", "path": "$.tags[]"}]}
    assert structured.json_error('{"name": "x", "tags": ["b", "a"], "year": 1}', gold)["category"] == (
        "list_order"
    )
    assert structured.json_error("{oops", gold)["category"] == "invalid_json"
    assert structured.json_error(gold, gold)["category"] == "correct"
    # missing wins over wrong, wrong over extra
    both = structured.json_error('{"tags": ["a"], "year": 2, "q": 1}', gold)
    assert both["category"] == "missing_field"
    assert {(f["kind"], f["path"]) for f in both["fields"]} == {
        ("missing_field", "$.name"),
        ("wrong_value", "$.tags[]"),
        ("wrong_value", "$.year"),
        ("extra_field", "$.q"),
    }


def test_json_error_breakdown_counts() -> None:
    gold = '{"a": 1, "b": 2}'
    preds = ['{"a": 1, "b": 2}', "nope", '{"a": 1}', '{"a": 1, "b": 3}', '{"b": 3}']
    breakdown = structured.error_breakdown(preds, [gold] * 5, "json", ids=list("vwxyz"))
    assert breakdown["categories"] == {
        "correct": 1,
        "invalid_json": 1,
        "missing_field": 2,
        "wrong_value": 1,
        "extra_field": 0,
        "list_order": 0,
    }
    assert breakdown["fields"] == {"missing_field $.b": 1, "wrong_value $.b": 2, "missing_field $.a": 1}
    assert [r["id"] for r in breakdown["per_example"]] == list("vwxyz")


@pytest.mark.parametrize(
    ("prediction", "gold", "category"),
    [
        ("same", " same\n", "correct"),
        ("  ", "gold", "empty"),
        ("The quick", "The quick brown fox", "truncated"),
        ("x" * 9, "abcd", "over_long"),
        ("x" * 8, "abcd", "other"),  # exactly twice is not over-long
        ("The quick brown fox!", "The quick brown fox", "other"),
    ],
)
def test_text_error(prediction: str, gold: str, category: str) -> None:
    assert structured.text_error(prediction, gold) == category


def test_text_error_breakdown_counts() -> None:
    breakdown = structured.error_breakdown(["", "ab", "abc", "zzzzzzz", "q"], ["abc"] * 5, "text")
    assert breakdown["categories"] == {"correct": 1, "empty": 1, "truncated": 1, "over_long": 1, "other": 1}


# --- paired significance ---------------------------------------------------------------------


def test_mcnemar_exact_by_hand() -> None:
    # b = 5 (only first right), c = 1: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64
    first = [True] * 5 + [False] + [True] * 4 + [None]
    second = [False] * 5 + [True] + [True] * 4 + [False]
    result = significance.mcnemar_exact(first, second)
    assert result["n"] == 10 and result["only_first"] == 5 and result["only_second"] == 1
    assert result["p_value"] == pytest.approx(14 / 64)
    assert significance.paired_test(first, second)["test"] == "mcnemar_exact"


def test_paired_permutation_test_matches_the_exact_sign_flip_distribution() -> None:
    # differences 0.5, 0.5, 0.5, -0.1 (observed sum 1.4): of the 16 sign patterns, |sum| >= 1.4
    # for (+,+,+,+), (+,+,+,-) and their negations only (the next is 0.5+0.5-0.5+0.1 = 0.6),
    # so the exact p = 4/16; the Monte Carlo estimate is close.
    first = [1.0, 0.9, 0.5, 0.4]
    second = [0.5, 0.4, 0.0, 0.5]
    result = significance.paired_permutation_test(first, second, resamples=20_000, seed=1)
    assert result["mean_difference"] == pytest.approx(0.35)
    assert result["p_value"] == pytest.approx(4 / 16, abs=0.01)
    again = significance.paired_permutation_test(first, second, resamples=20_000, seed=1)
    assert again["p_value"] == result["p_value"]  # seeded: reproducible
    assert significance.paired_test(first, second)["test"] == "paired_permutation"


def test_paired_permutation_test_identical_systems_and_unknowns() -> None:
    assert significance.paired_permutation_test([0.2, 0.7], [0.2, 0.7])["p_value"] == 1.0
    result = significance.paired_permutation_test([0.2, None, 1.0], [0.1, 0.5, None])
    assert result["n"] == 1
    with pytest.raises(ValueError, match="same length"):
        significance.paired_permutation_test([0.1], [0.1, 0.2])


def test_holm_by_hand() -> None:
    assert significance.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_a_json_tasks_report_breaks_wrong_answers_down_by_field() -> None:
    """The custom task's error breakdown for JSON answers: one count per kind, and the field
    differences each system makes most often (hand-counted)."""
    from dataclasses import dataclass, field

    from tunebench.tasks.custom import json_breakdown

    @dataclass
    class Scored:  # what the report hands a task: a system's rows of a split
        system: str
        predictions: dict[str, list[dict[str, str]]]
        metrics: dict[str, Any] = field(default_factory=dict)
        per_example: dict[str, Any] = field(default_factory=dict)

    gold = '{"a": 1, "b": [1, 2]}'
    answers = [
        "not json",
        '{"a": 1}',
        '{"a": 2, "b": [1, 2]}',
        '{"a": 1, "b": [2, 1]}',
        '{"a": 1.0, "b": [1, 2]}',
        '{"a": 1, "b": [1, 2], "c": 3}',
    ]
    run = Scored(
        "s", {"test": [{"id": str(i), "prediction": a, "gold": gold} for i, a in enumerate(answers)]}
    )
    (block,) = json_breakdown("test", [run])
    kinds, fields = block.tables
    assert kinds.header == [
        "system",
        "invalid_json",
        "missing_field",
        "wrong_value",
        "extra_field",
        "list_order",
        "correct",
    ]
    assert kinds.rows == [["s", "1", "1", "1", "1", "1", "1"]]
    assert sorted(tuple(r[1:]) for r in fields.rows) == [
        ("extra_field $.c", "1"),
        ("missing_field $.b[]", "1"),
        ("wrong_value $.a", "1"),
    ]
    text_gold = Scored("t", {"test": [{"id": "0", "prediction": "x", "gold": "plain text"}]})
    assert json_breakdown("test", [text_gold]) == []  # not a JSON task: no such block
