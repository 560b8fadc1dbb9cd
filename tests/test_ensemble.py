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

from tunebench.config import ExperimentConfig, TaskConfig, parse_model
from tunebench.config.study import expand, load_study
from tunebench.errors import TunebenchError
from tunebench.evaluation.sql.mutate import WRONG, mutations
from tunebench.io import read_json, read_jsonl, write_jsonl
from tunebench.pipeline import ensure_prepared, open_run, run_experiment
from tunebench.providers.ensemble import majority_row, pool_rows
from tunebench.rundir import RunDir
from tunebench.study import run_order, run_study
from tunebench.tasks import Example, get_task
from tunebench.tasks.base import load_prepared

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
    assert stage["wall_time_s"] == 4.0  # the members' generation is the ensemble's; the vote is apart
    assert stage["vote_s"] > 0
    cost = read_json(runs / "both-sql" / "cost.json")
    assert cost["provider"] == "ensemble" and cost["training_cost_usd"] == 0  # base members trained nothing
    members_cost = [read_json(runs / f"{m}-sql" / "cost.json")["inference"]["test"] for m in "ab"]
    for key in ("wall_time_s", "a40_conversion_usd"):  # the members' own records, added up
        assert cost["inference"]["test"][key] == pytest.approx(sum(c[key] for c in members_cost))
    assert cost["inference"]["test"]["vote_s"] == stage["vote_s"]  # recorded, not priced

    assert report is not None
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "| both | ensemble | cpu |" in md  # the cost table's row (provider, hardware)


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
        TunebenchError,
        match=r"b-sql: its test predictions are not the ensemble's 4 examples \(first missing: sql-eval-00003\)",
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
        ({"provider": "ensemble"}, "ensemble: required key is missing"),
        (
            {"provider": "base", "ensemble": {"members": ["a", "b"]}},
            r"ensemble: not a section of provider base \(only ensemble runs have it\)",
        ),
        (
            {"provider": "ensemble", "ensemble": {"members": ["a"]}},
            "ensemble.members: List should have at least 2",
        ),
        ({"provider": "ensemble", "ensemble": {"members": ["a", "b", "a"]}}, "members named twice: a"),
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


def test_pooling_keeps_member_order_and_majority_breaks_ties_to_the_earliest() -> None:
    task = get_task(
        TaskConfig(name="custom", train_file="unused.jsonl", test_file="unused.jsonl", prompt_template="{q}")
    )
    example = Example(id="x", prompt="q?", completion="g", fields={"q": "q?"})
    a = [{"id": "x", "gold": "g", "prediction": "p", "prompt_tokens": 3}]
    b = [{"id": "x", "gold": "g", "prediction": "q", "candidates": ["q", "p ", "r"], "prompt_tokens": 4}]
    (row,) = pool_rows([a, b], [example], task)
    assert row["candidates"] == ["p", "q", "p ", "r"] and row["member_candidates"] == [1, 3]
    assert row["prompt_tokens"] == 7 and row["prediction"] == "p" and row["q"] == "q?"
    voted = majority_row(row, task)
    assert voted["prediction"] == "p" and voted["selection"]["groups"] == [2, 1, 1]  # "p " is "p"
    tie = majority_row({**row, "candidates": ["r", "q", "q", "r"]}, task)
    assert tie["prediction"] == "r" and tie["selection"]["chosen"] == 0
    blank = majority_row({**row, "candidates": ["", " ", "s"]}, task)  # no answer, no vote
    assert blank["prediction"] == "s" and blank["selection"]["groups"] == [1]


def test_viggo_votes_compare_meaning_representations() -> None:
    task = get_task(TaskConfig(name="viggo"))
    row = {
        "candidates": [
            "inform(name[X], rating[good])",
            "inform(rating[good], name[X])",  # the same MR, attributes in another order
            "inform(name[X], rating[poor])",
            "inform(name[X",  # does not parse: no vote
        ]
    }
    voted = majority_row(row, task)
    assert voted["selection"] == {"chosen": 0, "groups": [2, 1], "executable": 3}


def test_a_member_predicting_again_makes_the_ensemble_vote_again(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(runs=tmp_path / "runs", n=6), encoding="utf-8")
    finish_members(path)
    run_study(path)
    runs = tmp_path / "runs"
    first = accuracy(runs / "both-sql")
    # member b predicts again and now agrees with a's wrong answers: the vote must follow
    a_rows = read_jsonl(runs / "a-sql" / "predictions" / "test.jsonl")
    write_jsonl(runs / "b-sql" / "predictions" / "test.jsonl", a_rows)
    RunDir(runs / "b-sql").forget_stages(["evaluate:test", "cost"])
    run_study(path)
    again = read_jsonl(runs / "both-sql" / "predictions" / "test.jsonl")
    assert [r["candidates"] for r in again] == [r["candidates"] * 2 for r in a_rows]
    assert accuracy(runs / "both-sql") == accuracy(runs / "a-sql") < first
    # nothing changed since: a rerun keeps every stage as it is
    stages = read_json(runs / "both-sql" / "manifest.json")["stages"]
    run_study(path)
    assert read_json(runs / "both-sql" / "manifest.json")["stages"] == stages


def test_study_members_are_checked_when_the_study_expands(tmp_path: Path) -> None:
    base = STUDY.format(runs=tmp_path / "runs", n=4)
    path = tmp_path / "study.yaml"
    cases = {
        "  - {name: c, provider: ensemble, ensemble: {members: [a, bb]}}\n": "ensemble member 'bb' is not a system of the study",
        "  - {name: o, provider: openai}\n  - {name: c, provider: ensemble, ensemble: {members: [a, o]}}\n": "member 'o' has provider 'openai'",
        "  - {name: c, provider: ensemble, ensemble: {members: [a, both]}}\n": "member 'both' has provider 'ensemble'",
    }
    for extra, message in cases.items():
        path.write_text(base + extra, encoding="utf-8")
        with pytest.raises(TunebenchError, match=f"system 'c', task 'sql': .*{message}"):
            expand(load_study(path))
    # a vote set for every cell in defaults, and an ensemble section there, break no cell
    shared = base.replace(
        "  generation: {vote_budget_s: 30}",
        "  generation: {vote_budget_s: 30, num_candidates: 4, selection: execution_vote}\n"
        "  ensemble: {members: [a, b]}",
    ).replace("{name: a, provider: base}", "{name: a, provider: base, tasks: [sql]}")
    path.write_text(shared, encoding="utf-8")
    cells = {c.name: c.config for c in expand(load_study(path))}
    assert not hasattr(cells["a-sql"], "ensemble") and cells["both-sql"].ensemble.members == [
        "a-sql",
        "b-sql",
    ]  # type: ignore[union-attr]


def test_trained_members_on_viggo_vote_by_majority_and_add_up_their_training(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    study = f"""
name: tiny-ens
runs_dir: {tmp_path / "runs"}
defaults:
  model: {{name: {tiny_model_dir}}}
  task: {{max_train_examples: 8, max_eval_examples: 4}}
  training: {{max_steps: 1, warmup_steps: 0, batch_size: 4, micro_batch_size: 4, eval_every: 1,
              max_length: 256, tokens_per_micro_batch: 1024}}
  generation: {{max_new_tokens: 8, batch_size: 8}}
tasks: [viggo]
systems:
  - {{name: l1, provider: local, training: {{seed: 1}}}}
  - {{name: l2, provider: local, training: {{seed: 2}}}}
  - {{name: l3, provider: local, training: {{seed: 3}}}}
  - {{name: two, provider: ensemble, ensemble: {{members: [l1, l2]}}}}
  - {{name: three, provider: ensemble, ensemble: {{members: [l1, l2, l3]}}}}
"""
    path = tmp_path / "study.yaml"
    path.write_text(study, encoding="utf-8")
    with pytest.raises(TunebenchError, match="two-viggo: a majority vote needs at least 3 candidates"):
        run_study(path)
    runs = tmp_path / "runs"
    task = get_task(TaskConfig(name="viggo"))
    for row in read_jsonl(runs / "three-viggo" / "predictions" / "test.jsonl"):
        keys = [task.vote_key(c) for c in row["candidates"]]
        counted = [k for k in keys if k is not None]
        if counted:
            assert counted.count(task.vote_key(row["prediction"])) == max(counted.count(k) for k in counted)
        assert "sentence" in row  # the example's own fields, for the report's wrong-predictions table
    cost = read_json(runs / "three-viggo" / "cost.json")
    members = [read_json(runs / f"l{k}-viggo" / "cost.json")["training"] for k in (1, 2, 3)]
    for key in ("wall_time_s", "a40_conversion_usd"):
        assert cost["training"][key] == pytest.approx(sum(m[key] for m in members), abs=1e-6)
    summary = read_json(runs / "three-viggo" / "train_summary.json")
    walls = [read_json(runs / f"l{k}-viggo" / "train_summary.json")["wall_time_s"] for k in (1, 2, 3)]
    assert summary["wall_time_s"] == pytest.approx(sum(walls), abs=1e-3)


def test_slimmed_or_moved_members_leave_a_finished_ensemble_as_it_is(tmp_path: Path) -> None:
    """What the vote does not read (prompts, raw text) may be dropped from the members' files,
    and the members may be gone: the ensemble's finished stages stand."""
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(runs=tmp_path / "runs", n=4), encoding="utf-8")
    finish_members(path)
    run_study(path)
    runs = tmp_path / "runs"
    stages = read_json(runs / "both-sql" / "manifest.json")["stages"]
    for member in ("a-sql", "b-sql"):
        file = runs / member / "predictions" / "test.jsonl"
        write_jsonl(
            file, [{k: v for k, v in r.items() if k not in ("question", "raw")} for r in read_jsonl(file)]
        )
    ensemble = next(c for c in expand(load_study(path)) if c.name == "both-sql").config
    run_experiment(ensemble)
    assert read_json(runs / "both-sql" / "manifest.json")["stages"] == stages
    for member in ("a-sql", "b-sql"):
        (runs / member).rename(tmp_path / member)
    run_experiment(ensemble)
    assert read_json(runs / "both-sql" / "manifest.json")["stages"] == stages
