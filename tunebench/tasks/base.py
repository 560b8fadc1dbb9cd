"""The task interface: how raw rows become prompts, targets and chat messages.

A task owns its prompt format (character for character the study's for the built-in ones),
its splits, the rule that turns a raw generation into a prediction, and the name of its
scorer in :mod:`tunebench.evaluation`. Everything downstream sees only :class:`Example`.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunebench.config import TaskConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_jsonl
from tunebench.rundir import RunDir

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One rendered example. ``fields`` carries the task's extras (``context``, ``db_id``...)."""

    id: str
    prompt: str
    completion: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The prepared-JSONL row: ``id``, ``prompt``, ``completion`` and the extras."""
        return {"id": self.id, "prompt": self.prompt, "completion": self.completion, **self.fields}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Example:
        extras = {k: v for k, v in row.items() if k not in ("id", "prompt", "completion")}
        return cls(id=row["id"], prompt=row["prompt"], completion=row["completion"], fields=extras)


def load_prepared(run: RunDir, split: str) -> list[Example]:
    """Examples of a run's prepared split (the prepare stage writes them)."""
    return [
        Example.from_row(r) for r in read_jsonl(run.prepared(split), required=("id", "prompt", "completion"))
    ]


class Task(ABC):
    """Base class of the built-in and custom tasks."""

    name: ClassVar[str]
    #: The study trained on ``prompt + target + "\n"`` followed by EOS.
    completion_suffix: ClassVar[str] = "\n"

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    # --- data -------------------------------------------------------------------------
    @abstractmethod
    def load_examples(self) -> dict[str, list[Example]]:
        """All splits (``train``, ``validation``, ``test``) before any cap is applied."""

    def splits(self) -> dict[str, list[Example]]:
        """The splits with the config's caps applied (seeded shuffle for train)."""
        data = self.load_examples()
        cap_train, cap_eval = self.config.max_train_examples, self.config.max_eval_examples
        if cap_train is not None and len(data["train"]) > cap_train:
            rows = list(data["train"])
            random.Random(self.config.split_seed).shuffle(rows)
            data["train"] = rows[:cap_train]
        if cap_eval is not None:
            data["validation"] = data["validation"][:cap_eval]
            data["test"] = data["test"][:cap_eval]
        return data

    # --- prompts ----------------------------------------------------------------------
    @abstractmethod
    def render_prompt(self, fields: dict[str, Any]) -> str:
        """The text the model sees; the target follows it directly."""

    @abstractmethod
    def chat_messages(self, example: Example) -> list[dict[str, str]]:
        """System/user(/assistant) messages for chat fine-tuning (OpenAI's format)."""

    def training_messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages with the assistant's target, for fine-tuning files."""
        return [*self.chat_messages(example), {"role": "assistant", "content": example.completion}]

    # --- predictions ------------------------------------------------------------------
    def postprocess(self, generation: str, fenced: bool = False) -> str:
        """Raw generation -> prediction: the first line, stripped (the study's rule).

        ``fenced`` (a base model prompted in its chat format, which answers freely, often with a
        sentence and then a code block): the first complete fenced code block's content instead,
        on one line for first-line tasks; the first line when there is no block. Never for the
        study's plain prompts, fine-tuned or API runs: their rule stays the first line.
        """
        block = fenced_block(generation) if fenced else None
        if block is not None:
            generation = " ".join(block.split()) if self.config.first_line_only else block
        text = generation.lstrip("\n") if self.config.first_line_only else generation
        if self.config.first_line_only:
            text = text.split("\n", 1)[0]
        return text.strip()

    def vote_key(self, prediction: str) -> str | None:
        """What a majority vote compares (an ensemble of a non-SQL task): predictions with the same
        key are the same answer; None: not an answer (it gets no vote). Here: the text with its
        whitespace collapsed."""
        text = " ".join(prediction.split())
        return text or None

    @property
    def stops_on_newline(self) -> bool:
        """Generation may stop at the first newline (only the first line is kept)."""
        return self.config.first_line_only

    def eval_fields(self, example: Example) -> dict[str, Any]:
        """Fields the scorer needs besides ``prediction`` and ``gold``."""
        return dict(example.fields)

    def scorer_options(self) -> dict[str, Any]:
        """Default options passed to this task's scorer."""
        return {}

    def headline_metric(self, metrics: dict[str, Any]) -> tuple[str, float | None]:
        """The one number that ranks systems (and checkpoints) on this task: (name, value);
        None when no example could be scored."""
        return "exact_match", number(metrics.get("exact_match"))


FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def fenced_block(text: str) -> str | None:
    """The content of the first complete ```fenced``` code block (language tag dropped), if any."""
    match = FENCE.search(text)
    return match.group(1).strip() if match else None


def number(value: Any) -> float | None:
    """A metric value as a float, None when it is missing or not a number."""
    return float(value) if isinstance(value, int | float) else None


def make_ids(prefix: str, count: int) -> list[str]:
    """Stable ids by position in the source file, e.g. ``sql-train-00042``."""
    width = max(5, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


def check_fields(rows: Sequence[Any], required: Sequence[str], source: str) -> None:
    """Every row must be an object with text in ``required``; errors name the row and field."""
    if not rows:
        raise TunebenchError(f"{source}: no rows")
    for index, row in enumerate(rows, start=1):
        where = f"{source}: row {index}"
        if not isinstance(row, dict):
            raise TunebenchError(f"{where}: expected an object, got {type(row).__name__}")
        for name in required:
            value = row.get(name)
            if value is None:
                raise TunebenchError(f"{where}: field '{name}': missing")
            if not isinstance(value, str):
                raise TunebenchError(f"{where}: field '{name}': expected text, got {type(value).__name__}")
