"""Execution-guided candidate selection for SQL (self-consistency by execution results).

No real database is needed: for each question we generate ``suite_size`` small SQLite databases
from its CREATE TABLE context with the test-suite generator of
:mod:`tunebench.evaluation.sql.suite`. At inference there is no gold query to harvest literals
from, so the candidates themselves are the literal source: every candidate that parses is
analysed into one schema (so each candidate's filters select rows), restricted to the tables and
columns the context declares (a hallucinated column must not be created and then "work").

Each candidate runs on every database (read-only sandbox, time limit, DISTINCT removed as the
evaluator does). Candidates that fail anywhere are dropped; the rest are grouped by equal results
on all databases (the evaluator's comparison; row order counts when both queries sort), and the
first candidate of the largest group wins. Ties go to the group holding the earliest candidate,
and candidate 0 is the greedy output, so greedy wins every tie. When nothing executes, candidate 0
is kept. Everything is deterministic given (seed, context, candidates).

Time: each query has a limit (``timeout_s``) and a candidate that failed once is not run again,
so one runaway candidate costs one limit. Several runaway samples could still cost several seconds
per example; a per-example budget (``budget_s``) caps that: once spent, the example keeps its
greedy candidate, and the selection info says so.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import sqlglot
from sqlglot.errors import SqlglotError

from tunebench.evaluation.sql.compare import remove_distinct, repair, results_equal
from tunebench.evaluation.sql.sandbox import QueryResult, run_query
from tunebench.evaluation.sql.schema import GoldAnalyzer, Schema, link_same_names, parse_context
from tunebench.evaluation.sql.suite import REDRAWS, Generator, ValuePools

MAX_ROWS = 10_000  # generated tables have at most a few hundred rows even for cross joins
INLINE_BELOW = 16  # rows below which forking workers costs more than it saves


def merged_schema(context: str, candidates: list[str]) -> Schema:
    """The context's schema annotated with the literals and joins of every parseable candidate."""
    schema = parse_context(context)
    declared = {t: set(cols) for t, cols in schema.columns.items()}
    for sql in dict.fromkeys(candidates):
        try:
            tree = sqlglot.parse_one(sql, read="sqlite")
            GoldAnalyzer(schema, tree).run()
        except (SqlglotError, RecursionError, ValueError, KeyError, AttributeError, TypeError):
            continue  # an unparseable candidate contributes no literals (and will fail to run)
    if any(declared.values()):
        # Only what the context declares exists: a candidate reading an invented column must fail.
        for table in list(schema.columns):
            if table not in declared:
                del schema.columns[table]
                del schema.tables[table]
                continue
            for col in list(schema.columns[table]):
                if col not in declared[table]:
                    del schema.columns[table][col]
    for table, cols in schema.columns.items():
        if not cols:
            schema.add_column(schema.tables[table], "id")
    link_same_names(schema)
    return schema


def _rng(seed: int, context: str, candidates: list[str]) -> random.Random:
    text = "\x00".join([str(seed), context, *candidates])
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def _executed(sql: str) -> str:
    """The text the evaluator would execute (repairs applied, DISTINCT removed)."""
    return remove_distinct(repair(sql))


class BudgetSpent(Exception):
    """The example's time budget ran out before every candidate had run everywhere."""


def candidate_results(
    context: str,
    candidates: list[str],
    suite_size: int,
    seed: int,
    timeout_s: float,
    budget_s: float | None = None,
) -> list[list[QueryResult]]:
    """Each candidate's result on each generated database (same order as ``candidates``);
    raises :class:`BudgetSpent` when the queries together need more than ``budget_s``."""
    deadline = None if budget_s is None else time.monotonic() + budget_s

    def run(conn: Any, text: str) -> QueryResult:
        if deadline is None:
            return run_query(conn, text, timeout_s, MAX_ROWS)
        left = deadline - time.monotonic()
        if left <= 0:
            raise BudgetSpent(f"time budget of {budget_s:g} s spent")
        result = run_query(conn, text, min(timeout_s, left), MAX_ROWS)
        if result.kind == "timeout" and left < timeout_s:
            # stopped by the budget, not by its own limit: not evidence against the candidate
            raise BudgetSpent(f"time budget of {budget_s:g} s spent")
        return result

    schema = merged_schema(context, candidates)
    rng = _rng(seed, context, candidates)
    pools = ValuePools(schema, rng)
    texts = [_executed(c) for c in candidates]
    unique = list(dict.fromkeys(texts))
    per_text: dict[str, list[QueryResult]] = {t: [] for t in unique}
    # A candidate that failed once is out of the vote: never run it again (a runaway query
    # would otherwise cost its time limit on every database).
    failed: dict[str, QueryResult] = {}
    for index in range(suite_size):
        for attempt in range(REDRAWS):
            conn = Generator(schema, pools, rng, index + attempt).build()
            try:
                results = [failed.get(t) or run(conn, t) for t in unique]
            finally:
                conn.close()
            failed.update((t, r) for t, r in zip(unique, results, strict=True) if not r.ok)
            # A database on which every candidate returns nothing cannot tell them apart: redraw.
            if any(r.rows for r in results) or attempt == REDRAWS - 1:
                break
        for text, result in zip(unique, results, strict=True):
            per_text[text].append(result)
    return [per_text[t] for t in texts]


def _same(a: list[QueryResult], b: list[QueryResult], order_matters: bool) -> bool:
    return all(results_equal(x.rows or [], y.rows or [], order_matters) for x, y in zip(a, b, strict=True))


def vote(candidates: list[str], results: list[list[QueryResult]]) -> dict[str, Any]:
    """Group executable candidates by equal results; the chosen index and the group sizes."""
    groups: list[list[int]] = []
    for i, res in enumerate(results):
        if not candidates[i].strip() or not all(r.ok for r in res):
            continue
        ordered_i = "order by" in candidates[i].lower()
        for group in groups:
            j = group[0]
            if _same(results[j], res, ordered_i and "order by" in candidates[j].lower()):
                group.append(i)
                break
        else:
            groups.append([i])
    executable = sum(len(g) for g in groups)
    # groups are created in candidate order: max() keeps the earliest of equally large groups
    best = max(groups, key=len) if groups else [0]
    return {
        "chosen": best[0],
        "groups": [len(g) for g in groups],
        "executable": executable,
    }


def select_row(
    row: dict[str, Any],
    suite_size: int = 8,
    seed: int = 0,
    timeout_s: float = 1.0,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """One predictions row with ``prediction`` set to the voted candidate and ``selection`` added."""
    out = dict(row)
    candidates = [c if isinstance(c, str) else "" for c in (row.get("candidates") or [])]
    if not candidates:
        candidates = [str(row.get("prediction") or "")]
    context = row.get("context")
    if not isinstance(context, str) or not context.strip():
        info: dict[str, Any] = {"chosen": 0, "groups": [], "executable": 0, "error": "no context"}
    else:
        try:
            results = candidate_results(context, candidates, suite_size, seed, timeout_s, budget_s)
            info = vote(candidates, results)
        except BudgetSpent as exc:  # runaway samples: the greedy output stands
            info = {"chosen": 0, "groups": [], "executable": 0, "error": str(exc), "budget_spent": True}
        except Exception as exc:  # one odd context must not stop a whole predictions file
            # the context cannot be turned into databases: keep the greedy output, say why
            info = {"chosen": 0, "groups": [], "executable": 0, "error": f"{type(exc).__name__}: {exc}"[:200]}
    out["prediction"] = candidates[info["chosen"]]
    if row.get("candidates_raw") and len(row["candidates_raw"]) == len(candidates):
        out["raw"] = row["candidates_raw"][info["chosen"]]
    out["selection"] = info
    return out


def _select_chunk(
    args: tuple[list[dict[str, Any]], int, int, float, float | None],
) -> list[dict[str, Any]]:
    rows, suite_size, seed, timeout_s, budget_s = args
    return [select_row(r, suite_size, seed, timeout_s, budget_s) for r in rows]


def select_by_execution(
    rows: list[dict[str, Any]],
    suite_size: int = 8,
    seed: int = 0,
    timeout_s: float = 1.0,
    workers: int | None = None,
    budget_s: float | None = None,
) -> list[dict[str, Any]]:
    """Apply :func:`select_row` to every row (in ``workers`` processes); input order is kept."""
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or len(rows) < INLINE_BELOW:
        return _select_chunk((rows, suite_size, seed, timeout_s, budget_s))
    size = max(1, len(rows) // (workers * 4))
    chunks = [(rows[k : k + size], suite_size, seed, timeout_s, budget_s) for k in range(0, len(rows), size)]
    methods = multiprocessing.get_all_start_methods()
    # fork, as the SQL evaluator: works from any script (spawn needs a __main__ guard); the
    # children only touch sqlite and sqlglot, never the parent's CUDA state or torch threads
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [row for chunk in pool.map(_select_chunk, chunks) for row in chunk]
