"""``tunebench init DATA.jsonl``: a commented study config comparing three systems on a file.

The file is OpenAI's chat fine-tuning JSONL or prompt/completion JSONL (:mod:`tunebench.tasks.
formats`). Without ``--test``, a seeded share of its rows becomes the test set: the two parts
are written beside the config (``<stem>.train.jsonl``, ``<stem>.test.jsonl``) and the data file
is left untouched. Validation rows come from the task's held-out mechanism
(``task.validation: held_out``: a seeded ``validation_fraction`` of the training rows). The
OpenAI cost estimate is computed by the code behind ``tunebench openai estimate``; nothing is
uploaded or trained.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.config import TaskConfig
from tunebench.errors import TunebenchError, located
from tunebench.evaluation.structured import is_label_set, parse_json
from tunebench.io import read_text
from tunebench.providers.openai_export import (
    MIN_EXAMPLES,
    Estimate,
    estimate_cost,
    example_problems,
    export_rows,
    max_example_tokens,
    token_counter,
)
from tunebench.tasks import get_task
from tunebench.tasks.formats import Format, detect_format, numbered_rows, read_chat, read_prompt_completion

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini-2024-07-18"


@dataclass
class Scaffold:
    """What ``init`` wrote and found."""

    config: Path
    train_file: Path
    test_file: Path
    format: str
    metrics: list[str]
    estimate: Estimate


def init_study(
    data: Path,
    out: Path,
    model: str = DEFAULT_MODEL,
    openai_model: str = DEFAULT_OPENAI_MODEL,
    test_file: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Scaffold:
    """Write the study config ``out`` (and the split files when needed); see the module doc."""
    fmt = detect_format(data)
    if fmt == "rows":
        raise TunebenchError(
            f'{data}: init takes OpenAI chat JSONL ({{"messages": [...]}}) or prompt/completion JSONL; '
            "for rows and a template write the task section by hand (README: Your own task)"
        )
    if out.exists():
        raise TunebenchError(f"{out}: already exists; choose another --out")
    check_rows(data, fmt, openai_model)
    folder = out.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    if test_file is not None:
        check_same_format(test_file, fmt, data)
        return write_study(data, out, fmt, data.resolve(), test_file.resolve(), model, openai_model, seed)
    train_path, test_path = split_file(data, folder, test_fraction, seed)
    try:
        return write_study(data, out, fmt, train_path, test_path, model, openai_model, seed)
    except BaseException:  # a failed init leaves nothing behind, so the same command can be rerun
        for path in (train_path, test_path):
            path.unlink(missing_ok=True)
        raise


FORMAT_NAMES = {"chat": "OpenAI chat JSONL", "prompt_completion": "prompt/completion JSONL", "rows": "rows"}


def check_same_format(test_file: Path, fmt: Format, data: Path) -> None:
    """The test file is read in the training file's format: say so when it is in another."""
    found = detect_format(test_file)
    if found != fmt:
        raise TunebenchError(
            f"{test_file}: {FORMAT_NAMES[found]}, but {data} is {FORMAT_NAMES[fmt]}; "
            "give the test rows in the training file's format"
        )


def check_rows(data: Path, fmt: Format, openai_model: str) -> None:
    """Every row of ``data`` by OpenAI's format rules and the model's per-example token limit,
    before anything is written; an error names the data file's own line."""
    task = get_task(TaskConfig(name="custom", format=fmt, train_file=str(data), test_file=str(data)))
    examples = read_chat(data, "all") if fmt == "chat" else read_prompt_completion(data, "all")
    lines = [number for number, _ in numbered_rows(data)]
    counter, limit = token_counter(openai_model), max_example_tokens(openai_model)
    problems = [
        (line, problem)
        for line, row in zip(lines, export_rows(task, examples), strict=True)
        for problem in example_problems(row, counter, limit)
    ]
    if problems:
        (line, problem), more = problems[0], len(problems) - 1
        also = f" (and {more} more problem{'s' * (more > 1)} in the file)" if more else ""
        raise located(data, f"{problem}{also}", line=line)


def write_study(
    data: Path,
    out: Path,
    fmt: Format,
    train_path: Path,
    test_path: Path,
    model: str,
    openai_model: str,
    seed: int,
) -> Scaffold:
    """The study config for the train/test files, with the OpenAI cost estimate."""
    folder = out.resolve().parent
    task_config = TaskConfig(
        name="custom", format=fmt, train_file=str(train_path), test_file=str(test_path), split_seed=seed
    )
    task = get_task(task_config)
    splits = task.splits()
    metrics = choose_metrics([ex.completion for ex in splits["train"]])
    train_rows, val_rows = (export_rows(task, splits[s]) for s in ("train", "validation"))
    if len(train_rows) < MIN_EXAMPLES:
        held = len(numbered_rows(data)) - len(train_rows)
        raise TunebenchError(
            f"{data}: {len(train_rows)} training rows once {held} are held out (test and validation); "
            f"OpenAI fine-tuning needs at least {MIN_EXAMPLES}: add rows or pass --test FILE"
        )
    estimate = estimate_cost(train_rows, val_rows, openai_model)
    counter = token_counter(openai_model)
    longest = max(counter.count(ex.completion) for ex in [*splits["train"], *splits["test"]])
    text = study_yaml(
        config_name=out.name,
        name=slug(data.stem),
        fmt=fmt,
        train=relative(train_path, folder),
        test=relative(test_path, folder),
        metrics=metrics,
        model=model,
        openai_model=openai_model,
        max_new_tokens=max(32, 2 * longest + 16),
        n_train=len(splits["train"]),
        seed=seed,
    )
    out.write_text(text, encoding="utf-8")
    return Scaffold(out, train_path, test_path, fmt, metrics, estimate)


def split_file(data: Path, folder: Path, fraction: float, seed: int) -> tuple[Path, Path]:
    """A seeded ``fraction`` of the file's lines (at least one) into ``<stem>.test.jsonl``, the
    rest into ``<stem>.train.jsonl``, both in the file's order and as the file wrote them."""
    lines = [line for line in read_text(data).split("\n") if line.strip()]
    numbered_rows(data)  # invalid JSON names its line before anything is written
    if len(lines) < 2:
        raise TunebenchError(
            f"{data}: {len(lines)} row(s); a test split needs at least 2: add rows or pass --test FILE"
        )
    count = min(len(lines) - 1, max(1, round(fraction * len(lines))))
    held = set(random.Random(seed).sample(range(len(lines)), count))
    paths = folder / f"{data.stem}.train.jsonl", folder / f"{data.stem}.test.jsonl"
    for path, keep in zip(paths, (False, True), strict=True):
        if path.exists():
            raise TunebenchError(f"{path}: already exists; pass --test or remove it")
        path.write_text("".join(line + "\n" for i, line in enumerate(lines) if (i in held) == keep), "utf-8")
    return paths


def choose_metrics(golds: list[str]) -> list[str]:
    """JSON targets: json_match, json_field_f1, json_valid; a small label set: label_accuracy,
    macro_f1; other text: exact_match, token_f1."""
    if golds and all(is_json_object(g) for g in golds):
        return ["json_match", "json_field_f1", "json_valid"]
    if is_label_set(golds):
        return ["label_accuracy", "macro_f1"]
    return ["exact_match", "token_f1"]


def is_json_object(text: str) -> bool:
    try:
        return isinstance(parse_json(text), dict | list)
    except ValueError:
        return False


def slug(text: str) -> str:
    """A study/task name made of letters, digits, '-' and '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "task"


def relative(path: Path, folder: Path) -> str:
    """``path`` relative to the config's folder when inside it (config paths are read from there)."""
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def q(value: Any) -> str:
    """A YAML scalar (JSON is YAML)."""
    return json.dumps(value, ensure_ascii=False)


def study_yaml(
    *,
    config_name: str,
    name: str,
    fmt: str,
    train: str,
    test: str,
    metrics: list[str],
    model: str,
    openai_model: str,
    max_new_tokens: int,
    n_train: int,
    seed: int,
) -> str:
    batch = max(1, min(16, n_train))
    steps_per_epoch = max(1, -(-n_train // batch))
    return f"""\
# Study written by `tunebench init`: the base model zero-shot, a LoRA fine-tune and an OpenAI
# fine-tune on the same file, scored on the same test rows.
#   tunebench run {config_name} --cells 'base-*' --cells 'lora-*'   # free: this machine only
#   tunebench run {config_name} --yes   # also the OpenAI job (billed)
# Every key is described by `tunebench config`. Relative paths are read from this file's folder.
name: {q(name)}
tasks:
  - name: {q(name)}
    task:
      name: custom
      format: {fmt}              # detected from the file ({"OpenAI chat JSONL" if fmt == "chat" else "prompt/completion JSONL"})
      train_file: {q(train)}
      test_file: {q(test)}
      validation: held_out       # validation rows: a seeded share of train_file, never the test rows
      validation_fraction: 0.1
      split_seed: {seed}
      # The first metric ranks systems and checkpoints; chosen from the targets, change freely
      # (json_schema_valid with task.json_schema, token_f1, label_accuracy, macro_f1, module:function).
      metrics: {q(metrics)}
defaults:
  generation:
    max_new_tokens: {max_new_tokens}       # twice the longest target in tokens, plus room
systems:
  - name: base
    description: The base model zero-shot, prompted in its chat format (no training).
    provider: base
    model: {{name: {q(model)}}}
    generation: {{prompt_format: chat}}
  - name: lora
    description: LoRA fine-tune of the same model here, in its chat template.
    provider: local
    model: {{name: {q(model)}}}
    training:
      epochs: 3
      batch_size: {batch}
      micro_batch_size: {min(batch, 8)}
      warmup_steps: {max(0, steps_per_epoch // 2)}
      eval_every: {steps_per_epoch}
  - name: openai
    description: OpenAI fine-tuning job on the same file (billed; needs OPENAI_API_KEY).
    provider: openai
    openai: {{model: {q(openai_model)}}}
"""
