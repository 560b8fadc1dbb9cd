"""Error analysis: hand-made wrong predictions per category (real Spider databases for SQL) and the
counts on a slice of a committed predictions file."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from tunebench.evaluation import sql as sql_scorer
from tunebench.evaluation import viggo, viggo_errors
from tunebench.evaluation.sql import errors as sql_errors
from tunebench.io import iter_jsonl

DB_DIR = Path("/work/shared/data/sql/spider/database")
REPO = Path(__file__).resolve().parent.parent
SQL_PREDICTIONS = REPO / "results/qwen15-ensemble/runs/ensemble-sql/predictions/test.jsonl"
VIGGO_PREDICTIONS = REPO / "results/qwen15-levers/runs/lora-all-linear-r16-viggo/predictions/test.jsonl"
needs_spider = pytest.mark.skipif(not DB_DIR.is_dir(), reason="Spider databases not in the data mirror")

SINGER = (
    "CREATE TABLE singer (name VARCHAR, country VARCHAR, age INTEGER, singer_id VARCHAR); "
    "CREATE TABLE singer_in_concert (singer_id VARCHAR)"
)
CONCERT_SINGER = DB_DIR / "concert_singer" / "concert_singer.sqlite"


@needs_spider
@pytest.mark.parametrize(
    ("gold", "prediction", "category"),
    [
        ("SELECT count(*) FROM singer", "SELECT count(*) FROM stadium", "wrong_table_or_join"),
        (
            "SELECT name FROM singer WHERE age > 30",
            "SELECT country FROM singer WHERE age > 30",
            "wrong_column",
        ),
        (
            "SELECT name FROM singer WHERE age > 30",
            "SELECT name FROM singer WHERE country > 30",
            "wrong_column",
        ),
        ("SELECT name FROM singer WHERE age > 30", "SELECT name FROM singer", "missing_or_extra_condition"),
        (
            "SELECT name FROM singer WHERE age > 30",
            "SELECT name FROM singer WHERE age < 30",
            "missing_or_extra_condition",
        ),
        (
            "SELECT name FROM singer WHERE country = 'France'",
            'SELECT name FROM singer WHERE country = "FRANCE"',
            "wrong_literal_or_casing",
        ),
        (
            "SELECT name FROM singer WHERE age > 30",
            "SELECT name FROM singer WHERE age > 40",
            "wrong_literal_or_casing",
        ),
        ("SELECT max(age) FROM singer", "SELECT avg(age) FROM singer", "aggregation_or_grouping"),
        (
            "SELECT country, count(*) FROM singer GROUP BY country",
            "SELECT country, count(*) FROM singer GROUP BY name",
            "aggregation_or_grouping",
        ),
        (
            "SELECT name FROM singer ORDER BY age DESC LIMIT 1",
            "SELECT name FROM singer ORDER BY age ASC LIMIT 1",
            "ordering_or_limit",
        ),
        (
            "SELECT name FROM singer ORDER BY age DESC LIMIT 1",
            "SELECT name FROM singer ORDER BY age DESC LIMIT 2",
            "ordering_or_limit",
        ),
        (
            "SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert)",
            "SELECT name FROM singer EXCEPT SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2"
            " ON T1.singer_id = T2.singer_id WHERE T1.age > 40",
            "set_operation_or_subquery",
        ),
        ("SELECT name FROM singer", "SELECT name FROM WHERE ((", "unclassified"),
        # the gold fails on the real database
        ("SELECT nickname FROM singer", "SELECT name FROM singer", "gold_questionable"),
        # the gold's literal matches nothing ('france'), the prediction's does
        (
            "SELECT name FROM singer WHERE country = 'france'",
            "SELECT name FROM singer WHERE country = 'France'",
            "gold_questionable",
        ),
    ],
)
def test_sql_categories(gold: str, prediction: str, category: str) -> None:
    result = sql_errors.classify(prediction, gold, SINGER, CONCERT_SINGER)
    assert result.category == category, result.differences


@needs_spider
def test_sql_gold_empty_with_a_structural_difference_is_the_models() -> None:
    # The gold is empty ('france') but the prediction also drops the filter: a model error.
    result = sql_errors.classify(
        "SELECT name FROM singer", "SELECT name FROM singer WHERE country = 'france'", SINGER, CONCERT_SINGER
    )
    assert result.category == "missing_or_extra_condition"
    assert "gold returns no rows, the prediction some" in result.differences


@needs_spider
def test_sql_schema_differs_for_a_table_only_the_context_has() -> None:
    # sql-eval-00108 of the Spider dev set: the context says Flight, the database has flights.
    database = sql_errors.database_of(DB_DIR, "flight_2")
    assert database is not None
    result = sql_errors.classify(
        "SELECT count(*) FROM Flight",
        "SELECT count(*) FROM FLIGHTS",
        "CREATE TABLE Flight (Id VARCHAR)",
        database,
    )
    assert result.category == "schema_differs"
    assert "context declares table flight, the database has none" in result.differences


@needs_spider
def test_sql_schema_differs_for_a_column_only_the_context_has() -> None:
    context = "CREATE TABLE singer (name VARCHAR, nationality VARCHAR)"
    result = sql_errors.classify(
        "SELECT name FROM singer WHERE nationality = 'France'",
        "SELECT name FROM singer WHERE country = 'France'",
        context,
        CONCERT_SINGER,
    )
    assert result.category == "schema_differs"
    assert result.differences == ["context declares column singer.nationality, the database has none"]
    # the same missing column, not declared in the context: the model invented it
    invented = sql_errors.classify(
        "SELECT name FROM singer WHERE nationality = 'France'",
        "SELECT name FROM singer WHERE country = 'France'",
        SINGER,
        CONCERT_SINGER,
    )
    assert invented.category == "wrong_column"


def test_sql_database_schema_reads_the_real_file() -> None:
    if not CONCERT_SINGER.is_file():
        pytest.skip("Spider databases not in the data mirror")
    schema = sql_errors.database_schema(CONCERT_SINGER)
    assert {"singer", "stadium", "concert", "singer_in_concert"} <= set(schema)
    assert {"name", "country", "age", "singer_id"} <= schema["singer"]


@pytest.mark.parametrize(
    ("gold", "prediction", "sentence", "category"),
    [
        ("inform(name[A], rating[good])", "request(name[A], rating[good])", None, "wrong_dialogue_act"),
        ("inform(name[A], rating[good])", "inform(name[A])", None, "missing_slot"),
        ("inform(name[A])", "inform(name[A], rating[good])", None, "extra_slot"),
        ("inform(name[A], rating[good])", "inform(name[A], rating[poor])", None, "wrong_slot_value"),
        (
            "inform(name[A], genres[puzzle, shooter])",
            "inform(name[A], genres[shooter, puzzle])",
            None,
            "list_order",
        ),
        ("inform(name[A], rating[good])", "inform(rating[good], name[A])", None, "list_order"),
        ("inform(name[A], rating[good])", "inform(name[A], rating[good]", None, "unclassified"),
        ("inform(name[A])", "inform(name[A], name[A])", None, "unclassified"),
        ("inform(name[A], rating[good])", "inform(name[A],  rating[good])", None, "unclassified"),
        # the gold names a game the sentence does not mention; the model copied the sentence
        (
            "inform(name[The Sims 3], rating[good])",
            "inform(name[The Sims], rating[good])",
            "The Sims is a good game.",
            "gold_inconsistent",
        ),
        # same error, but the sentence supports the gold: the model's
        (
            "inform(name[The Sims 3], rating[good])",
            "inform(name[The Sims], rating[good])",
            "The Sims 3 is a good game.",
            "wrong_slot_value",
        ),
    ],
)
def test_viggo_categories(gold: str, prediction: str, sentence: str | None, category: str) -> None:
    assert viggo_errors.classify(prediction, gold, sentence)["category"] == category


def _counts_add_up(result: dict) -> None:
    counts = {c: v["count"] for c, v in result["categories"].items()}
    assert sum(counts.values()) == result["wrong"]
    assert result["split"]["model"] + result["split"]["benchmark"] == result["wrong"]
    for entry in result["categories"].values():
        assert len(entry["examples"]) == min(3, entry["count"])


@needs_spider
def test_sql_analysis_of_a_committed_slice_counts_every_wrong_example() -> None:
    rows = list(islice(iter_jsonl(SQL_PREDICTIONS), 120))
    per_example, _ = sql_scorer.score(rows, {"db_dir": str(DB_DIR), "suite_size": 0, "workers": 1})
    wrong = sum(1 for r in per_example if r["execution_match"] is False)
    result = sql_errors.analyze(rows, DB_DIR)
    assert wrong > 0 and result["wrong"] == wrong
    assert result["scored"] == sum(1 for r in per_example if r["execution_match"] is not None)
    _counts_add_up(result)
    # sql-eval-00108 is in the slice: the context's Flight table the database does not have
    by_id = {r["id"]: r["category"] for r in result["per_example"]}
    assert by_id["sql-eval-00108"] == "schema_differs"
    assert result["split"]["benchmark"] >= 1


def test_viggo_analysis_of_a_committed_slice_counts_every_wrong_example() -> None:
    rows = list(islice(iter_jsonl(VIGGO_PREDICTIONS), 400))
    per_example, _ = viggo.score(rows, {})
    wrong = sum(1 for r in per_example if not r["exact_match"])
    result = viggo_errors.analyze(rows)
    assert wrong > 0 and result["wrong"] == wrong and result["scored"] == 400
    _counts_add_up(result)
