"""Ensembles (provider: ensemble): pooled candidates of finished runs, voted, scored and priced.

The members here are real run directories of real Spider-dev examples whose outputs are given
(a member's predictions are its data; what is tested is the ensemble reading them): each member
is right on half the examples, and the pooled vote is right where either member's candidates
hold the majority.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunebench.config import ExperimentConfig, parse_model
from tunebench.data.prepare import load_prepared
from tunebench.errors import TunebenchError
from tunebench.evaluation.sql.mutate import WRONG, mutations
from tunebench.inference.ensemble import majority_row, pool_rows
from tunebench.io import read_json, read_jsonl, write_jsonl
from tunebench.pipeline import ensure_prepared, open_run, run_experiment
from tunebench.rundir import RunDir
from tunebench.study import expand, load_study, run_order, run_study
from tunebench.tasks import get_task

N = 24
STUDY = """
name: ens
runs_dir: {runs}
defaults:
  model: {{name: smollm2-135m}}
  task: {{max_train_examples: 16, max_eval_examples: {n}}}
  generation: {{vote_budget_s: 30}}
tasks: [sql]
systems:
  - name: both
    provider: ensemble
    ensemble: {{members: [a, b]}}
  - {{name: a, provider: base}}
  - {{name: b, provider: base}}
"""


def wrong_queries(gold: str, context: str) -> list[str]:
    """Two different wrong mutations of ``gold`` (as test_select does)."""
    muts = mutations(gold, context)
    names = ["change_literal", "drop_condition", *WRONG]
    return list(dict.fromkeys(muts[n] for n in names if n in muts))[:2]


def member_outputs(config: ExperimentConfig, run: RunDir) -> dict[str, list[dict[str, Any]]]:
    """Both members' test rows: on even examples A's candidates hold the gold twice and B's a
    wrong query twice (A right, B wrong), on odd ones the other way round."""
    task = get_task(config.task)
    out: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for k, ex in enumerate(load_prepared(run, "test")):
        fields = task.eval_fields(ex)
        wrong = wrong_queries(ex.completion, fields["context"])
        if len(wrong) < 2:
            wrong = [f"{ex.completion} LIMIT 0", f"{ex.completion} LIMIT 0 OFFSET 1"]
        gold, (w0, w1) = ex.completion, wrong
        right_side = [gold, gold, w0]  # votes gold
        wrong_side = [w1, w1, gold]  # votes w1
        a, b = (right_side, wrong_side) if k % 2 == 0 else ([w0, w0, gold], [gold, gold, w1])
        for name, cands in (("a", a), ("b", b)):
            majority = max(cands, key=cands.count)
            out[name].append(
                {"id": ex.id, "prediction": majority, "gold": gold, **fields, "candidates": cands,
                 "prompt_tokens": 10, "completion_tokens": 30}
            )  # fmt: skip
    return out


def finish_members(study_path: Path) -> None:
    """Give the member cells their predictions (and a recorded predict stage) before the study runs."""
    cells = {c.name: c for c in expand(load_study(study_path))}
    outputs: dict[str, list[dict[str, Any]]] = {}
    for name in ("a-sql", "b-sql"):
        run = open_run(cells[name].config)
        ensure_prepared(cells[name].config, run)
        outputs = outputs or member_outputs(cells[name].config, run)
        rows = outputs[name[0]]
        write_jsonl(run.predictions("test"), rows)
        run.record_stage("predict:test", provider="base", n=len(rows), wall_time_s=2.0, gpu_type="cpu")


def accuracy(run: Path) -> float:
    return read_json(run / "eval" / "test" / "metrics.json")["execution_accuracy"]


def test_a_study_ensemble_beats_both_members_and_costs_their_time(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(runs=tmp_path / "runs", n=N), encoding="utf-8")
    finish_members(path)
    report = run_study(path)
    runs = tmp_path / "runs"
    a, b, both = accuracy(runs / "a-sql"), accuracy(runs / "b-sql"), accuracy(runs / "both-sql")
    assert (
        a <= 0.7 and b <= 0.7
    )  # each right on about half (a mutation may still be right on the real database)
    assert both >= 0.85 and both > max(a, b) + 0.25

    rows = read_jsonl(runs / "both-sql" / "predictions" / "test.jsonl")
    members = {
        m: {r["id"]: r for r in read_jsonl(runs / f"{m}-sql" / "predictions" / "test.jsonl")} for m in "ab"
    }
    for row in rows:
        # A's candidates, then B's; the prediction is one of them
        assert (
            row["candidates"] == members["a"][row["id"]]["candidates"] + members["b"][row["id"]]["candidates"]
        )
        assert row["member_candidates"] == [3, 3]
        assert row["prediction"] == row["candidates"][row["selection"]["chosen"]]
        assert row["prompt_tokens"] == 20 and row["completion_tokens"] == 60
    # gold holds 3 of the 6 pooled candidates: the vote picks it unless the databases cannot
    # tell it from a wrong query
    assert sum(r["prediction"] == r["gold"] for r in rows) >= 0.85 * len(rows)
    stage = read_json(runs / "both-sql" / "manifest.json")["stages"]["predict:test"]
    assert stage["members"] == [str(runs / "a-sql"), str(runs / "b-sql")]
    assert stage["members_wall_time_s"] == 4.0  # the members' generation is the ensemble's
    assert stage["wall_time_s"] == pytest.approx(4.0 + stage["vote_s"], abs=2e-3)
    cost = read_json(runs / "both-sql" / "cost.json")
    assert cost["provider"] == "ensemble" and cost["training_cost_usd"] == 0  # base members trained nothing
    assert cost["inference"]["test"]["wall_time_s"] == stage["wall_time_s"]

    assert report is not None
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "| both | ensemble |" in md  # the cost table's row


def test_an_ensemble_of_runs_outside_the_study_reports_them_beside_it(tmp_path: Path) -> None:
    first = tmp_path / "study.yaml"
    first.write_text(STUDY.format(runs=tmp_path / "runs", n=8), encoding="utf-8")
    finish_members(first)
    run_study(first, cells=["a-sql", "b-sql"])
    second = tmp_path / "outside.yaml"
    members = f"[{tmp_path / 'runs' / 'a-sql'}, {tmp_path / 'runs' / 'b-sql'}]"
    second.write_text(
        f"name: outside\nruns_dir: {tmp_path / 'runs2'}\ndefaults:\n"
        "  model: {name: smollm2-135m}\n  task: {max_train_examples: 16, max_eval_examples: 8}\n"
        f"tasks: [sql]\nsystems:\n  - {{name: vote, provider: ensemble, ensemble: {{members: {members}}}}}\n",
        encoding="utf-8",
    )
    report = run_study(second)
    assert report is not None
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "systems a, b, vote; tasks sql" in md
    assert f"ensemble member, from {tmp_path / 'runs' / 'a-sql'}" in md


def test_members_must_be_finished_runs_of_the_same_examples(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(runs=tmp_path / "runs", n=4), encoding="utf-8")
    cells = {c.name: c for c in expand(load_study(path))}
    ensemble = cells["both-sql"].config
    # members not run yet
    with pytest.raises(TunebenchError, match=r"a-sql: not a run directory"):
        run_experiment(ensemble)
    finish_members(path)
    # a member that predicted fewer examples
    rows = read_jsonl(tmp_path / "runs" / "b-sql" / "predictions" / "test.jsonl")
    write_jsonl(tmp_path / "runs" / "b-sql" / "predictions" / "test.jsonl", rows[:-1])
    with pytest.raises(
        TunebenchError, match=r"b-sql: 1 of 4 test examples have no prediction \(first: sql-eval-00003\)"
    ):
        run_experiment(ensemble)
    # a member of other data
    rows[0]["gold"] = "SELECT 1"
    write_jsonl(tmp_path / "runs" / "b-sql" / "predictions" / "test.jsonl", rows)
    with pytest.raises(TunebenchError, match="example sql-eval-00000 of the test split has another gold"):
        run_experiment(ensemble)
    # a member of another task
    viggo = cells["a-sql"].config.model_copy(
        update={"name": "v", "task": cells["a-sql"].config.task.model_copy(update={"name": "viggo"})}
    )
    open_run(viggo)
    other = ensemble.model_copy(
        update={"name": "mixed", "ensemble": ensemble.ensemble.model_copy(update={"members": ["a-sql", "v"]})}
    )  # type: ignore[union-attr]
    with pytest.raises(TunebenchError, match="v: task 'viggo', the ensemble's is 'sql'"):
        run_experiment(other)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"provider": "ensemble"}, "an 'ensemble' section goes with provider 'ensemble'"),
        ({"provider": "base", "ensemble": {"members": ["a", "b"]}}, "goes with provider 'ensemble'"),
        (
            {"provider": "ensemble", "ensemble": {"members": ["a"]}},
            "ensemble.members: List should have at least 2",
        ),
    ],
)
def test_bad_ensemble_configs_are_one_line_errors(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(TunebenchError, match=message):
        parse_model(ExperimentConfig, {"name": "x", **patch}, "cfg.yaml")


def test_study_members_name_systems_and_ensembles_run_last(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(runs=tmp_path / "runs", n=4), encoding="utf-8")
    cells = expand(load_study(path))
    assert [c.name for c in cells] == ["both-sql", "a-sql", "b-sql"]
    assert cells[0].config.ensemble.members == ["a-sql", "b-sql"]  # type: ignore[union-attr]
    assert [c.name for c in run_order(cells)] == ["a-sql", "b-sql", "both-sql"]
    nested = (
        STUDY.format(runs=tmp_path / "runs", n=4)
        + "  - {name: c, provider: ensemble, ensemble: {members: [both, a]}}\n"
    )
    path.write_text(nested, encoding="utf-8")
    with pytest.raises(TunebenchError, match="ensemble member 'both' is an ensemble itself"):
        expand(load_study(path))


def test_pooling_keeps_member_order_and_majority_breaks_ties_to_the_earliest() -> None:
    a = [{"id": "x", "gold": "g", "prediction": "p", "prompt_tokens": 3}]
    b = [{"id": "x", "gold": "g", "prediction": "q", "candidates": ["q", "p", "r"], "prompt_tokens": 4}]
    (row,) = pool_rows([a, b])
    assert row["candidates"] == ["p", "q", "p", "r"] and row["member_candidates"] == [1, 3]
    assert row["prompt_tokens"] == 7 and row["prediction"] == "p"
    voted = majority_row(row)
    assert voted["prediction"] == "p" and voted["selection"]["groups"] == [2, 1, 1]
    tie = majority_row({**row, "candidates": ["r", "q", "q", "r"]})
    assert tie["prediction"] == "r" and tie["selection"]["chosen"] == 0
