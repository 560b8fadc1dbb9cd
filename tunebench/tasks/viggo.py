"""ViGGO meaning representation (the study's second task).

Prompt = the study's instruction listing the 9 functions and 14 attributes,
``### Target sentence:``, ``### Meaning representation:``; target = the MR, e.g.
``inform(name[Portal 2], rating[excellent])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from tunebench.data.paths import local_data_dir
from tunebench.data.sources import load_hub, read_rows
from tunebench.tasks.base import (
    BreakdownTable,
    ErrorAnalysis,
    ErrorBreakdown,
    Example,
    ScoredRun,
    Task,
    check_fields,
    make_ids,
)

FUNCTIONS = [
    "inform", "request", "give_opinion", "confirm", "verify_attribute",
    "suggest", "request_explanation", "recommend", "request_attribute",
]  # fmt: skip
ATTRIBUTES = [
    "name", "exp_release_date", "release_year", "developer", "esrb", "rating", "genres",
    "player_perspective", "has_multiplayer", "platforms", "available_on_steam",
    "has_linux_release", "has_mac_release", "specifier",
]  # fmt: skip

INSTRUCTION_LINES = [
    "Given a target sentence construct the underlying meaning representation of the input "
    "sentence as a single function with attributes and attribute values.",
    f"This function should describe the target string accurately and the function must be one "
    f"of the following {FUNCTIONS}.",
    f"The attributes must be one of the following: {ATTRIBUTES}",
]
INSTRUCTION = "\n".join(INSTRUCTION_LINES)
PROMPT_TEMPLATE = INSTRUCTION + "\n\n### Target sentence:\n{target}\n\n### Meaning representation:\n"
# The study's OpenAI files join the same three lines with spaces.
CHAT_SYSTEM = " ".join(INSTRUCTION_LINES)

# metrics.json ``error_counts`` keys, in table order.
ERROR_KINDS = [
    "wrong_function", "unparseable", "missing", "extra", "wrong_value", "duplicated", "unknown_attribute",
]  # fmt: skip

HUB_ID = "GEM/viggo"
LOCAL_FILES = {"train": "viggo/train.csv", "validation": "viggo/valid.csv", "test": "viggo/test.csv"}


class ViggoTask(Task):
    name = "viggo"
    input_fields: ClassVar[tuple[str, ...]] = ("sentence",)

    def render_prompt(self, fields: dict[str, Any]) -> str:
        return PROMPT_TEMPLATE.format(target=fields["sentence"])

    def chat_messages(self, example: Example) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": CHAT_SYSTEM},
            {"role": "user", "content": example.fields["sentence"]},
        ]

    def vote_key(self, prediction: str) -> str | None:
        """The parsed MR, order of attributes and list items aside (what ``mr_match`` compares);
        None for a prediction that does not parse."""
        from tunebench.evaluation.mr import MR, parse_mr

        mr = parse_mr(prediction)
        if not isinstance(mr, MR):
            return None
        slots = sorted(
            (attr, sorted(v) if isinstance(v, frozenset) else v) for attr, v in mr.normalized().items()
        )
        return repr((mr.function, slots))

    def headline_metrics(self) -> list[str]:
        return ["exact_match", "mr_match", "slot_f1", "function_accuracy"]

    def primary_metrics(self) -> list[str]:
        return ["mr_match", "exact_match"]

    def paired_verdicts(self) -> dict[str, str]:
        return {"exact_match": "exact_match", "mr_match": "mr_match"}

    def error_breakdown(self, split: str, runs: Sequence[ScoredRun]) -> list[ErrorBreakdown]:
        """The scorer's error counts by kind, then each attribute's F1 and mistakes, per run."""
        kinds = [
            [r.system, *(str(r.metrics[split].get("error_counts", {}).get(k, "–")) for k in ERROR_KINDS)]
            for r in runs
        ]
        by_kind = BreakdownTable(["system", *ERROR_KINDS], kinds, frozenset(range(1, len(ERROR_KINDS) + 1)))
        attributes = BreakdownTable(
            ["attribute", *(r.system for r in runs)],
            attribute_rows(split, runs),
            note="Per attribute: F1 (support; missing / extra / wrong value). Counts are attributes over "
            "scorable examples, from metrics.json per_attribute.",
        )
        return [ErrorBreakdown("errors by kind", [by_kind, attributes])]

    def error_analysis(self, split: str, run: ScoredRun) -> ErrorAnalysis | None:
        """Wrong by exact match, classified slot by slot (:mod:`tunebench.evaluation.viggo_errors`)."""
        from tunebench.evaluation.viggo_errors import BENCHMARK_CATEGORIES, analyze

        summary = analyze(run.predictions[split])
        return ErrorAnalysis.from_summary(summary, BENCHMARK_CATEGORIES, "exact_match", "sentence")

    def _raw(self, split: str) -> tuple[list[dict[str, Any]], str]:
        root = None if self.config.hub_id else local_data_dir(self.config.data_dir)
        if root is not None:
            path = root / LOCAL_FILES[split]
            return read_rows(path), str(path)
        hub_id = self.config.hub_id or HUB_ID
        rows = load_hub(hub_id, split)
        # GEM/viggo renames the CSV's columns.
        return [{"mr": r["meaning_representation"], "ref": r["target"]} for r in rows], f"{hub_id}[{split}]"

    def _examples(self, split: str) -> list[Example]:
        rows, source = self._raw(split)
        check_fields(rows, ("mr", "ref"), source)
        ids = make_ids(f"viggo-{split}", len(rows))
        out = []
        for id_, row in zip(ids, rows, strict=True):
            fields = {"sentence": row["ref"]}
            out.append(
                Example(id=id_, prompt=self.render_prompt(fields), completion=row["mr"], fields=fields)
            )
        return out

    def load_examples(self) -> dict[str, list[Example]]:
        train, test = self._examples("train"), self._examples("test")
        validation = list(test) if self.config.validation == "study" else self._examples("validation")
        return {"train": train, "validation": validation, "test": test}


def attribute_rows(split: str, runs: Sequence[ScoredRun]) -> list[list[str]]:
    """One row per attribute any run predicted or should have: each run's F1 (support;
    missing/extra/wrong value) from metrics.json ``per_attribute``."""
    attributes: list[str] = []
    for r in runs:
        for attr, row in r.metrics[split].get("per_attribute", {}).items():
            if (row.get("support") or row.get("predicted")) and attr not in attributes:
                attributes.append(attr)
    rows = []
    for attr in attributes:
        cells = [attr]
        for r in runs:
            row = r.metrics[split].get("per_attribute", {}).get(attr)
            if not row:
                cells.append("–")
                continue
            f1 = "–" if row.get("f1") is None else f"{row['f1']:.4f}"
            cells.append(f"{f1} ({row['support']}; {row['missing']}/{row['extra']}/{row['wrong_value']})")
        rows.append(cells)
    return rows
