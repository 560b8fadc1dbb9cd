"""Why a text-to-SQL prediction is wrong: one primary category per example, with every difference.

Benchmark categories (the example, not the model, is at fault), checked first:

* ``gold_questionable`` - the gold fails to execute on the real database; or it returns no rows
  (or only NULLs, as an aggregate over no rows does) while the prediction returns some and the two queries differ only in literal values (the gold's
  literal matches nothing in the database, e.g. ``'france'`` where the data says ``'France'``).
* ``schema_differs`` - the prediction fails on the real database for a table or column that the
  CREATE TABLE context declares (the model used the schema it was shown), or the gold reads a
  table or column that the context does not declare (the model could not see it).

Model categories, from clause differences of the two queries parsed and canonicalised by
:mod:`.components` (aliases resolved, identifiers case-folded, ``a = b`` and ``b = a`` alike),
compared three times: as written, with literals replaced by a placeholder, and with columns too.
The primary category is the first that applies, in this order:

* ``set_operation_or_subquery`` - UNION/INTERSECT/EXCEPT differ, or the number of nested SELECTs;
* ``wrong_table_or_join`` - the tables read differ, or the join conditions;
* ``wrong_column`` - a projected expression or a WHERE/HAVING condition differs only in a column;
* ``missing_or_extra_condition`` - WHERE/HAVING conditions differ otherwise (one missing, extra
  or with another operator);
* ``aggregation_or_grouping`` - projected aggregates (COUNT, SUM, AVG, MIN, MAX) or GROUP BY differ;
* ``ordering_or_limit`` - ORDER BY (expression or direction) or LIMIT (its value too) differ;
* ``wrong_literal_or_casing`` - the queries differ only in literal values (``'USA'`` vs ``'usa'``);
* ``unclassified`` - none of the above (the prediction does not parse, or the clauses agree and
  the result still differs, e.g. through DISTINCT).

DISTINCT is not compared: execution accuracy removes it from both queries, as Spider's evaluator does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from tunebench.evaluation.sql.compare import prepare_pair
from tunebench.evaluation.sql.components import Canonicalizer, components
from tunebench.evaluation.sql.sandbox import QueryResult, open_readonly, run_query
from tunebench.evaluation.sql.schema import Schema, parse_context

BENCHMARK_CATEGORIES = ("gold_questionable", "schema_differs")
MODEL_CATEGORIES = (
    "set_operation_or_subquery",
    "wrong_table_or_join",
    "wrong_column",
    "missing_or_extra_condition",
    "aggregation_or_grouping",
    "ordering_or_limit",
    "wrong_literal_or_casing",
)
CATEGORIES = (*BENCHMARK_CATEGORIES, *MODEL_CATEGORIES, "unclassified")
_AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
_SET_OPS = {exp.Union: "union", exp.Intersect: "intersect", exp.Except: "except"}


@dataclass
class Classification:
    """The primary category of one wrong prediction and every difference found."""

    category: str
    differences: list[str] = field(default_factory=list)


# --- database side ---------------------------------------------------------------------------
def database_schema(path: str | Path) -> dict[str, set[str]]:
    """Lower-case table -> lower-case column names of a SQLite file (opened read-only)."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t.lower(): {r[1].lower() for r in conn.execute(f'PRAGMA table_info("{t}")')} for t in tables}


def _run(path: str | Path, sql: str, timeout_s: float) -> QueryResult:
    conn = open_readonly(path)
    try:
        return run_query(conn, sql, timeout_s, 100_000)
    finally:
        conn.close()


# --- query side ------------------------------------------------------------------------------
def _canonical(query: str, schema: Schema, values: bool, columns: bool) -> exp.Expression:
    """The canonical tree of ``query``; literals and/or columns replaced when not kept."""
    tree = sqlglot.parse_one(query, read="sqlite")
    tree = Canonicalizer(schema, ignore_values=not values).run(tree)
    for node in list(tree.find_all(exp.EQ)):
        left, right = node.left, node.right
        if isinstance(left, exp.Column) and isinstance(right, exp.Column) and left.sql() > right.sql():
            node.set("this", right.copy())
            node.set("expression", left.copy())
    if not columns:
        for column in list(tree.find_all(exp.Column)):
            column.replace(exp.column("col"))
    return tree


def _arms(tree: exp.Expression) -> tuple[list[str], list[exp.Expression]]:
    """The set operators of a query, left to right, and its SELECT arms."""
    for cls, name in _SET_OPS.items():
        if isinstance(tree, cls):
            left_ops, left = _arms(tree.this)
            right_ops, right = _arms(tree.expression)
            return [*left_ops, name, *right_ops], [*left, *right]
    return [], [tree]


def _join_conditions(select: exp.Expression) -> frozenset[str]:
    joins = select.args.get("joins") or []
    return frozenset(j.args["on"].sql().lower() for j in joins if j.args.get("on") is not None)


def _aggregates(select: exp.Expression) -> list[str]:
    names = [type(n).__name__ for e in select.expressions for n in e.find_all(*_AGGREGATES)]
    return sorted(names)


def _clauses(arm: exp.Expression) -> dict[str, Any]:
    """Comparable clauses of one SELECT arm (components plus joins, aggregates, nesting)."""
    parts = components(arm)
    if isinstance(parts.get("select"), tuple):
        parts["select"] = parts["select"][1]  # DISTINCT dropped, as execution accuracy does
    parts.pop("set_op", None)
    if isinstance(arm, exp.Select):
        parts["join"] = _join_conditions(arm)
        parts["aggregates"] = _aggregates(arm)
    parts["subqueries"] = sum(1 for s in arm.find_all(exp.Select) if s is not arm)
    # components() lower-cases its text, so literals are compared here with their case kept.
    parts["literals"] = sorted((lit.is_string, lit.this) for lit in arm.find_all(exp.Literal))
    return parts


def query_differences(prediction: str, gold: str, context: str | None) -> list[tuple[str, str]]:
    """(category, difference) pairs between two queries; raises when either does not parse."""
    schema = parse_context(context)
    levels = {}
    for name, values, columns in (("full", True, True), ("values", False, True), ("shape", False, False)):
        gold_ops, gold_arms = _arms(_canonical(gold, schema, values, columns))
        pred_ops, pred_arms = _arms(_canonical(prediction, schema, values, columns))
        levels[name] = (
            gold_ops,
            pred_ops,
            [_clauses(a) for a in gold_arms],
            [_clauses(a) for a in pred_arms],
        )
    gold_ops, pred_ops, _, _ = levels["full"]
    if gold_ops != pred_ops:
        return [("set_operation_or_subquery", f"set operators {gold_ops or 'none'} vs {pred_ops or 'none'}")]
    out: list[tuple[str, str]] = []
    for arm in range(len(levels["full"][2])):
        where = f" (arm {arm + 1})" if len(levels["full"][2]) > 1 else ""
        gold_arm, pred_arm = levels["full"][2][arm], levels["full"][3][arm]
        aggregates_differ = gold_arm.get("aggregates") != pred_arm.get("aggregates")
        for clause in gold_arm.keys() | pred_arm.keys():
            same = {lvl: levels[lvl][2][arm].get(clause) == levels[lvl][3][arm].get(clause) for lvl in levels}
            if same["full"]:
                continue
            category = _clause_category(clause, same)
            if clause == "select" and category != "wrong_literal_or_casing" and aggregates_differ:
                category = "aggregation_or_grouping"  # the projection differs by its aggregates
            out.append((category, f"{clause}{where}"))
    return sorted(out, key=lambda pair: (CATEGORIES.index(pair[0]), pair[1]))


def _clause_category(clause: str, same: dict[str, bool]) -> str:
    """The category of one differing clause, given at which comparison levels it agrees."""
    if clause in ("order_by", "limit"):
        return "ordering_or_limit"  # LIMIT 1 vs LIMIT 2 too, though it is a literal
    if same["values"]:
        return "wrong_literal_or_casing"
    if clause == "subqueries":
        return "set_operation_or_subquery"
    if clause in ("from", "join"):
        return "wrong_table_or_join"
    if clause in ("group_by", "aggregates"):
        return "aggregation_or_grouping"
    if same["shape"] or clause == "select":
        return "wrong_column"
    if clause in ("where", "having"):
        return "missing_or_extra_condition"
    return "unclassified"


def _primary(categories: Sequence[str]) -> str:
    found = set(categories)
    return next((c for c in CATEGORIES if c in found), "unclassified")


# --- benchmark checks ------------------------------------------------------------------------
def _missing_name(error: str | None) -> tuple[str | None, str] | None:
    """(qualifier, name) from SQLite's 'no such column: T1.x' / 'no such table: x'."""
    if not error or "no such" not in error:
        return None
    name = error.rsplit(":", 1)[-1].strip().lower()
    qualifier, _, column = name.rpartition(".")
    return (qualifier or None, column)


def _tables_by_alias(query: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    try:
        tree = sqlglot.parse_one(query, read="sqlite")
    except Exception:  # an unparseable prediction has no aliases to resolve
        return out
    for table in tree.find_all(exp.Table):
        out.setdefault(table.alias_or_name.lower(), set()).add(table.name.lower())
        out.setdefault(table.name.lower(), set()).add(table.name.lower())
    return out


def schema_differences(
    prediction: str, gold: str, context: str | None, real: dict[str, set[str]], pred_error: str | None
) -> list[str]:
    """Ways the context schema misled the model (see the module docstring)."""
    declared = {t: set(cols) for t, cols in parse_context(context).columns.items()}
    out = []
    missing = _missing_name(pred_error)
    if missing and "no such table" in (pred_error or ""):
        table = missing[1]
        if table in declared and table not in real:
            out.append(f"context declares table {table}, the database has none")
    elif missing:
        qualifier, column = missing
        aliases = _tables_by_alias(prediction)
        tables = aliases.get(qualifier, set()) if qualifier else set().union(*aliases.values(), set())
        for table in sorted(tables):
            if column in declared.get(table, set()) and column not in real.get(table, set()):
                out.append(f"context declares column {table}.{column}, the database has none")
    gold_aliases = _tables_by_alias(gold)
    for table in sorted(set().union(*gold_aliases.values(), set())):
        if declared and table not in declared and table in real:
            out.append(f"gold reads table {table}, which the context does not declare")
    return out


# --- one example -----------------------------------------------------------------------------
def classify(
    prediction: str,
    gold: str,
    context: str | None,
    database: str | Path | None = None,
    timeout_s: float = 10.0,
) -> Classification:
    """Classify a prediction already known to be wrong (``database``: the real SQLite file)."""
    pred_sql, gold_sql, _ = prepare_pair(prediction, gold, keep_distinct=False)
    pred_result = gold_result = None
    if database is not None:
        gold_result = _run(database, gold_sql, timeout_s)
        if not gold_result.ok:
            return Classification("gold_questionable", [f"gold fails on the database: {gold_result.error}"])
        pred_result = _run(database, pred_sql, timeout_s)
        schema_notes = schema_differences(
            prediction, gold, context, database_schema(database), pred_result.error
        )
        if schema_notes:
            return Classification("schema_differs", schema_notes)
    try:
        found = query_differences(prediction, gold, context)
    except Exception as exc:  # model output is arbitrary text: any parse failure is unclassified
        return Classification("unclassified", [f"does not parse: {type(exc).__name__}"])
    differences = [f"{category}: {what}" for category, what in found]
    gold_empty = gold_result is not None and _empty(gold_result)
    if gold_empty and pred_result is not None and pred_result.ok and not _empty(pred_result):
        if found and all(c == "wrong_literal_or_casing" for c, _ in found):
            return Classification("gold_questionable", ["gold returns no rows", *differences])
        differences.append("gold returns no rows, the prediction some")
    return Classification(_primary([c for c, _ in found]), differences)


def _empty(result: QueryResult) -> bool:
    """No rows, or only NULLs (an aggregate over no rows, e.g. ``SUM`` of an empty filter)."""
    return not result.rows or all(v is None for row in result.rows for v in row)


def database_of(db_dir: str | Path, db_id: str) -> Path | None:
    """``db_dir/<db_id>/<db_id>.sqlite`` (or the folder's only ``*.sqlite``), None when absent."""
    folder = Path(db_dir) / db_id
    preferred = folder / f"{db_id}.sqlite"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    return found[0] if found else None


# --- a predictions file ----------------------------------------------------------------------
def execution_verdicts(rows: Sequence[dict[str, Any]], db_dir: str | Path) -> dict[Any, bool | None]:
    """id -> real-database execution match (None without a database), as the SQL scorer gives it."""
    from tunebench.evaluation.sql.execution import Evaluator, Settings

    evaluator = Evaluator(Settings(db_dir=str(db_dir), suite_size=0, components=False))
    try:
        return {row["id"]: evaluator.score_row(row)["execution_match"] for row in rows}
    finally:
        evaluator.close()


def analyze(
    rows: Sequence[dict[str, Any]],
    db_dir: str | Path,
    verdicts: dict[Any, bool | None] | None = None,
    examples_per_category: int = 3,
) -> dict[str, Any]:
    """Error analysis of a run's SQL predictions (rows of ``predictions/<split>.jsonl``).

    ``verdicts`` (id -> execution match, e.g. from the run's ``per_example.jsonl``) says which
    rows are wrong; without it they are computed on the real databases. Rows with a null verdict
    (no database) are left out. The result is :func:`~tunebench.evaluation.common.summarize_errors`'s.
    """
    from tunebench.evaluation.common import summarize_errors

    verdicts = verdicts if verdicts is not None else execution_verdicts(rows, db_dir)
    classified = []
    for row in rows:
        if verdicts.get(row["id"]) is not False:
            continue
        database = database_of(db_dir, row["db_id"]) if row.get("db_id") else None
        result = classify(row.get("prediction") or "", row["gold"], row.get("context"), database)
        classified.append({**_brief(row), "category": result.category, "differences": result.differences})
    scored = sum(1 for row in rows if verdicts.get(row["id"]) is not None)
    return summarize_errors(classified, scored, CATEGORIES, BENCHMARK_CATEGORIES, examples_per_category)


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("id", "prediction", "gold", "question", "db_id")}
