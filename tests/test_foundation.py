"""Foundation: tasks render the study's prompts exactly, splits have the right sizes, and bad
input gives one-line errors through the real CLI (subprocess, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli import tunebench
from tunebench.config import LocalExperiment, TaskConfig, load_experiment
from tunebench.errors import TunebenchError
from tunebench.pipeline.prepare import prepare
from tunebench.rundir import RunDir
from tunebench.tasks import get_task
from tunebench.tasks.base import load_prepared

SQL_EXPECTED = (
    "You are a powerful text-to-SQL model. Your job is to answer questions about a database. "
    "You are given a question and context regarding one or more tables.\n"
    "\n"
    "You must output the SQL query that answers the question.\n"
    "\n"
    "### Input:\n"
    "How many singers do we have?\n"
    "\n"
    "### Context:\n"
    "CREATE TABLE singer (Id VARCHAR)\n"
    "\n"
    "### Response:\n"
)

VIGGO_EXPECTED = (
    "Given a target sentence construct the underlying meaning representation of the input sentence "
    "as a single function with attributes and attribute values.\n"
    "This function should describe the target string accurately and the function must be one of the "
    "following ['inform', 'request', 'give_opinion', 'confirm', 'verify_attribute', 'suggest', "
    "'request_explanation', 'recommend', 'request_attribute'].\n"
    "The attributes must be one of the following: ['name', 'exp_release_date', 'release_year', "
    "'developer', 'esrb', 'rating', 'genres', 'player_perspective', 'has_multiplayer', 'platforms', "
    "'available_on_steam', 'has_linux_release', 'has_mac_release', 'specifier']\n"
    "\n"
    "### Target sentence:\n"
    "I remember you saying you found Little Big Adventure to be average. Are you not usually that "
    "into single-player games on PlayStation?\n"
    "\n"
    "### Meaning representation:\n"
)


def test_sql_prompt_matches_study_character_for_character(data_dir: Path) -> None:
    test = get_task(TaskConfig(name="sql", data_dir=str(data_dir))).splits()["test"]
    assert test[0].prompt == SQL_EXPECTED
    assert test[0].completion == "SELECT count(*) FROM singer"
    assert test[0].fields["db_id"] == "concert_singer"


def test_viggo_prompt_matches_study_character_for_character(data_dir: Path) -> None:
    test = get_task(TaskConfig(name="viggo", data_dir=str(data_dir))).splits()["test"]
    assert test[0].prompt == VIGGO_EXPECTED
    assert test[0].completion == (
        "verify_attribute(name[Little Big Adventure], rating[average], has_multiplayer[no], "
        "platforms[PlayStation])"
    )


def test_study_split_sizes(data_dir: Path) -> None:
    sql = get_task(TaskConfig(name="sql", validation="study")).splits()
    assert [len(sql[s]) for s in ("train", "validation", "test")] == [3961, 568, 568]
    viggo = get_task(TaskConfig(name="viggo")).splits()
    assert [len(viggo[s]) for s in ("train", "validation", "test")] == [5103, 714, 1083]
    viggo_study = get_task(TaskConfig(name="viggo", validation="study")).splits()
    assert [ex.id for ex in viggo_study["validation"]] == [ex.id for ex in viggo_study["test"]]


def test_sql_held_out_validation_shares_no_database_with_train() -> None:
    splits = get_task(TaskConfig(name="sql")).splits()
    train_dbs = {ex.fields["db_id"] for ex in splits["train"]}
    val_dbs = {ex.fields["db_id"] for ex in splits["validation"]}
    assert not train_dbs & val_dbs
    assert len(splits["train"]) + len(splits["validation"]) == 3961
    assert 0.08 * 3961 <= len(splits["validation"]) <= 0.2 * 3961
    # a different seed holds out different databases
    other = get_task(TaskConfig(name="sql", split_seed=1)).splits()
    assert {ex.fields["db_id"] for ex in other["validation"]} != val_dbs


def test_caps_are_seeded_and_stable() -> None:
    cfg = TaskConfig(name="viggo", max_train_examples=50, max_eval_examples=7)
    a, b = get_task(cfg).splits(), get_task(cfg).splits()
    assert len(a["train"]) == 50 and len(a["test"]) == 7 and len(a["validation"]) == 7
    assert [e.id for e in a["train"]] == [e.id for e in b["train"]]


def test_prepare_writes_splits_and_stats(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    cfg = LocalExperiment(name="p", runs_dir=str(tmp_path), task=TaskConfig(name="sql"))
    run = RunDir(cfg.run_dir)
    stats = prepare(cfg, run, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert stats["splits"]["test"]["count"] == 568
    assert stats["splits"]["train"]["total_tokens"]["max"] >= stats["splits"]["train"]["total_tokens"]["p95"]
    examples = load_prepared(run, "test")
    assert examples[0].prompt == SQL_EXPECTED
    assert run.stage_done("prepare")


def test_custom_task_jsonl_and_csv(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = tmp_path / "test.csv"
    test.write_text("question,answer\nwhat?,yes\n")
    fmt = TaskConfig(
        name="custom",
        train_file=str(train),
        test_file=str(test),
        prompt_template="Q: {question}\nA:",
        target_field="answer",
    )
    splits = get_task(fmt.model_copy(update={"validation": "study"})).splits()
    assert splits["train"][1].prompt == "Q: q1\nA:" and splits["train"][1].completion == "a1"
    assert splits["test"][0].prompt == "Q: what?\nA:"
    assert [ex.id for ex in splits["validation"]] == [ex.id for ex in splits["test"]]
    # held_out (the default) without a validation file: a seeded share of train, never the test
    held = get_task(fmt).splits()
    assert len(held["validation"]) == 1 and len(held["train"]) == 2
    kept = [ex.prompt for ex in held["train"] + held["validation"]]
    assert sorted(kept) == ["Q: q0\nA:", "Q: q1\nA:", "Q: q2\nA:"]
    assert held["validation"][0].id.startswith("custom-train-")
    jinja = fmt.model_copy(update={"prompt_template": "Q: {{ question | upper }}\nA:"})
    assert get_task(jinja).splits()["train"][0].prompt == "Q: Q0\nA:"


def test_custom_task_missing_template_field_names_row(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "a", "answer": "b"}\n{"answer": "c"}\n')
    cfg = TaskConfig(
        name="custom",
        train_file=str(train),
        test_file=str(train),
        prompt_template="{question}",
        target_field="answer",
    )
    with pytest.raises(TunebenchError, match=r"train.jsonl: row 2: prompt_template needs field 'question'"):
        get_task(cfg).splits()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\ntraining:\n  learning_rate: fast\n")
    with pytest.raises(TunebenchError, match=r"c.yaml: training.learning_rate: "):
        load_experiment(bad)
    bad.write_text("name: x\nlora:\n  rank: 8\n")
    with pytest.raises(TunebenchError, match=r"lora.rank: unknown key"):
        load_experiment(bad)
    bad.write_text("task:\n  name: sql\n")
    with pytest.raises(TunebenchError, match=r"name: required key is missing"):
        load_experiment(bad)
    bad.write_text("name: x\ntask:\n  name: poetry\n")
    with pytest.raises(TunebenchError, match=r"task.name: "):
        load_experiment(bad)
    bad.write_text("name: x\ntraining:\n  cuda_graphs: true\n")  # removed from the product
    with pytest.raises(TunebenchError, match=r"training.cuda_graphs: unknown key"):
        load_experiment(bad)


def test_epochs_alone_make_the_run_epoch_based(tmp_path: Path) -> None:
    """`epochs: 3` without max_steps must not be overridden by the 400-step default."""
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntraining:\n  epochs: 3\n")
    assert load_experiment(path).training.max_steps is None
    assert load_experiment(path, {"training.max_steps": 7}).training.max_steps == 7  # both: steps win
    path.write_text("name: x\n")
    assert load_experiment(path).training.max_steps == 400
    path.write_text("name: x\ntraining:\n  max_steps: null\n")
    with pytest.raises(TunebenchError, match=r"set training\.max_steps or training\.epochs"):
        load_experiment(path)
    # a study's defaults with epochs reach every cell as epoch-based, unless a cell sets steps
    from tunebench.config.study import expand, load_study

    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\ndefaults:\n  training: {epochs: 5}\ntasks: [viggo]\nsystems:\n"
        "  - {name: a, provider: local}\n  - {name: b, provider: local, training: {max_steps: 9}}\n"
    )
    assert [c.config.training.max_steps for c in expand(load_study(study))] == [None, 9]


# --- the CLI, as a user runs it ------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return tunebench(*args, cwd=cwd, timeout=120, COLUMNS="200")


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def write_custom_config(folder: Path, name: str, data_file: str) -> Path:
    """``<name>.yaml``: a custom task reading ``data_file`` for train and test."""
    return write(
        folder / f"{name}.yaml",
        f"name: {name}\ntask:\n  name: custom\n  train_file: {data_file}\n  test_file: {data_file}\n"
        "  prompt_template: '{q}'\n",
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in message, (fragment, result.stderr)


def test_cli_help_lists_every_stage(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("prepare", "train", "predict", "evaluate", "report", "run", "serve", "export"):
        assert command in result.stdout
    for command in ("prepare", "train", "predict", "evaluate", "report", "run", "serve", "export"):
        sub = cli(command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and "Usage" in sub.stdout, command


def test_cli_turns_on_the_native_crash_handler(tmp_path: Path) -> None:
    """A segmentation fault inside a command (CUDA graphs did this on an H100) leaves the Python
    stack in the log: the entry point enables faulthandler in every process it runs in."""
    probe = (
        "import faulthandler, sys\n"
        "from tunebench.cli import main\n"
        "sys.argv = ['tunebench', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('enabled' if faulthandler.is_enabled() else 'disabled')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "enabled"


def test_cli_prepare_counts(tmp_path: Path) -> None:
    write(tmp_path / "sql.yaml", "name: s\ntask:\n  name: sql\n  validation: study\n")
    result = cli("prepare", "sql.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "runs/s/prepared/train.jsonl").read_text().splitlines()
    assert len(lines) == 3961
    assert "568" in result.stdout


def test_cli_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    # malformed YAML config
    write(tmp_path / "a.yaml", "name: [unclosed\n")
    assert_one_line_error(cli("prepare", "a.yaml", cwd=tmp_path), "a.yaml:")
    # config type error names the key
    write(tmp_path / "b.yaml", "name: b\ntraining:\n  max_steps: many\n")
    assert_one_line_error(cli("prepare", "b.yaml", cwd=tmp_path), "training.max_steps")
    # unknown task
    write(tmp_path / "c.yaml", "name: c\ntask:\n  name: poetry\n")
    assert_one_line_error(cli("prepare", "c.yaml", cwd=tmp_path), "task.name")
    # missing config file
    assert_one_line_error(cli("prepare", "nope.yaml", cwd=tmp_path), "nope.yaml: file not found")
    # non-UTF-8 data file (custom task)
    write(tmp_path / "latin.jsonl", b'{"q": "caf\xe9", "target": "x"}\n')
    write_custom_config(tmp_path, "d", "latin.jsonl")
    assert_one_line_error(cli("prepare", "d.yaml", cwd=tmp_path), "latin.jsonl:1: not valid UTF-8")
    # malformed JSONL names the line
    write(tmp_path / "broken.jsonl", '{"q": "a", "target": "b"}\n{"q": oops}\n')
    write_custom_config(tmp_path, "e", "broken.jsonl")
    assert_one_line_error(cli("prepare", "e.yaml", cwd=tmp_path), "broken.jsonl:2: invalid JSON")
    # missing field names row and field
    write(tmp_path / "nofield.jsonl", '{"q": "a", "target": "b"}\n{"q": "c"}\n')
    write_custom_config(tmp_path, "f", "nofield.jsonl")
    assert_one_line_error(
        cli("prepare", "f.yaml", cwd=tmp_path), "nofield.jsonl: row 2: field 'target': missing"
    )
    # empty file
    write(tmp_path / "empty.jsonl", "")
    write_custom_config(tmp_path, "g", "empty.jsonl")
    assert_one_line_error(cli("prepare", "g.yaml", cwd=tmp_path), "empty.jsonl: file is empty")
    # malformed CSV row
    write(tmp_path / "bad.csv", "q,target\na,b\nc,d,e\n")
    write_custom_config(tmp_path, "h", "bad.csv")
    assert_one_line_error(cli("prepare", "h.yaml", cwd=tmp_path), "bad.csv:3: expected 2 cells, found 3")
    # a data mirror without the task's files
    write(tmp_path / "i.yaml", "name: i\ntask:\n  name: viggo\n  data_dir: nowhere\n")
    assert_one_line_error(cli("prepare", "i.yaml", cwd=tmp_path), "nowhere/viggo/train.csv: file not found")
    # none of these left half-written outputs behind
    for name in "abcdefghi":
        prepared = tmp_path / "runs" / name / "prepared"
        assert not prepared.exists() or not any(prepared.iterdir()), name


def test_cli_unknown_task_for_evaluate(tmp_path: Path) -> None:
    write(tmp_path / "p.jsonl", '{"id": "1", "prediction": "a", "gold": "a"}\n')
    assert_one_line_error(
        cli("evaluate", "--task", "poetry", "--predictions", "p.jsonl", "--out", "o", cwd=tmp_path),
        "unknown task",
    )


def test_readme_config_reference_is_current() -> None:
    from tunebench.config.reference import reference_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- config-reference:start -->\n", 1)[1].split("<!-- config-reference:end -->", 1)[
        0
    ]
    assert block.strip() == reference_markdown().strip(), "run: tunebench config, paste into README.md"


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    from tunebench.config import load_yaml

    if "systems" in load_yaml(path):
        from tunebench.config.study import load_study

        load_study(path)
    else:
        load_experiment(path)


def test_rerun_accepts_operational_changes_but_refuses_a_different_experiment(tmp_path: Path) -> None:
    from tunebench.pipeline import open_run

    cfg = LocalExperiment(name="same", runs_dir=str(tmp_path))
    open_run(cfg).record_stage("train")
    faster = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"batch_size": 512})})
    assert open_run(faster).stage_done("train")  # only how it runs changed
    other = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": 16})})
    with pytest.raises(TunebenchError, match="different config"):
        open_run(other)


def test_a_changed_config_redoes_only_the_stages_it_makes_stale(tmp_path: Path) -> None:
    """Metrics score again, generation settings predict again, more steps continue training;
    a run with nothing finished takes any config (a failed first stage binds nothing)."""
    from tunebench.pipeline import open_run
    from tunebench.rundir import RunDir

    cfg = LocalExperiment(name="r", runs_dir=str(tmp_path), task=TaskConfig(name="sql"))
    open_run(cfg)
    fixed = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": 4})})
    open_run(fixed)  # nothing finished yet: the new config replaces the old one
    assert RunDir(cfg.run_dir).load_config().lora.r == 4

    def finished(config: Any) -> RunDir:
        run = open_run(config)
        for stage in ("prepare", "train", "choose", "predict:test", "evaluate:test", "cost"):
            run.record_stage(stage)
        return run

    def left(run: RunDir) -> set[str]:
        return {"prepare", "train", "choose", "predict:test", "evaluate:test", "cost"} - set(
            run.manifest()["stages"]
        )

    run = finished(fixed)
    rescored = fixed.model_copy(update={"task": fixed.task.model_copy(update={"metrics": ["exact_match"]})})
    assert left(open_run(rescored)) == {"evaluate:test", "cost"}
    run = finished(rescored)
    longer_answers = rescored.model_copy(
        update={"generation": rescored.generation.model_copy(update={"max_new_tokens": 300})}
    )
    assert left(open_run(longer_answers)) == {"predict:test", "evaluate:test", "cost"}
    run = finished(longer_answers)
    more_steps = longer_answers.model_copy(
        update={"training": longer_answers.training.model_copy(update={"max_steps": 800})}
    )
    assert left(open_run(more_steps)) == {"train", "choose", "predict:test", "evaluate:test", "cost"}
    assert run.load_config().training.max_steps == 800
    finished(more_steps)
    fewer_steps = more_steps.model_copy(
        update={"training": more_steps.training.model_copy(update={"max_steps": 10})}
    )
    with pytest.raises(TunebenchError, match=r"training.max_steps: 800 in the run, 10 now"):
        open_run(fewer_steps)


def test_cli_misused_configs_and_options_say_what_to_do(tmp_path: Path) -> None:
    write(tmp_path / "data.jsonl", "".join(f'{{"q": "q{i}", "target": "t{i}"}}\n' for i in range(4)))
    write_custom_config(tmp_path, "x", "data.jsonl")
    # a bad --set key is blamed on --set, not on the file
    assert_one_line_error(
        cli("prepare", "x.yaml", "--set", "training.max_stepz=3", cwd=tmp_path),
        "error: --set training.max_stepz: unknown key",
    )
    # every way a value is wrong is named, not "(and 1 more)"
    assert_one_line_error(
        cli("prepare", "x.yaml", "--set", "lora.target_modules=all", cwd=tmp_path),
        "lora.target_modules:",
        "all-linear",
    )
    # a run directory keeps one config: the refusal names the keys that differ and the way out
    assert cli("prepare", "x.yaml", cwd=tmp_path).returncode == 0
    assert_one_line_error(
        cli("train", "x.yaml", "--set", "training.max_steps=7", cwd=tmp_path),
        "training.max_steps: 400 in the run, 7 now",
        "--set name=",
    )
    # a study where an experiment is expected, and the other way round
    write(tmp_path / "study.yaml", "name: s\ntasks: [sql]\nsystems:\n  - {name: b, provider: base}\n")
    assert_one_line_error(cli("prepare", "study.yaml", cwd=tmp_path), "is a study config", "tunebench run")
    assert_one_line_error(cli("report", "x.yaml", cwd=tmp_path), "is a single experiment config")
    # predict: --set cannot change a run directory's config; splits are named
    assert_one_line_error(
        cli("predict", "--run-dir", "runs/x", "--set", "generation.max_new_tokens=5", cwd=tmp_path),
        "--set does not apply with --run-dir",
    )
    assert_one_line_error(
        cli("predict", "x.yaml", "--split", "dev", cwd=tmp_path), "choose validation or test"
    )
    # --gpus below 1 is a usage error
    zero = cli("train", "x.yaml", "--gpus", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "--gpus" in zero.stderr and "Traceback" not in zero.stderr


def test_cli_evaluate_sql_finds_the_mirrors_databases(tmp_path: Path) -> None:
    """Without --db-dir, SQL predictions are executed on the data mirror's Spider databases, as
    in the pipeline (and the command says where they came from)."""
    rows = [
        {
            "id": "1",
            "prediction": "SELECT count(*) FROM singer",
            "gold": "SELECT count(*) FROM singer",
            "db_id": "concert_singer",
            "context": "CREATE TABLE singer (Id VARCHAR)",
        },
        {
            "id": "2",
            "prediction": "SELECT count(*) FROM stadium",
            "gold": "SELECT count(*) FROM singer",
            "db_id": "concert_singer",
            "context": "CREATE TABLE singer (Id VARCHAR)",
        },
    ]
    write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    result = cli("evaluate", "--task", "sql", "--predictions", "p.jsonl", "--out", "o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "real databases:" in result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["execution_n"] == 2 and metrics["execution_accuracy"] == 0.5


def test_cli_run_dry_run_shows_the_plan_and_touches_nothing(tmp_path: Path) -> None:
    write(tmp_path / "data.jsonl", "".join(f'{{"q": "q{i}", "target": "t{i}"}}\n' for i in range(4)))
    write_custom_config(tmp_path, "x", "data.jsonl")
    plan = cli("run", "x.yaml", "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    flat = " ".join(plan.stdout.split())
    assert "new" in flat and "prepare" in flat and "cost" in flat
    assert not (tmp_path / "runs").exists()  # a plan, nothing written
    # after prepare: partly done, prepare no longer listed; a different config: refused, and why
    assert cli("prepare", "x.yaml", cwd=tmp_path).returncode == 0
    flat = " ".join(cli("run", "x.yaml", "--dry-run", cwd=tmp_path).stdout.split())
    assert "partly done" in flat and "prepare," not in flat
    other = cli("run", "x.yaml", "--dry-run", "--set", "lora.r=4", cwd=tmp_path)
    assert "refused" in other.stdout and "lora.r" in other.stdout


def test_a_refused_study_cell_points_at_the_study_not_at_set_name(tmp_path: Path) -> None:
    """A study sets its cells' names and runs_dir itself, so `--set name=` cannot be the way out."""
    from tunebench.pipeline import open_run

    cfg = LocalExperiment(name="b-sql", runs_dir=str(tmp_path), task=TaskConfig(name="sql"))
    open_run(cfg).record_stage("prepare")
    changed = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": 4})})
    with pytest.raises(
        TunebenchError, match=r"lora\.r: 8 in the run, 4 now.*change the study's name or runs_dir"
    ):
        open_run(changed, "study")
    with pytest.raises(TunebenchError, match=r"--set name=NEW_NAME"):
        open_run(changed)


def test_every_command_summary_is_one_line_of_its_help() -> None:
    """--help lists a command by its help's first paragraph, line breaks kept: a summary wrapped
    in the source breaks mid-sentence in the list."""
    import typer.main

    from tunebench.cli import app

    group = typer.main.get_command(app)
    commands = dict(group.commands)  # type: ignore[attr-defined]
    for sub in list(commands.values()):
        commands.update(getattr(sub, "commands", {}))
    for name, command in commands.items():
        summary = (command.help or "").strip().split("\n\n")[0]
        assert summary and "\n" not in summary, (name, summary)
