"""The comparison report: sections present, numbers equal to the metrics files, bad inputs refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.test_report_fixtures import custom_prediction, make_custom_runs, make_run, make_study_runs
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl, write_jsonl
from tunebench.pipeline import evaluate_stage
from tunebench.report import write_report
from tunebench.report.build import fmt_metric, fmt_p, short
from tunebench.report.stats import holm, mcnemar_exact, paired_permutation_test
from tunebench.rundir import RunDir
from tunebench.tasks import TASKS, get_task

SECTIONS = [
    "## Results",
    "## Paired significance",
    "## Training cost and time",
    "## Deployment break-even",
    "## Loss curves",
    "## Error analysis",
    "## Wrong predictions",
    "## Per-example comparison",
    "## What produced this report",
]
IMAGES = ["accuracy.png", "training_cost.png", "break_even.png", "loss_sql.png", "loss_viggo.png"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study_runs(tmp_path_factory.mktemp("report") / "runs", n=12)


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Body rows of the first table after ``heading``."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines[start:end]]


def parse_metric(cell: str) -> tuple[float, list[float] | None]:
    match = re.fullmatch(r"([0-9.]+)(?: \[([0-9.]+), ([0-9.]+)\])?", cell)
    assert match, cell
    ci = [float(match.group(2)), float(match.group(3))] if match.group(2) else None
    return float(match.group(1)), ci


def test_report_sections_and_numbers_equal_metrics_files(runs: Path, tmp_path: Path) -> None:
    out = write_report(runs, tmp_path / "out")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith(f"# tunebench report: {runs.parent.name}\n")  # <study>/runs: the study's name
    for section in SECTIONS:
        assert section in md
    for image in IMAGES:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({image})" in md
    for task in ("sql", "viggo"):
        header, _, *rows = table_rows(md, f"### {task} (test)")
        names = header[2:]
        assert names == get_task(task).headline_metrics()
        assert {r[0] for r in rows} == {"oracle", "perturbed", "gpt"}
        for row in rows:
            metrics = read_json(runs / f"{row[0]}-{task}" / "eval" / "test" / "metrics.json")
            assert int(row[1]) == metrics["n"]
            for name, cell in zip(names, row[2:], strict=True):
                value, ci = parse_metric(cell)
                assert value == pytest.approx(metrics[name], abs=5e-5)
                assert ci == pytest.approx(metrics[f"{name}_ci95"], abs=5e-5)
    # the perturbed system is really worse than the oracle, and the report says so
    oracle = read_json(runs / "oracle-sql/eval/test/metrics.json")
    perturbed = read_json(runs / "perturbed-sql/eval/test/metrics.json")
    assert oracle["execution_accuracy"] == 1.0 and perturbed["execution_accuracy"] < 1.0
    assert "McNemar's exact test" in md
    # report.md points to the comparison in report.html; it holds no copy of the table
    outputs = {
        s: read_jsonl(runs / f"{s}-sql/predictions/test.jsonl") for s in ("gpt", "oracle", "perturbed")
    }
    differ = sum(len({outputs[s][i]["prediction"] for s in outputs}) > 1 for i in range(12))
    comparison = md.split("## Per-example comparison\n", 1)[1].split("\n## ", 1)[0]
    assert (
        f"*12 examples ({differ} where the systems' outputs differ, whitespace aside): each input"
        in comparison
    )
    assert "|" not in comparison and 0 < differ < 12
    sig = table_rows(md, "### sql (test): execution_accuracy")[2:]
    pair = next(r for r in sig if r[:2] == ["oracle", "perturbed"])
    verdicts = {
        s: {r["id"]: r["execution_match"] for r in read_jsonl(runs / f"{s}-sql/eval/test/per_example.jsonl")}
        for s in ("oracle", "perturbed")
    }
    ids = sorted(verdicts["oracle"])
    expected = mcnemar_exact([verdicts["oracle"][i] for i in ids], [verdicts["perturbed"][i] for i in ids])
    assert (int(pair[3]), int(pair[4])) == (expected["only_first"], expected["only_second"])
    assert pair[5] == fmt_p(expected["p_value"])


def test_report_cost_failures_and_wrong_predictions(runs: Path, tmp_path: Path) -> None:
    out = write_report(runs, tmp_path / "out")
    md = (out / "report.md").read_text(encoding="utf-8")
    cost = read_json(runs / "oracle-sql/cost.json")
    row = next(r for r in table_rows(md, "## Training cost and time") if r[0] == "oracle")
    assert row[2] == "1× NVIDIA A40"
    assert row[6] == f"${cost['training_cost_usd']:.4g}"
    assert "quoted, not measured" in md and "$3.32" in md and "$26.05" in md
    kinds = {r[0]: r for r in table_rows(md, "### sql (test): failures by kind")}
    per_example = read_jsonl(runs / "perturbed-sql/eval/test/per_example.jsonl")
    assert int(kinds["perturbed"][-1]) == sum(1 for r in per_example if r.get("failure_kind"))
    assert "syntax_error" in md
    assert "### viggo (test): errors by kind" in md and "| name |" in md
    wrong = table_rows(md, "### sql (test): perturbed, wrong by execution_match")[2:]
    assert wrong and all(r[2] != r[3] for r in wrong)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert html.count('src="data:image/png;base64,') == len(IMAGES)


def test_report_from_study_yaml_and_missing_cell(tmp_path: Path, runs: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: s\nruns_dir: {runs}\ntasks: [sql, viggo]\nsystems:\n"
        "  - {name: oracle, provider: local}\n  - {name: perturbed, provider: base}\n"
        "  - {name: gpt, provider: openai}\n",
        encoding="utf-8",
    )
    out = write_report(study, tmp_path / "from-study")
    assert "## Results" in (out / "report.md").read_text(encoding="utf-8")
    study.write_text(study.read_text() + "  - {name: missing, provider: base}\n", encoding="utf-8")
    with pytest.raises(TunebenchError, match=r"cell 'missing-sql' has no run directory"):
        write_report(study, tmp_path / "x")


def copy_runs(runs: Path, dest: Path, names: list[str]) -> Path:
    for name in names:
        shutil.copytree(runs / name, dest / name)
    return dest


def test_an_unfinished_run_is_skipped_in_a_folder_and_refused_in_a_study(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_runs(runs, tmp_path / "r", ["oracle-sql", "perturbed-sql"])
    (folder / "perturbed-sql/predictions/test.jsonl").unlink()
    # a loose folder of runs: the finished ones are reported, the unfinished one is named
    out = write_report(folder, tmp_path / "rep")
    assert "skipped" in capsys.readouterr().err
    systems = [
        row[0] for row in table_rows((out / "report.md").read_text(encoding="utf-8"), "### sql (test)")
    ]
    assert systems[2:] == ["oracle"]  # after the header and rule rows
    # a study names its cells: every one must have finished
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: s\nruns_dir: {folder}\ntasks: [sql]\nsystems:\n"
        "  - {name: oracle, provider: local}\n  - {name: perturbed, provider: base}\n",
        encoding="utf-8",
    )
    with pytest.raises(
        TunebenchError, match=r"system 'perturbed' has no predictions for task 'sql' split 'test'"
    ):
        write_report(study, tmp_path / "x")


def test_refuses_different_eval_sets(runs: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path / "r", ["oracle-sql"])
    make_run(folder, "perturbed", "sql", 12, skip_ids=1)  # same size, shifted by one example
    with pytest.raises(TunebenchError, match=r"evaluated on different examples"):
        write_report(folder)


def test_refuses_different_golds(runs: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path / "r", ["oracle-viggo", "perturbed-viggo"])
    path = folder / "perturbed-viggo/predictions/test.jsonl"
    rows = read_jsonl(path)
    rows[3]["gold"] = rows[3]["gold"].replace("]", "!]", 1)
    write_jsonl(path, rows)
    with pytest.raises(TunebenchError, match=rf"different golds for example '{rows[3]['id']}'"):
        write_report(folder)


def test_refuses_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TunebenchError, match="no run directories"):
        write_report(tmp_path)


def test_cli_report_one_line_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tunebench", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no such study file" in result.stderr and "Traceback" not in result.stderr


def test_mcnemar_exact_and_holm() -> None:
    # b=0, c=6: p = 2 * 0.5**6
    test = mcnemar_exact([True] * 6 + [True] * 4, [False] * 6 + [True] * 4)
    assert test == {
        "test": "mcnemar_exact",
        "n": 10,
        "only_first": 6,
        "only_second": 0,
        "p_value": pytest.approx(2 / 64),
    }
    # unknown verdicts are left out; no disagreement gives p = 1
    assert mcnemar_exact([True, None], [True, False])["p_value"] == 1.0
    assert mcnemar_exact([True, None], [True, False])["n"] == 1
    # b=1, c=9: p = 2 * (1 + 10) / 1024
    assert mcnemar_exact([True] + [False] * 9, [False] + [True] * 9)["p_value"] == pytest.approx(22 / 1024)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_fmt_metric_round_trips() -> None:
    assert fmt_metric(0.123456, [0.1, 0.2]) == "0.1235 [0.1000, 0.2000]"
    assert fmt_metric(None) == "–"


def test_steps_cell_says_which_checkpoint_the_run_kept() -> None:
    from tunebench.report.build import steps_cell

    assert steps_cell({"provider": "local", "steps": 240, "best_step": 240}) == "240"
    assert (
        steps_cell({"provider": "local", "steps": 240, "best_step": 200})
        == "240 (adapter: step 200, by validation loss)"
    )
    chosen = {
        "provider": "local",
        "steps": 240,
        "best_step": 200,
        "chosen_step": 180,
        "chosen_by": "validation suite_accuracy",
    }
    assert steps_cell(chosen) == "240 (adapter: step 180, by validation suite_accuracy)"
    assert steps_cell({"provider": "openai", "steps": 6, "best_step": 4}) == "6" and steps_cell({}) == "–"


def paired_rows(report_dir: Path) -> list[list[str]]:
    return table_rows((report_dir / "report.md").read_text(encoding="utf-8"), "## Paired significance")


def test_runs_without_per_example_verdicts_are_rescored(runs: Path, tmp_path: Path) -> None:
    """Committed studies keep no per_example.jsonl: the report re-scores the predictions, with
    the recorded scorer settings, and gets the same paired tests as from the scorer's own files."""
    names = ["oracle-sql", "perturbed-sql", "oracle-viggo", "perturbed-viggo"]
    folder = copy_runs(runs, tmp_path / "r", names)
    for name in ("oracle-sql", "perturbed-sql"):  # a setting that is not the scorer's default
        run = RunDir(folder / name)
        evaluate_stage(run.load_config(), run, "test", suite_size=0, workers=1)
    with_files = paired_rows(write_report(folder, tmp_path / "a"))
    removed = list(folder.glob("*/eval/*/per_example.jsonl"))
    assert len(removed) == 4
    for path in removed:
        path.unlink()
    # a re-score with the default 8-database suites would give suite verdicts and be refused
    assert paired_rows(write_report(folder, tmp_path / "b")) == with_files
    assert not any(folder.glob("*/eval/*/per_example.jsonl"))  # nothing written into the runs


def test_a_rescore_without_the_databases_says_so(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_runs(runs, tmp_path / "r", ["oracle-sql", "perturbed-sql"])
    (folder / "perturbed-sql/eval/test/per_example.jsonl").unlink()
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("TUNEBENCH_DATA_DIR", str(tmp_path / "no-data"))
    with pytest.raises(TunebenchError, match=r"needs the databases .*\(set TUNEBENCH_DATA_DIR"):
        write_report(folder, tmp_path / "out")


def test_a_rescore_that_disagrees_with_the_committed_metrics_is_refused(runs: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path / "r", ["oracle-viggo", "perturbed-viggo"])
    metrics_path = folder / "perturbed-viggo/eval/test/metrics.json"
    metrics = read_json(metrics_path)
    metrics["exact_match"] = round(metrics["exact_match"] + 0.25, 6)
    metrics_path.write_text(json.dumps(metrics), encoding="utf-8")
    (metrics_path.parent / "per_example.jsonl").unlink()
    with pytest.raises(TunebenchError, match=r"does not reproduce .*differs in exact_match"):
        write_report(folder, tmp_path / "out")


def empty_sections(markdown: str) -> list[str]:
    """``## `` headings followed directly by another heading or the end: sections with nothing."""
    lines = [ln for ln in markdown.splitlines() if ln.strip()]
    return [
        ln
        for i, ln in enumerate(lines)
        if ln.startswith("## ") and (i + 1 == len(lines) or lines[i + 1].startswith("## "))
    ]


def test_every_section_of_the_built_in_tasks_report_has_content(runs: Path, tmp_path: Path) -> None:
    assert (
        empty_sections((write_report(runs, tmp_path / "out") / "report.md").read_text(encoding="utf-8")) == []
    )


@pytest.fixture(scope="module")
def custom_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_custom_runs(tmp_path_factory.mktemp("custom") / "runs", n=20)


def test_custom_task_report_has_paired_tests_and_an_error_breakdown(
    custom_runs: Path, tmp_path: Path
) -> None:
    md = (write_report(custom_runs, tmp_path / "out") / "report.md").read_text(encoding="utf-8")
    assert empty_sections(md) == []
    header, _, *rows = table_rows(md, "### custom (test)")
    assert header[2:] == ["exact_match", "exact_match_normalized"]  # the configured metrics
    for row in rows:
        metrics = read_json(custom_runs / f"{row[0]}-custom/eval/test/metrics.json")
        assert [parse_metric(c)[0] for c in row[2:]] == [
            metrics["exact_match"],
            metrics["exact_match_normalized"],
        ]
    # McNemar on the per-example verdicts, for both binary metrics
    for key in ("exact_match", "exact_match_normalized"):
        sig = {tuple(r[:2]): r for r in table_rows(md, f"### custom (test): {key}\n")[2:]}
        assert set(sig) == {("halfway", "oracle"), ("halfway", "sloppy"), ("oracle", "sloppy")}
        verdicts = {
            s: {r["id"]: r[key] for r in read_jsonl(custom_runs / f"{s}-custom/eval/test/per_example.jsonl")}
            for s in ("oracle", "sloppy")
        }
        ids = sorted(verdicts["oracle"])
        expected = mcnemar_exact([verdicts["oracle"][i] for i in ids], [verdicts["sloppy"][i] for i in ids])
        row = sig[("oracle", "sloppy")]
        assert (int(row[3]), int(row[4]), row[5]) == (
            expected["only_first"],
            expected["only_second"],
            fmt_p(expected["p_value"]),
        )
    # upper-cased answers are wrong by exact_match but right once normalised
    assert table_rows(md, "### custom (test): exact_match\n")[-1][3] == "16"
    assert table_rows(md, "### custom (test): exact_match_normalized\n")[-1][3] == "12"
    # sloppy's 16 wrong answers: 4 each of empty, truncated, over-long and other (by construction)
    breakdown = {r[0]: r[1:] for r in table_rows(md, "### custom (test): wrong answers by kind")[2:]}
    assert breakdown == {
        "halfway": ["exact_match", "0", "10", "0", "0", "10"],
        "oracle": ["exact_match", "0", "0", "0", "0", "0"],
        "sloppy": ["exact_match", "4", "4", "4", "4", "16"],
    }
    header, _, *wrong = table_rows(md, "### custom (test): sloppy, wrong by exact_match")
    rows = {r["id"]: r for r in read_jsonl(custom_runs / "sloppy-custom/predictions/test.jsonl")}
    golds = {id_: r["gold"] for id_, r in rows.items()}
    # the task names no input field this file has: the prompt (here the sentence) is the input
    assert header[1] == "prompt"
    assert [r[1] for r in wrong] == [short(rows[r[0]]["prompt"].strip()) for r in wrong] and all(
        r[1] for r in wrong
    )
    assert [r[0] for r in wrong] == [f"custom-test-{i:05d}" for i in (1, 2, 3, 4, 6)]
    assert wrong[0][2] == "" and wrong[1][2] == custom_prediction("sloppy", golds[wrong[1][0]], 2)


def test_a_section_without_content_says_why_in_one_line(custom_runs: Path, tmp_path: Path) -> None:
    folder = copy_runs(custom_runs, tmp_path / "r", ["sloppy-custom"])
    md = (write_report(folder, tmp_path / "out") / "report.md").read_text(encoding="utf-8")
    assert md.split("## Paired significance\n", 1)[1].split("\n## ", 1)[0].strip() == (
        "*Nothing to pair: each task has one system.*"
    )
    assert empty_sections(md) == []
    # the one system is the best: its 16 wrong answers by kind, none put on the benchmark
    categories, blame, examples = tables_after(md, "### custom (test): remaining errors of sloppy")
    assert [(r[0], r[1], r[2]) for r in categories[1:]] == [
        (kind, "model", "4") for kind in ("empty", "truncated", "over-long", "other")
    ]
    assert dict((r[0], r[1]) for r in blame[1:]) == {"model": "16", "benchmark": "0", "all wrong": "16"}
    assert [r[1] for r in examples[1:4]] == [f"custom-test-{i:05d}" for i in (1, 6, 11)]  # the empty ones


def test_the_report_names_no_task() -> None:
    """The report reads what each task declares; a task's name in its code is a branch to remove."""
    names = "|".join(TASKS)
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted((Path(__file__).parents[1] / "tunebench" / "report").glob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(rf"\b({names})\b", line, re.IGNORECASE)
    ]
    assert found == []


def test_continuous_scores_get_a_paired_permutation_test_and_every_metric_a_ci(tmp_path: Path) -> None:
    folder = make_custom_runs(tmp_path / "runs", n=20, metrics=["exact_match", "token_f1"])
    md = (write_report(folder, tmp_path / "out") / "report.md").read_text(encoding="utf-8")
    for row in table_rows(md, "### custom (test)")[2:]:
        metrics = read_json(folder / f"{row[0]}-custom/eval/test/metrics.json")
        for cell, name in zip(row[2:], ("exact_match", "token_f1"), strict=True):
            value, ci = parse_metric(cell)
            assert ci is not None and ci[0] <= value <= ci[1]
            assert ci == pytest.approx(metrics[f"{name}_ci95"], abs=5e-5)
    assert "paired sign-flip permutation test" in md
    header, _, *rows = table_rows(md, "### custom (test): token_f1\n")
    assert header == [
        "system A",
        "system B",
        "n",
        "mean A",
        "mean B",
        "mean A − B",
        "p",
        "p (Holm)",
        "significant",
    ]
    scores = {
        s: {r["id"]: r["token_f1"] for r in read_jsonl(folder / f"{s}-custom/eval/test/per_example.jsonl")}
        for s in ("oracle", "sloppy")
    }
    assert not all(isinstance(v, bool) for v in scores["sloppy"].values())
    ids = sorted(scores["oracle"])
    expected = paired_permutation_test([scores["oracle"][i] for i in ids], [scores["sloppy"][i] for i in ids])
    row = next(r for r in rows if r[:2] == ["oracle", "sloppy"])
    assert row[2:7] == [
        "20",
        fmt_metric(expected["mean_first"]),
        fmt_metric(expected["mean_second"]),
        f"{expected['mean_difference']:+.4f}",
        fmt_p(expected["p_value"]),
    ]
    assert expected["mean_difference"] > 0.2 and expected["p_value"] < 0.05  # 16 of 20 answers are off
    # exact_match stays a McNemar table beside it
    assert table_rows(md, "### custom (test): exact_match\n")[0][3] == "b (only A right)"


def test_a_single_run_directory_is_a_report(runs: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = copy_runs(runs, tmp_path / "r", ["perturbed-viggo"]) / "perturbed-viggo"
    result = subprocess.run(
        [sys.executable, "-m", "tunebench", "report", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    md = (folder / "report" / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# tunebench report: perturbed-viggo\n")
    metrics = read_json(folder / "eval/test/metrics.json")
    row = table_rows(md, "### viggo (test)")[2]
    assert row[:2] == ["perturbed", str(metrics["n"])]
    assert parse_metric(row[2])[0] == pytest.approx(metrics["exact_match"], abs=5e-5)
    assert "*Nothing to pair: each task has one system.*" in md and empty_sections(md) == []


def test_no_training_cost_draws_no_cost_chart(custom_runs: Path, tmp_path: Path) -> None:
    out = write_report(custom_runs, tmp_path / "out")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert not (out / "training_cost.png").exists() and "training_cost.png" not in md
    section = md.split("## Training cost and time\n", 1)[1].split("\n## ", 1)[0]
    assert "No training-cost chart: no system of this report has a training cost above $0." in section


def tables_after(markdown: str, heading: str) -> list[list[list[str]]]:
    """Every table (header row first, rule row dropped) between ``heading`` and the next heading."""
    section = markdown.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    tables, current = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif current:
            tables.append([current[0], *current[2:]])
            current = []
    return tables


def test_error_analysis_classifies_the_best_systems_remaining_errors(runs: Path, tmp_path: Path) -> None:
    from tunebench.evaluation import viggo_errors
    from tunebench.evaluation.sql import errors as sql_errors
    from tunebench.tasks.sql import spider_databases

    folder = copy_runs(runs, tmp_path / "r", ["gpt-sql", "perturbed-sql", "perturbed-viggo"])
    md = (write_report(folder, tmp_path / "out") / "report.md").read_text(encoding="utf-8")
    # sql: gpt (wrong on every third example) beats perturbed (every other) by execution accuracy
    assert "### sql (test): remaining errors of perturbed" not in md
    heading = "### sql (test): remaining errors of gpt"
    categories, blame, examples = tables_after(md, heading)
    verdicts = {
        r["id"]: r["execution_match"] for r in read_jsonl(folder / "gpt-sql/eval/test/per_example.jsonl")
    }
    expected = sql_errors.analyze(
        read_jsonl(folder / "gpt-sql/predictions/test.jsonl"), spider_databases(), verdicts
    )
    assert [(r[0], int(r[2])) for r in categories[1:]] == [
        (name, entry["count"]) for name, entry in expected["categories"].items()
    ]
    assert {r[0]: r[1] for r in categories[1:]}["schema_differs"] == "benchmark"
    # its 4 wrong answers are the syntax errors (SELEC), which sqlglot cannot parse
    assert dict((r[0], r[1]) for r in blame[1:]) == {"model": "4", "benchmark": "0", "all wrong": "4"}
    assert {r[0] for r in examples[1:]} == {"unclassified"} and len(
        examples
    ) == 1 + 3  # three examples at most
    assert (
        md.split(heading, 1)[1]
        .split("\n\n", 2)[1]
        .startswith(
            "*gpt has the best execution_accuracy on test (0.6667). 4 of its 12 scored examples are wrong"
        )
    )
    # viggo: perturbed alone; its six wrong answers, by construction: a wrong dialogue act on rows
    # 3 and 9, a dropped last slot on 1 and 7, an altered name on 5 and 11
    heading = "### viggo (test): remaining errors of perturbed"
    categories, blame, examples = tables_after(md, heading)
    counts = {r[0]: int(r[2]) for r in categories[1:]}
    assert counts == {
        "gold_inconsistent": 0, "wrong_dialogue_act": 2, "missing_slot": 2, "extra_slot": 0,
        "wrong_slot_value": 2, "list_order": 0, "unclassified": 0,
    }  # fmt: skip
    expected = viggo_errors.analyze(read_jsonl(folder / "perturbed-viggo/predictions/test.jsonl"))
    assert counts == {name: entry["count"] for name, entry in expected["categories"].items()}
    assert dict((r[0], r[1]) for r in blame[1:]) == {"model": "6", "benchmark": "0", "all wrong": "6"}
    shown = {(r[0], r[1]) for r in examples[1:]}
    assert shown == {(c, e["id"]) for c, entry in expected["categories"].items() for e in entry["examples"]}
    sentences = {
        r["id"]: r["sentence"] for r in read_jsonl(folder / "perturbed-viggo/predictions/test.jsonl")
    }
    assert all(r[2] == short(sentences[r[1]]) for r in examples[1:])  # the input column is the sentence
