"""Text-to-SQL on sql-create-context ∩ Spider (the study's first task).

Prompt = the study's instruction, ``### Input:`` question, ``### Context:`` CREATE TABLE
statements, ``### Response:``; target = the gold SQL. The eval set is the 568 Spider-dev
examples; the held-out validation split takes whole databases out of train, so no schema seen
in validation was trained on.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from tunebench.data.paths import local_data_dir
from tunebench.data.sources import load_hub, read_rows
from tunebench.errors import TunebenchError
from tunebench.tasks.base import (
    BreakdownTable,
    ErrorAnalysis,
    ErrorBreakdown,
    Example,
    ScoredRun,
    Task,
    VoteSelection,
    binary_verdicts,
    check_fields,
    make_ids,
    number,
)

INSTRUCTION = (
    "You are a powerful text-to-SQL model. Your job is to answer questions about a database. "
    "You are given a question and context regarding one or more tables.\n\n"
    "You must output the SQL query that answers the question."
)

PROMPT_TEMPLATE = INSTRUCTION + "\n\n### Input:\n{question}\n\n### Context:\n{context}\n\n### Response:\n"

HUB_ID = "samlhuillier/sql-create-context-spider-intersect"
LOCAL_FILES = {
    "train": "sql/intersect/spider_create_context_train_db_id.json",
    "eval": "sql/intersect/spider_create_context_val_db_id.json",
}
REQUIRED = ("question", "context", "answer")


class SqlTask(Task):
    name = "sql"
    vote_selection: ClassVar[VoteSelection] = "execution_vote"
    input_fields: ClassVar[tuple[str, ...]] = ("question",)

    def render_prompt(self, fields: dict[str, Any]) -> str:
        return PROMPT_TEMPLATE.format(question=fields["question"], context=fields["context"])

    def chat_messages(self, example: Example) -> list[dict[str, str]]:
        system = f"{INSTRUCTION}\n\n### Context:\n{example.fields['context']}"
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": example.fields["question"]},
        ]

    def db_dir(self) -> Path | None:
        """Real Spider databases in the local mirror, for execution accuracy."""
        return spider_databases(self.config.data_dir)

    def scorer_options(self) -> dict[str, Any]:
        db_dir = self.db_dir()
        return {"db_dir": str(db_dir)} if db_dir else {}

    def headline_metric(self, metrics: dict[str, Any]) -> tuple[str, float | None]:
        """Execution accuracy on real databases when any example had one, else on generated ones."""
        for name, count in (("execution_accuracy", "execution_n"), ("suite_accuracy", "suite_n")):
            value = number(metrics.get(name))
            if metrics.get(count) and value is not None:
                return name, value
        return super().headline_metric(metrics)

    def headline_metrics(self) -> list[str]:
        return ["exact_match", "execution_accuracy", "suite_accuracy"]

    def primary_metrics(self) -> list[str]:
        return ["execution_accuracy", "exact_match"]

    def paired_verdicts(self) -> dict[str, str]:
        return {
            "exact_match": "exact_match",
            "execution_accuracy": "execution_match",
            "suite_accuracy": "suite_match",
        }

    def error_breakdown(self, split: str, runs: Sequence[ScoredRun]) -> list[ErrorBreakdown]:
        """Examples per ``failure_kind`` (why execution on the real database failed), per run."""
        counts = {
            r.system: Counter(str(e["failure_kind"]) for e in r.per_example[split] if e.get("failure_kind"))
            for r in runs
        }
        kinds = sorted({k for c in counts.values() for k in c})
        rows = [[s, *(str(c.get(k, 0)) for k in kinds), str(sum(c.values()))] for s, c in counts.items()]
        table = BreakdownTable(["system", *kinds, "total"], rows, frozenset(range(1, len(kinds) + 2)))
        return [
            ErrorBreakdown(
                "failures by kind",
                [table] if kinds else [],
                note="Examples per failure kind (per_example.jsonl `failure_kind` from the SQL scorer).",
                empty="No failures recorded.",
            )
        ]

    def error_analysis(self, split: str, run: ScoredRun) -> ErrorAnalysis | None:
        """Wrong by execution on the real database, classified by clause differences (sqlglot) and
        by whether the gold or the context schema is at fault (:mod:`tunebench.evaluation.sql.errors`)."""
        from tunebench.evaluation.sql.errors import BENCHMARK_CATEGORIES, analyze

        verdicts = binary_verdicts(run.per_example[split], "execution_match")
        db_dir = self.db_dir()
        if verdicts is None or db_dir is None:
            why = "no real-database verdicts" if verdicts is None else "the Spider databases are not here"
            return ErrorAnalysis("execution_match", 0, 0, [], 0, 0, empty=f"Not classified: {why}.")
        summary = analyze(run.predictions[split], db_dir, verdicts)
        return ErrorAnalysis.from_summary(summary, BENCHMARK_CATEGORIES, "execution_match", "question")

    # --- data -------------------------------------------------------------------------
    def _raw(self, which: str) -> tuple[list[dict[str, Any]], str]:
        root = None if self.config.hub_id else local_data_dir(self.config.data_dir)
        if root is not None:
            path = root / LOCAL_FILES[which]
            return read_rows(path), str(path)
        hub_id = self.config.hub_id or HUB_ID
        split = "train" if which == "train" else "validation"
        return load_hub(hub_id, split), f"{hub_id}[{split}]"

    def _examples(self, which: str) -> list[Example]:
        rows, source = self._raw(which)
        check_fields(rows, REQUIRED, source)
        ids = make_ids(f"sql-{which}", len(rows))
        return [self._example(i, row) for i, row in zip(ids, rows, strict=True)]

    def _example(self, id_: str, row: dict[str, Any]) -> Example:
        fields = {"question": row["question"], "context": row["context"]}
        if row.get("db_id") is not None:
            fields["db_id"] = row["db_id"]
        return Example(id=id_, prompt=self.render_prompt(fields), completion=row["answer"], fields=fields)

    def load_examples(self) -> dict[str, list[Example]]:
        train, test = self._examples("train"), self._examples("eval")
        if self.config.validation == "study":
            return {"train": train, "validation": list(test), "test": test}
        train, validation = split_by_database(train, self.config.validation_fraction, self.config.split_seed)
        return {"train": train, "validation": validation, "test": test}


def spider_databases(data_dir: str | None = None) -> Path | None:
    """The real Spider databases (``<db_id>/<db_id>.sqlite``) of the local data mirror, if any."""
    root = local_data_dir(data_dir)
    path = root / "sql" / "spider" / "database" if root else None
    return path if path and path.is_dir() else None


def split_by_database(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out whole databases (shuffled with ``seed``) until ``fraction`` of rows is reached."""
    by_db: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        db = ex.fields.get("db_id")
        if db is None:
            raise TunebenchError(
                f"{ex.id}: no db_id, so a by-database validation split is impossible; "
                "set task.validation: study"
            )
        by_db[db].append(ex)
    dbs = sorted(by_db)
    random.Random(seed).shuffle(dbs)
    held: set[str] = set()
    target = fraction * len(examples)
    count = 0
    for db in dbs:
        if count >= target:
            break
        held.add(db)
        count += len(by_db[db])
    train = [ex for ex in examples if ex.fields["db_id"] not in held]
    validation = [ex for ex in examples if ex.fields["db_id"] in held]
    return train, validation
