"""The fair zero-shot baseline: the base instruct model in its chat format, answers from fences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunebench.config import ExperimentConfig, TaskConfig, parse_model
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl
from tunebench.pipeline import run_experiment
from tunebench.tasks import get_task


@pytest.mark.parametrize(
    ("raw", "sql"),
    [
        # an instruct model's usual answer: a sentence, then the query in a fence
        (
            "To count them:\n```sql\nSELECT count(*)\nFROM singer;\n```\nThis counts rows.",
            "SELECT count(*) FROM singer;",
        ),
        ("```\nSELECT  name FROM t\n```", "SELECT name FROM t"),
        ("SELECT name FROM t\nmore", "SELECT name FROM t"),  # a fine-tuned model's plain answer: unchanged
        ("```sql", "```sql"),  # an unfinished fence (the study's first-line rule cut it) is not a block
        ("\n\nSELECT 1", "SELECT 1"),
    ],
)
def test_chat_answers_come_from_the_first_fenced_block(raw: str, sql: str) -> None:
    assert get_task(TaskConfig(name="sql")).postprocess(raw, fenced=True) == sql


def test_the_studys_first_line_rule_ignores_fences() -> None:
    """Plain prompts (fine-tuned, API and k-shot runs) keep the study's rule, fence or not."""
    task = get_task(TaskConfig(name="sql"))
    answer = "SELECT a FROM t\n\nAlternatively:\n```sql\nSELECT b\nFROM t\n```"
    assert task.postprocess(answer) == "SELECT a FROM t"
    assert task.postprocess("```sql\nSELECT 1\n```") == "```sql"


def test_multi_line_tasks_keep_the_blocks_lines(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"q": "x", "target": "a\\nb"}\n', encoding="utf-8")
    task = get_task(
        TaskConfig(
            name="custom",
            train_file=str(data),
            test_file=str(data),
            prompt_template="{q}",
            first_line_only=False,
        )
    )
    assert task.postprocess('Here:\n```json\n{"a": 1,\n "b": 2}\n```', fenced=True) == '{"a": 1,\n "b": 2}'


def base_chat(tmp_path: Path, model: str, **generation: Any) -> ExperimentConfig:
    return parse_model(
        ExperimentConfig,
        {
            "name": "base-chat",
            "runs_dir": str(tmp_path),
            "provider": "base",
            "model": {"name": model},
            "task": {"name": "sql", "max_train_examples": 8, "max_eval_examples": 4},
            "generation": {"prompt_format": "chat", "max_new_tokens": 48, "batch_size": 4, **generation},
        },
        "test",
    )


def test_the_base_model_is_prompted_in_its_chat_template_and_answers_freely(tmp_path: Path) -> None:
    config = base_chat(tmp_path, "smollm2-135m")
    run = run_experiment(config)
    rows = read_jsonl(run.predictions("test"))
    task = get_task(config.task)
    for row in rows:
        # the task's chat messages (system: instruction + schema; user: the question) in SmolLM2's template
        assert row["prompt"].startswith("<|im_start|>system\nYou are a powerful text-to-SQL model.")
        assert "### Context:\nCREATE TABLE" in row["prompt"]
        assert row["prompt"].endswith(
            f"<|im_start|>user\n{row['question']}<|im_end|>\n<|im_start|>assistant\n"
        )
        assert row["finish_reason"] in ("stop", "length")  # never cut at the first newline
        assert row["prediction"] == task.postprocess(row["raw"], fenced=True)
    # free answers run past a first line (SmolLM2-135M explains itself)
    assert any("\n" in row["raw"].strip() for row in rows)
    assert read_json(run.manifest_path)["stages"]["predict:test"]["prompt_format"] == "chat"


def test_chat_prompts_need_a_chat_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tunebench.models import load_tokenizer

    if getattr(load_tokenizer(str(tiny_model_dir)), "chat_template", None):
        pytest.skip("the tiny fixture has a chat template")
    with pytest.raises(TunebenchError, match="prompt_format: chat needs a chat template"):
        run_experiment(base_chat(tmp_path, str(tiny_model_dir)))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"provider": "local"}, "prompt_format: chat is for the base model"),
        ({"provider": "base", "generation": {"prompt_format": "chat", "few_shot": 2}}, "takes no few_shot"),
    ],
)
def test_chat_format_is_for_the_base_model_alone(patch: dict[str, Any], message: str) -> None:
    data = {"name": "x", "generation": {"prompt_format": "chat"}, **patch}
    with pytest.raises(TunebenchError, match=message):
        parse_model(ExperimentConfig, data, "cfg.yaml")
