"""Bring your own task: OpenAI chat JSONL, prompt/completion JSONL, or rows and a template.

The file's format is ``task.format``, detected from the training file by default
(:mod:`tunebench.tasks.formats`). For rows, the template is Jinja when it contains ``{{`` and
``str.format`` otherwise; it is rendered over each row's fields and the row's ``target_field``
is the expected output.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2

from tunebench.data.sources import read_rows
from tunebench.errors import TunebenchError
from tunebench.evaluation import structured
from tunebench.tasks.base import (
    BreakdownTable,
    ErrorAnalysis,
    ErrorBreakdown,
    ErrorCategory,
    ErrorExample,
    Example,
    ScoredRun,
    Task,
    binary_verdicts,
    make_ids,
    number,
)
from tunebench.tasks.formats import (
    CHAT_FIELD,
    Format,
    context_messages,
    detect_format,
    read_chat,
    read_prompt_completion,
)

# How a wrong text answer differs from the gold, in table order (the first that applies).
WRONG_KINDS = ("empty", "truncated", "over-long", "other")


class CustomTask(Task):
    name = "custom"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        template = config.prompt_template or ""
        self._jinja = (
            jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
                template
            )
            if "{{" in template
            else None
        )
        self._fields = (
            set() if self._jinja else {name for _, name, _, _ in string.Formatter().parse(template) if name}
        )

    def render_prompt(self, fields: dict[str, Any]) -> str:
        if self._jinja is not None:
            return self._jinja.render(**fields)
        return (self.config.prompt_template or "").format(**fields)

    @cached_property
    def format(self) -> Format:
        """``task.format``, or the one the training file's first row shows (``auto``)."""
        if self.config.format != "auto":
            return self.config.format
        return detect_format(self.config.train_file)

    @property
    def first_line_only(self) -> bool:
        """``task.first_line_only``, else on for rows only: a chat or prompt/completion answer
        ends where the model stops."""
        if self.config.first_line_only is not None:
            return self.config.first_line_only
        return self.format == "rows"

    @property
    def chat_data(self) -> bool:
        return self.format == "chat"

    def chat_messages(self, example: Example) -> list[dict[str, str]]:
        context = context_messages(example)
        if context is not None:
            return context
        system = self.config.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        return [*messages, {"role": "user", "content": example.prompt}]

    def training_messages(self, example: Example) -> list[dict[str, str]]:
        """A chat example's messages exactly as its file holds them (``weight`` included)."""
        messages = example.fields.get(CHAT_FIELD)
        return list(messages) if isinstance(messages, list) else super().training_messages(example)

    def scorer_options(self) -> dict[str, Any]:
        unwrap = self.config.unwrap_fence
        options: dict[str, Any] = {
            "metrics": list(self.config.metrics),
            "unwrap_fence": unwrap if unwrap is not None else self.format == "chat",
        }
        if self.config.json_schema is not None:
            options["json_schema"] = self.config.json_schema
        return options

    def headline_metric(self, metrics: dict[str, Any]) -> tuple[str, float | None]:
        name = (metrics.get("metrics") or ["exact_match"])[0]
        return name, number(metrics.get(name))

    def headline_metrics(self) -> list[str]:
        """The configured metrics, in the config's order (repeats dropped, as the scorer does)."""
        return list(dict.fromkeys(self.config.metrics))

    def paired_verdicts(self) -> dict[str, str]:
        """Every configured metric under its own name: those whose per-example values are
        True/False (``exact_match``, ``json_match``, a user's bool metric) are paired-tested."""
        return {name: name for name in self.headline_metrics()}

    def error_breakdown(self, split: str, runs: Sequence[ScoredRun]) -> list[ErrorBreakdown]:
        """Wrong answers (by each run's first binary verdict) by how they differ from the gold."""
        rows = []
        for run in runs:
            key = self.verdict_key(run.per_example[split])
            verdicts = binary_verdicts(run.per_example[split], key) if key else None
            if key is None or verdicts is None:
                continue
            wrong = [p for p in run.predictions[split] if verdicts.get(p["id"]) is False]
            kinds = Counter(wrong_kind(str(p["prediction"]), str(p["gold"])) for p in wrong)
            rows.append([run.system, key, *(str(kinds[k]) for k in WRONG_KINDS), str(len(wrong))])
        table = BreakdownTable(
            ["system", "wrong by", *WRONG_KINDS, "total"], rows, frozenset(range(2, len(WRONG_KINDS) + 3))
        )
        text = ErrorBreakdown(
            "wrong answers by kind",
            [table] if rows else [],
            note="Wrong answers by the first metric with a per-example right/wrong verdict: empty "
            "(nothing but whitespace), truncated (a strict prefix of the gold), over-long (more than "
            "twice the gold's length), other. Examples without a verdict are left out.",
            empty="No metric gives a per-example right/wrong verdict: "
            f"{', '.join(self.headline_metrics())} are scores.",
        )
        return [text, *json_breakdown(split, runs)]

    def error_analysis(self, split: str, run: ScoredRun) -> ErrorAnalysis | None:
        """Wrong answers (by the first binary verdict) by how they differ from the gold (none is
        put on the benchmark: a user's own data has no known faults)."""
        key = self.verdict_key(run.per_example[split])
        verdicts = binary_verdicts(run.per_example[split], key) if key else None
        if key is None or verdicts is None:
            why = f"{', '.join(self.headline_metrics())} give no per-example right/wrong verdict."
            return ErrorAnalysis("–", 0, 0, [], 0, 0, empty=f"Not classified: {why}")
        wrong = [p for p in run.predictions[split] if verdicts.get(p["id"]) is False]
        by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in WRONG_KINDS}
        for p in wrong:
            by_kind[wrong_kind(str(p["prediction"]), str(p["gold"]))].append(p)
        categories = [
            ErrorCategory(
                kind,
                len(rows),
                False,
                [
                    ErrorExample(
                        p["id"], str(p.get("prompt") or ""), str(p["prediction"]), str(p["gold"]), []
                    )
                    for p in rows[:3]
                ],
            )
            for kind, rows in by_kind.items()
        ]
        scored = sum(1 for v in verdicts.values() if v is not None)
        return ErrorAnalysis(key, scored, len(wrong), categories, len(wrong), 0)

    def _examples(self, split: str, path: str) -> list[Example]:
        if self.format == "chat":
            return read_chat(Path(path), split)
        if self.format == "prompt_completion":
            return read_prompt_completion(Path(path), split)
        if not self.config.prompt_template:
            raise TunebenchError(
                f"{path}: rows without 'messages' or 'prompt'/'completion' need task.prompt_template "
                "(and task.target_field)"
            )
        rows = read_rows(path)
        if not rows:
            raise TunebenchError(f"{path}: file is empty")
        target_field = self.config.target_field
        out = []
        for index, (id_, row) in enumerate(zip(make_ids(f"custom-{split}", len(rows)), rows, strict=True), 1):
            where = f"{path}: row {index}"
            if not isinstance(row, dict):
                raise TunebenchError(f"{where}: expected an object")
            if row.get(target_field) is None:
                raise TunebenchError(f"{where}: field '{target_field}': missing")
            fields = {k: v for k, v in row.items() if k != target_field}
            try:
                prompt = self.render_prompt(fields)
            except KeyError as exc:
                raise TunebenchError(f"{where}: prompt_template needs field '{exc.args[0]}'") from None
            except jinja2.UndefinedError as exc:  # "'txt' is undefined", or "... has no attribute ..."
                match = re.fullmatch(r"'(.*)' is undefined", exc.message or "")
                detail = f" needs field '{match.group(1)}'" if match else f": {exc.message}"
                raise TunebenchError(f"{where}: prompt_template{detail}") from None
            except (IndexError, ValueError) as exc:
                raise TunebenchError(f"{where}: prompt_template: {exc}") from None
            fields = {"id_in_file": row.get("id"), **fields} if "id" in row else fields
            fields.pop("id", None)
            out.append(Example(id=id_, prompt=prompt, completion=str(row[target_field]), fields=fields))
        return out

    def load_examples(self) -> dict[str, list[Example]]:
        cfg = self.config
        train = self._examples("train", str(Path(cfg.train_file)))
        test = self._examples("test", str(Path(cfg.test_file)))
        if cfg.validation == "study":
            validation = list(test)
        elif cfg.validation_file:
            validation = self._examples("validation", cfg.validation_file)
        else:
            train, validation = hold_out_rows(train, cfg.validation_fraction, cfg.split_seed)
        return {"train": train, "validation": validation, "test": test}


def hold_out_rows(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``held_out`` without a validation file: a seeded ``fraction`` of the training rows (at
    least one) becomes the validation split, so early stopping never looks at the test set.
    Both keep the file's order. A single row stays in train (no validation split): zero-shot
    providers need no training rows at all."""
    if len(examples) < 2:
        return list(examples), []
    count = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    held = set(random.Random(seed).sample(range(len(examples)), count))
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


def wrong_kind(prediction: str, gold: str) -> str:
    """One of :data:`WRONG_KINDS` for a wrong answer (ends' whitespace ignored)."""
    prediction, gold = prediction.strip(), gold.strip()
    if not prediction:
        return "empty"
    if gold.startswith(prediction) and prediction != gold:
        return "truncated"
    if len(prediction) > 2 * len(gold):
        return "over-long"
    return "other"


def json_breakdown(split: str, runs: Sequence[ScoredRun]) -> list[ErrorBreakdown]:
    """For answers that are JSON (every gold parses): each system's answers by what is wrong
    (invalid JSON, a missing field, a wrong value, an extra field, only a list's order) and the
    fields most often wrong (``structured.error_breakdown``)."""
    if not runs or not all(_is_json(str(p["gold"])) for p in runs[0].predictions[split]):
        return []
    kinds = ("invalid_json", "missing_field", "wrong_value", "extra_field", "list_order", "correct")
    by_kind, by_field = [], []
    for run in runs:
        rows = run.predictions[split]
        found = structured.error_breakdown(
            [str(r["prediction"]) for r in rows], [str(r["gold"]) for r in rows], "json"
        )
        by_kind.append([run.system, *(str(found["categories"].get(k, 0)) for k in kinds)])
        by_field += [[run.system, field, str(count)] for field, count in list(found["fields"].items())[:5]]
    tables = [BreakdownTable(["system", *kinds], by_kind, frozenset(range(1, len(kinds) + 1)))]
    if by_field:
        tables.append(
            BreakdownTable(
                ["system", "difference and field", "examples"],
                by_field,
                frozenset({2}),
                note="The five field differences each system makes most often.",
            )
        )
    note = (
        "Each answer parsed and compared with the gold: invalid JSON, else the first of a missing "
        "field, a wrong value, an extra field (paths from the root $: .key, [] for list items), "
        "else only a list's order differs."
    )
    return [ErrorBreakdown("JSON answers by what is wrong", tables, note=note)]


def _is_json(text: str) -> bool:
    try:
        structured.parse_json(text)
    except ValueError:
        return False
    return True
