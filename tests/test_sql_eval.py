"""SQL evaluator on the real Spider dev databases (no mocks)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tunebench.errors import TunebenchError
from tunebench.evaluation import evaluate
from tunebench.evaluation.sql import score
from tunebench.evaluation.sql.compare import prepare_pair, results_equal
from tunebench.evaluation.sql.sandbox import open_readonly, run_query
from tunebench.evaluation.sql.suite import build_suite

EVAL_FILE = "sql/intersect/spider_create_context_val_db_id.json"
SINGER_CTX = "CREATE TABLE singer (Name VARCHAR, Country VARCHAR, Age INTEGER)"


def _row(
    prediction: str, gold: str, db_id: str = "concert_singer", context: str = SINGER_CTX, id_: str = "x"
):
    return {"id": id_, "prediction": prediction, "gold": gold, "context": context, "db_id": db_id}


def _score_one(spider_db_dir: Path, prediction: str, gold: str, **options) -> dict:
    per_example, _ = score([_row(prediction, gold)], {"db_dir": str(spider_db_dir), "workers": 1, **options})
    return per_example[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def eval_rows(data_dir: Path) -> list[dict]:
    rows = json.loads((data_dir / EVAL_FILE).read_text())
    return [_row(r["answer"], r["answer"], r["db_id"], r["context"], f"sql-{i}") for i, r in enumerate(rows)]


def test_gold_as_prediction_is_fully_correct(eval_rows, spider_db_dir, tmp_path):
    per_example, metrics = score(eval_rows, {"db_dir": str(spider_db_dir), "workers": 2})
    assert metrics["n"] == 568
    assert metrics["execution_n"] == 536 and metrics["execution_accuracy"] == 1.0
    assert metrics["no_db"] == 32 and metrics["gold_execution_failures"] == 0
    assert metrics["suite_accuracy"] == 1.0 and metrics["suite_n"] == 568 - metrics["gold_suite_failures"]
    assert metrics["exact_match"] == metrics["exact_match_normalized"] == metrics["component_match"] == 1.0
    wta = [r for r in per_example if r["db_id"] == "wta_1"]
    assert len(wta) == 32 and all(r["execution_match"] is None and "wta_1" in r["error"] for r in wta)


def test_order_by_makes_order_matter(spider_db_dir):
    gold = "SELECT Name FROM singer ORDER BY Age"
    assert (
        _score_one(spider_db_dir, "SELECT Name FROM singer ORDER BY Age DESC", gold)["execution_match"]
        is False
    )
    # without ORDER BY in the gold, row order is ignored
    unordered = _score_one(
        spider_db_dir, "SELECT Name FROM singer ORDER BY Age DESC", "SELECT Name FROM singer"
    )
    assert unordered["execution_match"] is True


def test_column_permutation_and_multisets():
    assert results_equal([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], order_matters=False)
    assert not results_equal([(1, "a"), (2, "b")], [("a", 2), ("b", 1)], order_matters=False)
    assert not results_equal([(1,), (1,), (2,)], [(1,), (2,), (2,)], order_matters=False)  # bags differ
    assert not results_equal([(1,), (1,)], [(1,)], order_matters=False)
    assert results_equal([], [], order_matters=True)
    assert not results_equal([(1,)], [], order_matters=False)
    wide_gold = [(1, 2, 3, 4, 5), (6, 7, 8, 9, 10)]
    assert results_equal(wide_gold, [(5, 4, 3, 2, 1), (10, 9, 8, 7, 6)], order_matters=True)
    assert not results_equal(wide_gold, [(10, 9, 8, 7, 6), (5, 4, 3, 2, 1)], order_matters=True)


def test_column_permutation_on_real_db(spider_db_dir):
    row = _score_one(spider_db_dir, "SELECT Age, Name FROM singer", "SELECT Name, Age FROM singer")
    assert row["execution_match"] is True and row["suite_match"] is True


def test_distinct_removed_unless_kept(spider_db_dir):
    gold = "SELECT DISTINCT Country FROM singer"
    assert _score_one(spider_db_dir, "SELECT Country FROM singer", gold)["execution_match"] is True
    kept = _score_one(spider_db_dir, "SELECT Country FROM singer", gold, keep_distinct=True)
    assert kept["execution_match"] is False
    assert (
        prepare_pair("SELECT count(DISTINCT a) FROM t", "SELECT a FROM t", False)[0]
        == "SELECT count( a) FROM t"
    )


def test_empty_results_are_equal(spider_db_dir):
    row = _score_one(
        spider_db_dir, "SELECT Name FROM singer WHERE Age > 1000", "SELECT Name FROM singer WHERE 0"
    )
    assert row["execution_match"] is True


def test_runaway_query_stops_within_limit(spider_db_dir):
    conn = open_readonly(spider_db_dir / "concert_singer" / "concert_singer.sqlite")
    start = time.monotonic()
    result = run_query(
        conn, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT max(n) FROM r", 0.5, 10
    )
    assert result.kind == "timeout" and time.monotonic() - start < 2.0
    cross = "SELECT count(*) FROM singer a, singer b, singer c, singer d, singer e, singer f, singer g, "
    cross += "singer h, singer i, singer j, singer k, singer l WHERE a.Name || b.Name != ''"
    start = time.monotonic()
    row = _score_one(spider_db_dir, cross, "SELECT count(*) FROM singer", timeout_s=0.5, suite_size=0)
    assert row["execution_match"] is False and row["failure_kind"] == "timeout"
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize(
    ("prediction", "kind"),
    [
        ("ATTACH DATABASE '/tmp/tb_evil.db' AS evil", "denied"),
        ("DELETE FROM singer", "denied"),
        ("UPDATE singer SET Name = 'x'", "denied"),
        ("DROP TABLE singer", "denied"),
        ("PRAGMA journal_mode = WAL", "denied"),
        ("PRAGMA writable_schema = 1", "denied"),
        ("SELECT load_extension('/tmp/x.so')", "denied"),
        ("SELECT 1; DELETE FROM singer", "multiple_statements"),
        ("", "empty_prediction"),
        ("the answer is forty two", "syntax_error"),
    ],
)
def test_hostile_or_broken_predictions(prediction, kind, spider_db_dir, tmp_path):
    # work on a copy so that a sandbox failure could never damage the shared mirror
    db_dir = tmp_path / "db"
    shutil.copytree(spider_db_dir / "concert_singer", db_dir / "concert_singer")
    target = db_dir / "concert_singer" / "concert_singer.sqlite"
    before = _sha(target)
    row = _score_one(db_dir, prediction, "SELECT count(*) FROM singer")
    assert row["execution_match"] is False and row["failure_kind"] == kind
    assert _sha(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        p.name for p in (spider_db_dir / "concert_singer").iterdir()
    )
    assert not Path("/tmp/tb_evil.db").exists()


def test_source_databases_unchanged_after_scoring(spider_db_dir, eval_rows):
    files = sorted(spider_db_dir.glob("*/*.sqlite"))
    before = {p: _sha(p) for p in files}
    hostile = ["DELETE FROM singer", "ATTACH 'x.db' AS y", "PRAGMA user_version = 7", "VACUUM"]
    rows = [dict(r, prediction=hostile[i % 4]) for i, r in enumerate(eval_rows[:40])]
    score(rows, {"db_dir": str(spider_db_dir), "workers": 1, "suite_size": 0})
    assert {p: _sha(p) for p in files} == before


def test_unknown_db_and_missing_context_give_null_verdicts(spider_db_dir):
    rows = [
        _row("SELECT 1", "SELECT 1", db_id="no_such_db"),
        {"id": "c", "prediction": "x", "gold": "SELECT 1"},
    ]
    per_example, metrics = score(rows, {"db_dir": str(spider_db_dir), "workers": 1})
    assert per_example[0]["execution_match"] is None and "no_such_db" in per_example[0]["error"]
    assert per_example[0]["failure_kind"] == "no_db"
    assert per_example[1]["suite_match"] is None and "context" in per_example[1]["error"]
    assert metrics["no_db"] == 2 and metrics["execution_n"] == 0


def test_gold_failure_is_reported_not_dropped(spider_db_dir):
    per_example, metrics = score(
        [_row("SELECT 1", "SELECT nope FROM singer")], {"db_dir": str(spider_db_dir), "workers": 1}
    )
    assert per_example[0]["execution_match"] is None and per_example[0]["failure_kind"] == "gold_error"
    assert metrics["gold_execution_failures"] == 1


def test_suite_catches_what_the_real_db_misses(spider_db_dir):
    # on the real DB every singer is older than 20, so dropping the filter goes unnoticed there
    gold = "SELECT count(*) FROM singer WHERE Age > 20"
    row = _score_one(spider_db_dir, "SELECT count(*) FROM singer", gold)
    assert row["execution_match"] is True and row["suite_match"] is False
    assert (
        _score_one(spider_db_dir, "SELECT count(*) FROM singer WHERE 20 < Age", gold)["suite_match"] is True
    )


def test_suite_is_deterministic_and_exercises_literals():
    gold = "SELECT Name FROM singer WHERE Country = 'France' AND Age >= 30"
    first, results = build_suite(SINGER_CTX, gold, 8, 0, 2.0, 1000)
    second, _ = build_suite(SINGER_CTX, gold, 8, 0, 2.0, 1000)

    def contents(suite):
        return [db.execute("SELECT * FROM singer").fetchall() for db in suite.dbs]

    assert contents(first) == contents(second)
    assert sum(bool(r.rows) for r in results) >= 6  # the filter selects rows in most databases
    ages = {row[0] for db in first.dbs for row in db.execute("SELECT Age FROM singer")}
    assert {29, 30, 31} <= ages


def test_exact_and_normalized_match():
    per_example, _ = score(
        [
            _row(
                "select name from singer where country = 'France';",
                'SELECT Name FROM singer WHERE Country = "France"',
            )
        ],
        {"workers": 1, "suite_size": 0},
    )
    assert per_example[0]["exact_match"] is False and per_example[0]["exact_match_normalized"] is True


def test_malformed_jsonl_is_a_located_one_line_error(tmp_path):
    path = tmp_path / "preds.jsonl"
    good = json.dumps(_row("SELECT 1", "SELECT 1"))
    path.write_text(good + "\n{not json\n")
    with pytest.raises(TunebenchError) as info:
        evaluate("sql", path, tmp_path / "out", {"workers": 1})
    assert f"{path}:2:" in str(info.value) and "\n" not in str(info.value)


def test_evaluate_writes_outputs(tmp_path, spider_db_dir):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps(_row("SELECT count(*) FROM singer", "SELECT count(*) FROM singer")) + "\n")
    metrics = evaluate("sql", path, tmp_path / "out", {"db_dir": str(spider_db_dir), "workers": 1})
    assert metrics["execution_accuracy"] == 1.0 and metrics["execution_accuracy_ci95"] == [1.0, 1.0]
    lines = (tmp_path / "out" / "per_example.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["execution_match"] is True
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["execution_n"] == 1


def test_readonly_connection_cannot_write_even_without_authorizer(spider_db_dir):
    conn = open_readonly(spider_db_dir / "concert_singer" / "concert_singer.sqlite")
    conn.set_authorizer(None)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM singer")


def test_suite_cache_round_trip_gives_same_verdicts(eval_rows, spider_db_dir, tmp_path):
    rows = [dict(r, prediction=r["gold"].replace("count(*)", "count(*) + 1")) for r in eval_rows[:40]]
    rows += eval_rows[:40]
    options = {"db_dir": str(spider_db_dir), "workers": 1, "suite_cache_dir": str(tmp_path)}
    cold, _ = score(rows, options)
    assert len(list(tmp_path.glob("*/*.marshal"))) >= 30
    warm, _ = score(rows, options)
    uncached, _ = score(rows, {**options, "suite_cache_dir": None})
    assert cold == warm == uncached
    assert any(r["suite_match"] is False for r in warm) and any(r["suite_match"] for r in warm)


def test_plain_context_reader_matches_sqlglot(data_dir):
    from tunebench.evaluation.sql.schema import context_declarations

    rows = json.loads((data_dir / EVAL_FILE).read_text())
    contexts = {r["context"] for r in rows} | {"CREATE TABLE t (a INT PRIMARY KEY, b TEXT)"}
    for context in contexts:
        assert context_declarations(context) == context_declarations(context, fast=False), context


def test_table_star_with_string_arithmetic_does_not_crash_component_match() -> None:
    # A real SmolLM2 zero-shot prediction that once crashed the canonicaliser (`t.*` is a Star).
    from tunebench.evaluation.sql.components import component_match

    prediction = (
        "SELECT singer_in_concert.* FROM singer_in_concert WHERE singer_in_concert.concert_name = "
        "'Singer in the ' + singer_in_concert.concert_name + ' concert';"
    )
    verdict, mismatched, error = component_match(
        prediction,
        "SELECT count(*) FROM singer_in_concert",
        "CREATE TABLE singer_in_concert (concert_name VARCHAR)",
    )
    assert verdict is False and mismatched and error is None
