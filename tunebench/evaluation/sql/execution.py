"""Scoring of one example: string matches, component match, real-DB and test-suite execution.

An :class:`Evaluator` lives in one process and caches what repeats across examples: open
read-only connections per database file, the gold's result per (database, prepared gold) and
the generated suite (with the gold's results on it) per (context, prepared gold).
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.evaluation.sql import schema as _schema_module
from tunebench.evaluation.sql import suite as _suite_module
from tunebench.evaluation.sql.compare import prepare_pair, results_equal
from tunebench.evaluation.sql.components import component_match
from tunebench.evaluation.sql.normalize import exact_match, exact_match_normalized
from tunebench.evaluation.sql.sandbox import (
    DEFAULT_MAX_MEMORY_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    QueryResult,
    limit_memory,
    open_readonly,
    run_query,
)
from tunebench.evaluation.sql.suite import Suite, build_suite


def default_suite_cache_dir() -> str:
    """``$XDG_CACHE_HOME/tunebench/sql-suites`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tunebench", "sql-suites")


def _generator_fingerprint() -> str:
    """Hash of the generator's source: a changed generator never reads an old cached suite."""
    digest = hashlib.sha256()
    for module in (_suite_module, _schema_module):
        with open(module.__file__ or "", "rb") as handle:
            digest.update(handle.read())
    digest.update(sqlite3.sqlite_version.encode())
    return digest.hexdigest()[:16]


_FINGERPRINT = _generator_fingerprint()


@dataclass(frozen=True)
class Settings:
    """Options that change verdicts (see the package docstring for each)."""

    db_dir: str | None = None
    suite_size: int = 8
    seed: int = 0
    timeout_s: float = 10.0
    max_rows: int = 100_000
    max_result_mb: float = DEFAULT_MAX_RESULT_BYTES / 2**20
    max_memory_mb: float = DEFAULT_MAX_MEMORY_BYTES / 2**20
    keep_distinct: bool = False
    component_ignore_values: bool = True
    components: bool = True
    suite_cache_dir: str | None = None


@dataclass
class Verdict:
    """Outcome of comparing a prediction with the gold on a set of databases."""

    match: bool | None
    error: str | None = None
    kind: str | None = None


class Evaluator:
    """Scores examples with per-process caches (connections, gold results, suites)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connections: dict[str, sqlite3.Connection] = {}
        self.gold_results: dict[tuple[str, str], QueryResult] = {}
        self.suites: dict[tuple[str, str], tuple[Suite, list[QueryResult]]] = {}
        self.db_paths: dict[str, list[str]] = {}
        limit_memory(int(settings.max_memory_mb * 2**20))

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        for suite, _ in self.suites.values():
            suite.close()
        self.connections.clear()
        self.suites.clear()

    # --- real databases -----------------------------------------------------------------
    def databases(self, db_id: str) -> list[str]:
        """Every ``*.sqlite`` file in ``db_dir/<db_id>/`` (all of them are compared, as upstream);
        none for a ``db_id`` that is not a folder name inside ``db_dir``."""
        if db_id not in self.db_paths:
            folder = Path(self.settings.db_dir or "") / db_id
            inside = db_id_problem(db_id) is None
            paths = sorted(str(p) for p in folder.glob("*.sqlite")) if inside and folder.is_dir() else []
            self.db_paths[db_id] = paths
        return self.db_paths[db_id]

    def _run(self, path: str, sql: str) -> QueryResult:
        conn = self.connections.get(path)
        if conn is None:
            conn = self.connections[path] = open_readonly(path)
        s = self.settings
        return run_query(conn, sql, s.timeout_s, s.max_rows, int(s.max_result_mb * 2**20))

    def _gold_on(self, path: str, gold: str) -> QueryResult:
        key = (path, gold)
        if key not in self.gold_results:
            self.gold_results[key] = self._run(path, gold)
        return self.gold_results[key]

    def execution(self, prediction: str, gold: str, order_matters: bool, db_id: Any) -> Verdict:
        """Compare on the real database(s) of ``db_id``."""
        if not self.settings.db_dir:
            return Verdict(None, "no db_dir given", "no_db")
        if not isinstance(db_id, str) or not db_id:
            return Verdict(None, "row has no db_id", "no_db")
        if problem := db_id_problem(db_id):
            return Verdict(None, problem, "no_db")
        paths = self.databases(db_id)
        if not paths:
            return Verdict(None, f"no database for db_id '{db_id}'", "no_db")
        for path in paths:
            gold_result = self._gold_on(path, gold)
            if not gold_result.ok:
                return Verdict(None, f"gold fails on {Path(path).name}: {gold_result.error}", "gold_error")
            pred_result = self._run(path, prediction) if prediction != gold else gold_result
            verdict = _compare(gold_result, pred_result, order_matters)
            if not verdict.match:
                return verdict
        return Verdict(True)

    # --- generated suite ----------------------------------------------------------------
    def suite(self, prediction: str, gold: str, order_matters: bool, context: Any) -> Verdict:
        """Compare on the generated databases of (context, gold)."""
        s = self.settings
        if s.suite_size <= 0:
            return Verdict(None, None, None)
        if not isinstance(context, str) or not context.strip():
            return Verdict(None, "no context to generate test databases from", "no_context")
        key = (context, gold)
        if key not in self.suites:
            self.suites[key] = self._load_or_build_suite(context, gold)
        suite, gold_results = self.suites[key]
        if suite.error:
            return Verdict(None, suite.error, "gold_error")
        if prediction == gold:  # as on the real DB: the gold's own results, already known good
            return Verdict(True)
        for conn, gold_result in zip(suite.connections(), gold_results, strict=True):
            pred_result = run_query(conn, prediction, s.timeout_s, s.max_rows, int(s.max_result_mb * 2**20))
            verdict = _compare(gold_result, pred_result, order_matters)
            if not verdict.match:
                return verdict
        return Verdict(True)

    def cache_path(self, context: str, gold: str) -> str | None:
        s = self.settings
        if not s.suite_cache_dir:
            return None
        text = f"{_FINGERPRINT}\x00{s.seed}\x00{s.suite_size}\x00{s.timeout_s}\x00{s.max_rows}\x00{context}\x00{gold}"
        name = hashlib.sha256(text.encode()).hexdigest()
        return os.path.join(s.suite_cache_dir, name[:2], name + ".marshal")

    def _load_or_build_suite(self, context: str, gold: str) -> tuple[Suite, list[QueryResult]]:
        """The suite of (context, gold) from the on-disk cache, or generated (and then cached).

        Suites are deterministic given (seed, context, gold, generator), and every prediction
        file of a study is scored against the same golds: generating them once saves most of
        the suite's cost. Entries are marshal data (plain values, never code), written atomically.
        """
        s = self.settings
        path = self.cache_path(context, gold)
        if path and os.path.exists(path):
            try:
                with open(path, "rb") as handle:
                    error, images, golds = marshal.load(handle)
                results = [QueryResult(None if rows is None else list(rows), e, k) for rows, e, k in golds]
                return Suite([], error, images=list(images)), results
            except (OSError, EOFError, ValueError, TypeError):
                pass  # unreadable entry: regenerate and overwrite
        suite, results = build_suite(context, gold, s.suite_size, s.seed, s.timeout_s, s.max_rows)
        if path:
            entry = (
                suite.error,
                suite.serialized(),
                [(None if r.rows is None else list(r.rows), r.error, r.kind) for r in results],
            )
            with contextlib.suppress(OSError, ValueError):  # an unwritable cache only costs speed
                _atomic_marshal(path, entry)
        return suite, results

    # --- one example --------------------------------------------------------------------
    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """The per-example output row; an unexpected failure on one row nulls that row's
        verdicts (reason in ``error``) instead of stopping the whole evaluation."""
        try:
            return self._score_row(row)
        except Exception as exc:
            out: dict[str, Any] = {"id": row.get("id"), "db_id": row.get("db_id")}
            out.update(dict.fromkeys(_VERDICTS))
            out.update(
                error=f"internal error scoring this row: {type(exc).__name__}: {exc}", failure_kind="error"
            )
            return out

    def _score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """The per-example output row for one predictions row."""
        prediction = row.get("prediction")
        gold = row.get("gold")
        out: dict[str, Any] = {"id": row.get("id"), "db_id": row.get("db_id")}
        errors: list[str] = []
        if not isinstance(gold, str) or not gold.strip():
            out.update(dict.fromkeys(_VERDICTS))
            out.update(error="gold is empty or not a string", failure_kind="gold_error")
            return out
        if not isinstance(prediction, str):
            errors.append("prediction is not a string")
            prediction = ""
        out["exact_match"] = exact_match(prediction, gold)
        out["exact_match_normalized"] = exact_match_normalized(prediction, gold)
        comp, mismatched, comp_error = (
            component_match(prediction, gold, row.get("context"), self.settings.component_ignore_values)
            if self.settings.components
            else (None, [], None)
        )
        out["component_match"] = comp
        out["component_mismatch"] = mismatched
        if comp_error:
            errors.append(comp_error)
        pred_sql, gold_sql, order_matters = prepare_pair(prediction, gold, self.settings.keep_distinct)
        real = self.execution(pred_sql, gold_sql, order_matters, row.get("db_id"))
        suite = self.suite(pred_sql, gold_sql, order_matters, row.get("context"))
        out["execution_match"] = real.match
        out["suite_match"] = suite.match
        out["failure_kind"] = real.kind
        out["suite_failure_kind"] = suite.kind
        for label, verdict in (("execution", real), ("suite", suite)):
            if verdict.error and (verdict.match is None or verdict.kind != "wrong_result"):
                errors.append(f"{label}: {verdict.error}")
        out["error"] = "; ".join(errors) or None
        return out


_VERDICTS = ("exact_match", "exact_match_normalized", "execution_match", "suite_match", "component_match")


def db_id_problem(db_id: str) -> str | None:
    """Why ``db_id`` cannot name a database folder inside ``db_dir`` (None when it can): it must be
    one plain folder name, never a path that reaches elsewhere."""
    if db_id in (".", "..") or any(c in db_id for c in "/\\\x00") or Path(db_id).is_absolute():
        return f"db_id '{db_id}' is not a database name (one folder name inside db_dir, not a path)"
    return None


def _compare(gold: QueryResult, pred: QueryResult, order_matters: bool) -> Verdict:
    if not pred.ok:
        return Verdict(False, pred.error, pred.kind)
    assert gold.rows is not None
    if results_equal(gold.rows, pred.rows or [], order_matters):
        return Verdict(True)
    return Verdict(False, "result differs from gold", "wrong_result")


def _atomic_marshal(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        marshal.dump(value, handle)
    os.replace(tmp, path)
