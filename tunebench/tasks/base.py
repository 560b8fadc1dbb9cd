"""The task interface: how raw rows become prompts, targets and chat messages.

A task owns its prompt format (character for character the study's for the built-in ones),
its splits, the rule that turns a raw generation into a prediction, and the name of its
scorer in :mod:`tunebench.evaluation`. Everything downstream sees only :class:`Example`.

A task also declares what it knows about its scores, so that the layers above read them
without knowing which task they hold: the metrics a results table shows, the per-example
verdicts a paired test compares, how wrong answers break down, and how an ensemble votes.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from tunebench.config import TaskConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_jsonl
from tunebench.rundir import RunDir

SPLITS = ("train", "validation", "test")

VoteSelection = Literal["majority", "execution_vote"]


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


class ScoredRun(Protocol):
    """What a task reads of one scored run to break its errors down (all keyed by split)."""

    @property
    def system(self) -> str: ...

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``eval/<split>/metrics.json``."""
        ...

    @property
    def per_example(self) -> dict[str, list[dict[str, Any]]]:
        """``eval/<split>/per_example.jsonl``."""
        ...

    @property
    def predictions(self) -> dict[str, list[dict[str, Any]]]:
        """``predictions/<split>.jsonl`` (``id``, ``prediction``, ``gold`` and the example's fields)."""
        ...


@dataclass(frozen=True)
class BreakdownTable:
    """One table of an error breakdown, its cells already text."""

    header: list[str]
    rows: list[list[str]]
    #: Indexes of the columns that hold numbers (right-aligned).
    numeric: frozenset[int] = frozenset()
    #: One line said before the table.
    note: str | None = None


@dataclass(frozen=True)
class ErrorBreakdown:
    """One block of a task's error analysis: a title, a note and tables (plain data; the report
    lays it out under ``<task> (<split>): <title>``)."""

    title: str
    tables: list[BreakdownTable]
    #: One line said under the title.
    note: str | None = None
    #: Said instead of the tables when there are none.
    empty: str | None = None


@dataclass(frozen=True)
class ErrorExample:
    """One classified wrong prediction, as the report shows it."""

    id: str
    input: str
    prediction: str
    gold: str
    differences: list[str]


@dataclass(frozen=True)
class ErrorCategory:
    """How many wrong predictions fall in one category, and a few of them."""

    name: str
    count: int
    #: The example, not the model, is at fault (the gold or the benchmark's schema is wrong).
    benchmark: bool
    examples: list[ErrorExample]


@dataclass(frozen=True)
class ErrorAnalysis:
    """One run's remaining errors, each in one category, and how many are the model's and how
    many the benchmark's (unclassified errors count as the model's)."""

    #: The per-example verdict that makes a prediction wrong.
    wrong_by: str
    #: Examples with a verdict.
    scored: int
    wrong: int
    categories: list[ErrorCategory]
    model: int
    benchmark: int
    #: Said instead of the tables when the errors could not be classified here.
    empty: str | None = None

    @classmethod
    def from_summary(
        cls, summary: dict[str, Any], benchmark: Sequence[str], wrong_by: str, input_field: str
    ) -> ErrorAnalysis:
        """From :func:`tunebench.evaluation.common.summarize_errors`' result."""
        categories = [
            ErrorCategory(
                name,
                entry["count"],
                name in benchmark,
                [
                    ErrorExample(
                        str(e["id"]),
                        str(e.get(input_field) or ""),
                        str(e.get("prediction") or ""),
                        str(e.get("gold") or ""),
                        [str(d) for d in e.get("differences") or []],
                    )
                    for e in entry["examples"]
                ],
            )
            for name, entry in summary["categories"].items()
        ]
        split = summary["split"]
        return cls(
            wrong_by, summary["scored"], summary["wrong"], categories, split["model"], split["benchmark"]
        )


class Task(ABC):
    """Base class of the built-in and custom tasks."""

    name: ClassVar[str]
    #: The study trained on ``prompt + target + "\n"`` followed by EOS.
    completion_suffix: ClassVar[str] = "\n"
    #: How an ensemble turns its members' candidates into one prediction: ``majority`` (the
    #: candidate whose :meth:`vote_key` most candidates share) or ``execution_vote`` (the
    #: candidate whose results on the example's databases most candidates share; SQL only).
    vote_selection: ClassVar[VoteSelection] = "majority"
    #: Prediction-row fields that show an example's input beside a wrong prediction (the first
    #: one present is shown).
    input_fields: ClassVar[tuple[str, ...]] = ("question", "sentence", "target", "input")

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
    @property
    def first_line_only(self) -> bool:
        """``task.first_line_only``, else the task's default (the study's rule: on)."""
        return self.config.first_line_only if self.config.first_line_only is not None else True

    @property
    def chat_data(self) -> bool:
        """The examples are conversations (``chat_messages`` in their fields): local models train
        and answer in their chat template, whatever ``generation.prompt_format`` says."""
        return False

    def postprocess(self, generation: str, fenced: bool = False) -> str:
        """Raw generation -> prediction: the first line, stripped (the study's rule).

        ``fenced`` (a base model prompted in its chat format, which answers freely, often with a
        sentence and then a code block): the first complete fenced code block's content instead,
        on one line for first-line tasks; the first line when there is no block. Never for the
        study's plain prompts, fine-tuned or API runs: their rule stays the first line.
        """
        block = fenced_block(generation) if fenced else None
        if block is not None:
            generation = " ".join(block.split()) if self.first_line_only else block
        text = generation.lstrip("\n") if self.first_line_only else generation
        if self.first_line_only:
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
        return self.first_line_only

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

    # --- what the scores mean (read by reports) ----------------------------------------
    def headline_metrics(self) -> list[str]:
        """Keys of ``metrics.json`` a results table shows, in column order (each with its
        ``<key>_ci95``); a key no run scored is left out."""
        return ["exact_match"]

    def primary_metrics(self) -> list[str]:
        """Metrics that say whether one prediction is right, most meaningful first: the first
        with a binary per-example verdict picks the wrong predictions a report lists."""
        return self.headline_metrics()

    def paired_verdicts(self) -> dict[str, str]:
        """metric -> the ``per_example.jsonl`` key holding its per-example score, for paired tests
        between systems: McNemar where the values are True/False (or 0/1), a paired permutation
        test where they are numbers; None is an example left out, and a key holding text is not
        tested."""
        return {"exact_match": "exact_match"}

    def verdict_key(self, per_example: list[dict[str, Any]]) -> str | None:
        """The per-example key that tells this run's right answers from wrong ones: that of the
        first :meth:`primary_metrics` with a binary verdict; None when there is none."""
        keys = self.paired_verdicts()
        for metric in self.primary_metrics():
            key = keys.get(metric, metric)
            if binary_verdicts(per_example, key) is not None:
                return key
        return None

    def error_breakdown(self, split: str, runs: Sequence[ScoredRun]) -> list[ErrorBreakdown]:
        """How the systems' answers on ``split`` went wrong, as titled tables (one row per run
        in the order given); none by default."""
        return []

    def error_analysis(self, split: str, run: ScoredRun) -> ErrorAnalysis | None:
        """``run``'s wrong predictions on ``split``, each classified (a report shows those of the
        best system); None: this task does not classify its errors."""
        return None


FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def fenced_block(text: str) -> str | None:
    """The content of the first complete ```fenced``` code block (language tag dropped), if any."""
    match = FENCE.search(text)
    return match.group(1).strip() if match else None


def binary_verdicts(per_example: list[dict[str, Any]], key: str) -> dict[str, bool | None] | None:
    """id -> the ``key`` verdict of each example; None when the rows lack ``key`` or any of its
    values is not True, False or None (a score, not a verdict)."""
    if not per_example or key not in per_example[0]:
        return None
    values = {r["id"]: r.get(key) for r in per_example}
    if not all(v is None or isinstance(v, bool) for v in values.values()):
        return None
    return values


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
