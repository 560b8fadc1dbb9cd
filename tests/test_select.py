"""Execution-guided selection (generation.selection: execution_vote) on real Spider-dev rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests import test_inference_support as support
from tunebench.config import ExperimentConfig, TaskConfig, parse_model
from tunebench.errors import TunebenchError
from tunebench.evaluation.sql.mutate import WRONG, mutations
from tunebench.inference.select import select_by_execution, select_row
from tunebench.io import read_jsonl
from tunebench.pipeline import predict_stage as predict
from tunebench.tasks import get_task

lively_model_dir = support.lively_model_dir  # the shared fixture
BROKEN = "SELECT FROM WHERE"


@pytest.fixture(scope="module")
def eval_rows() -> list[dict[str, Any]]:
    """The first 60 real eval rows with gold and context."""
    task = get_task(TaskConfig(name="sql", max_eval_examples=60))
    return [{"id": ex.id, "gold": ex.completion, **task.eval_fields(ex)} for ex in task.splits()["test"]]


def wrong_pair(row: dict[str, Any]) -> list[str]:
    """Two different wrong mutations of the gold (change_literal / drop_condition first)."""
    muts = mutations(row["gold"], row["context"])
    names = ["change_literal", "drop_condition", *WRONG]
    return list(dict.fromkeys(muts[n] for n in names if n in muts))[:2]


def test_majority_result_wins_over_greedy_and_broken_candidates_are_dropped(eval_rows) -> None:
    built = []
    for row in eval_rows:
        wrong = wrong_pair(row)
        if len(wrong) == 2:
            # the greedy slot holds a wrong query: only the vote, not the tie-break, can pick gold
            built.append({**row, "candidates": [wrong[0], row["gold"], BROKEN, wrong[1], row["gold"]]})
    assert len(built) >= 30
    out = select_by_execution(built, workers=1)
    chosen = [o["selection"]["chosen"] for o in out]
    assert all(o["prediction"] == o["candidates"][o["selection"]["chosen"]] for o in out)
    assert 2 not in chosen  # the broken candidate never executes
    assert all(o["selection"]["executable"] <= 4 for o in out)
    assert all(sum(o["selection"]["groups"]) == o["selection"]["executable"] for o in out)
    # gold (twice) beats two distinct wrong queries unless the databases cannot tell them apart
    assert sum(c == 1 for c in chosen) >= 0.85 * len(out)


def test_specific_row_groups_and_counts(eval_rows) -> None:
    row = next(r for r in eval_rows if r["id"] == "sql-eval-00026")  # count(*) of pets weight > 10
    cands = [
        "SELECT count(*) FROM pets WHERE weight > 11",
        "SELECT count(*) FROM pets WHERE weight  >  10",
        "SELECT count(*) FROM pets WHERE weight >= 10",
        "SELECT count(*) FROM pets WHERE 10 < weight",
        "SELECT count(*) FROM pets WHERE nonsense > 10",  # no such column in the context: dropped
        "SELECT count(*) FROM pets WHERE weight > 10",
    ]
    out = select_row({**row, "candidates": cands})
    assert out["selection"]["chosen"] == 1
    assert out["selection"]["executable"] == 5
    assert out["selection"]["groups"] == [1, 3, 1]
    assert out["prediction"] == cands[1]


def test_ties_go_to_greedy_and_nothing_executable_keeps_candidate_0(eval_rows) -> None:
    row = next(r for r in eval_rows if r["id"] == "sql-eval-00026")
    tie = select_row({**row, "candidates": ["SELECT count(*) FROM pets WHERE weight > 11", row["gold"]]})
    assert tie["selection"]["groups"] == [1, 1] and tie["selection"]["chosen"] == 0
    none = select_row({**row, "candidates": [BROKEN, "SELECT x FROM nowhere", ""]})
    assert none["selection"] == {"chosen": 0, "groups": [], "executable": 0}
    assert none["prediction"] == BROKEN


def runaway(start: int) -> str:
    return f"WITH RECURSIVE r(n) AS (SELECT {start} UNION ALL SELECT n + 1 FROM r) SELECT max(n) FROM r"


def test_runaway_candidates_cost_one_limit_each_and_the_budget_caps_an_example(eval_rows) -> None:
    row = next(r for r in eval_rows if r["id"] == "sql-eval-00026")
    cands = ["SELECT count(*) FROM pets WHERE weight > 11", row["gold"], row["gold"]]
    cands += [runaway(k) for k in range(4)]
    start = time.monotonic()
    free = select_row({**row, "candidates": cands}, timeout_s=0.3, budget_s=None)
    spent = time.monotonic() - start
    assert free["selection"]["chosen"] == 1 and free["selection"]["executable"] == 3
    assert 4 * 0.3 <= spent < 4 * 0.3 + 2.0  # each runaway ran once (not once per database)

    start = time.monotonic()
    capped = select_row({**row, "candidates": cands}, timeout_s=0.3, budget_s=0.5)
    assert time.monotonic() - start < 0.5 + 0.3 + 1.0
    assert capped["selection"]["chosen"] == 0 and capped["prediction"] == cands[0]
    assert capped["selection"]["error"] == "time budget of 0.5 s spent"


def test_deterministic_and_parallel_equals_inline(eval_rows) -> None:
    built = [{**row, "candidates": [*wrong_pair(row), row["gold"], row["gold"]]} for row in eval_rows[:40]]
    inline = select_by_execution(built, workers=1)
    assert inline == select_by_execution(built, workers=1)
    assert inline == select_by_execution(built, workers=2)


def test_execution_vote_config_is_checked() -> None:
    vote = {"num_candidates": 4, "selection": "execution_vote"}
    with pytest.raises(TunebenchError, match=r"c\.yaml: .*generation\.selection: .*task sql"):
        parse_model(ExperimentConfig, {"name": "x", "task": {"name": "viggo"}, "generation": vote}, "c.yaml")
    with pytest.raises(TunebenchError, match=r"generation\.selection: .*num_candidates"):
        parse_model(ExperimentConfig, {"name": "x", "generation": {**vote, "num_candidates": 1}}, "c.yaml")


def test_predict_with_execution_vote(tmp_path: Path, lively_model_dir: Path) -> None:
    vote_cfg, vote_run = support.make_run(
        tmp_path,
        lively_model_dir,
        name="vote",
        provider="base",
        n=6,
        num_candidates=3,
        selection="execution_vote",
        temperature=0.7,
    )
    greedy_cfg, greedy_run = support.make_run(tmp_path, lively_model_dir, name="greedy", provider="base", n=6)
    rows = read_jsonl(predict(vote_cfg, vote_run, "test"))
    greedy = read_jsonl(predict(greedy_cfg, greedy_run, "test"))
    assert len(rows) == 6
    for row, first in zip(rows, greedy, strict=True):
        assert len(row["candidates"]) == 3 and len(row["candidates_raw"]) == 3
        assert row["candidates"][0] == first["prediction"]  # candidate 0 is really greedy
        assert set(row["selection"]) >= {"chosen", "groups", "executable"}
        assert row["prediction"] == row["candidates"][row["selection"]["chosen"]]
    assert any(len(set(r["candidates"])) > 1 for r in rows)  # the others are sampled
    info = vote_run.manifest()["stages"]["predict:test"]
    assert info["selection"] == "execution_vote" and info["num_candidates"] == 3
    assert info["selection_changed"] == sum(r["selection"]["chosen"] != 0 for r in rows)


def test_a_key_column_with_a_narrow_literal_range_still_keys_every_row() -> None:
    """singer_id = 1 and = 2 give the key column values near 1..2 only, fewer than a table's rows:
    the key column came out shorter than the others and the whole vote failed (zip error), so the
    example kept its greedy candidate. Keys now extend past the literals' range."""
    row = {
        "id": "x",
        "context": "CREATE TABLE singer (singer_id INTEGER, name VARCHAR)",
        "candidates": [
            "SELECT name FROM singer WHERE singer_id = 2",
            "SELECT name FROM singer WHERE singer_id = 1",
            "SELECT name FROM singer WHERE singer_id = 1",
        ],
    }
    selection = select_row(row, suite_size=8, seed=42)["selection"]
    assert "error" not in selection
    assert selection["groups"] == [1, 2] and selection["chosen"] == 1
