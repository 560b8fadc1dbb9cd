"""Predictions of varied quality made from a gold query, to measure the evaluator without a model.

Each mutation edits the parsed gold (sqlglot) once and returns the new SQL, or ``None`` when it
does not apply. ``EQUIVALENT`` rewrites must be accepted by any sound evaluator; ``WRONG`` ones
usually change the meaning (whether they change the result on a given database is exactly what
execution and test-suite evaluation decide).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from tunebench.evaluation.sql.schema import parse_context

Mutation = Callable[[exp.Expression, str], str | None]


def _render(tree: exp.Expression) -> str:
    return tree.sql(dialect="sqlite")


def _first(tree: exp.Expression, *types: type[exp.Expression]) -> exp.Expression | None:
    return next(iter(tree.find_all(*types)), None)


def rename_aliases(tree: exp.Expression, _ctx: str) -> str | None:
    """Equivalent: every table alias renamed (T1 -> a_1)."""
    aliases = {a.name: f"a_{i}" for i, a in enumerate(tree.find_all(exp.TableAlias)) if a.name}
    if not aliases:
        return None
    lower = {k.lower(): v for k, v in aliases.items()}
    for alias in tree.find_all(exp.TableAlias):
        alias.set("this", exp.to_identifier(aliases[alias.name]))
    for column in tree.find_all(exp.Column):
        if column.table.lower() in lower:
            column.set("table", exp.to_identifier(lower[column.table.lower()]))
    return _render(tree)


def reorder_and(tree: exp.Expression, _ctx: str) -> str | None:
    """Equivalent: the operands of the first AND swapped."""
    node = _first(tree, exp.And)
    if node is None:
        return None
    left, right = node.left.copy(), node.right.copy()
    node.set("this", right)
    node.set("expression", left)
    return _render(tree)


def neq_spelling(_tree: exp.Expression, gold: str) -> str | None:
    """Equivalent: ``!=`` written ``<>`` (or the reverse), text otherwise untouched."""
    if "!=" in gold:
        return gold.replace("!=", "<>")
    if "<>" in gold:
        return gold.replace("<>", "!=")
    return None


def change_literal(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: the first number literal +1, or the first string literal altered."""
    for literal in tree.find_all(exp.Literal):
        if literal.is_number:
            literal.replace(exp.Literal.number(str(float(literal.this) + 1).removesuffix(".0")))
        else:
            literal.replace(exp.Literal.string(literal.this + "x"))
        return _render(tree)
    for column in tree.find_all(exp.Column):
        if column.this.quoted and not column.table:
            column.replace(exp.Literal.string(column.name + "x"))
            return _render(tree)
    return None


def drop_condition(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: one AND-ed WHERE condition dropped (or the whole WHERE)."""
    where = _first(tree, exp.Where)
    if where is None:
        return None
    node = where.this
    if isinstance(node, exp.And):
        node.replace(node.left)
    else:
        where.pop()
    return _render(tree)


def swap_column(tree: exp.Expression, context: str) -> str | None:
    """Wrong: the first selected column replaced by another column of the same table."""
    schema = parse_context(context)
    select = _first(tree, exp.Select)
    if select is None:
        return None
    for column in select.find_all(exp.Column):
        for cols in schema.columns.values():
            names = [c.name for c in cols.values()]
            if column.name.lower() in cols and len(names) > 1:
                other = next(n for n in names if n.lower() != column.name.lower())
                column.set("this", exp.to_identifier(other))
                return _render(tree)
    return None


_FLIP = {exp.GT: exp.GTE, exp.GTE: exp.GT, exp.LT: exp.LTE, exp.LTE: exp.LT}


def flip_inequality(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: ``>`` <-> ``>=``, ``<`` <-> ``<=``."""
    node = _first(tree, *_FLIP)
    if node is None:
        return None
    node.replace(_FLIP[type(node)](this=node.left.copy(), expression=node.right.copy()))
    return _render(tree)


def drop_distinct(_tree: exp.Expression, gold: str) -> str | None:
    """Wrong in general (only with keep_distinct): DISTINCT removed."""
    out = re.sub(r"(?i)\bdistinct\b\s*", "", gold)
    return out if out != gold else None


def flip_order(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: the first ORDER BY key's direction reversed."""
    node = _first(tree, exp.Ordered)
    if node is None:
        return None
    node.set("desc", not node.args.get("desc"))
    return _render(tree)


def change_limit(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: LIMIT n -> LIMIT n+1."""
    node = _first(tree, exp.Limit)
    if node is None or not isinstance(node.expression, exp.Literal):
        return None
    node.set("expression", exp.Literal.number(int(node.expression.this) + 1))
    return _render(tree)


def count_distinct(tree: exp.Expression, context: str) -> str | None:
    """Wrong: COUNT(*) -> COUNT(DISTINCT first column of the context), or the reverse."""
    node = _first(tree, exp.Count)
    if node is None:
        return None
    if isinstance(node.this, exp.Star):
        schema = parse_context(context)
        cols = [c.name for cols in schema.columns.values() for c in cols.values()]
        if not cols:
            return None
        node.set("this", exp.Distinct(expressions=[exp.column(cols[0])]))
    else:
        node.set("this", exp.Star())
    return _render(tree)


def join_column(tree: exp.Expression, context: str) -> str | None:
    """Wrong: one side of the first join condition uses another column of its table."""
    join = _first(tree, exp.Join)
    cond = join.args.get("on") if join is not None else None
    eq = _first(cond, exp.EQ) if cond is not None else None
    if eq is None or not isinstance(eq.left, exp.Column):
        return None
    schema = parse_context(context)
    name = eq.left.name.lower()
    for cols in schema.columns.values():
        if name in cols and len(cols) > 1:
            other = next(c.name for k, c in cols.items() if k != name)
            eq.left.set("this", exp.to_identifier(other))
            return _render(tree)
    return None


_AGG_SWAP = {exp.Max: exp.Min, exp.Min: exp.Max, exp.Sum: exp.Avg, exp.Avg: exp.Sum}


def swap_aggregate(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: MAX <-> MIN, SUM <-> AVG."""
    node = _first(tree, *_AGG_SWAP)
    if node is None:
        return None
    node.replace(_AGG_SWAP[type(node)](this=node.this.copy()))
    return _render(tree)


def and_to_or(tree: exp.Expression, _ctx: str) -> str | None:
    """Wrong: the first AND becomes OR."""
    node = _first(tree, exp.And)
    if node is None:
        return None
    node.replace(exp.Or(this=node.left.copy(), expression=node.right.copy()))
    return _render(tree)


EQUIVALENT: dict[str, Mutation] = {
    "rename_aliases": rename_aliases,
    "reorder_and": reorder_and,
    "neq_spelling": neq_spelling,
}
WRONG: dict[str, Mutation] = {
    "change_literal": change_literal,
    "drop_condition": drop_condition,
    "swap_column": swap_column,
    "flip_inequality": flip_inequality,
    "drop_distinct": drop_distinct,
    "flip_order": flip_order,
    "change_limit": change_limit,
    "count_distinct": count_distinct,
    "join_column": join_column,
    "swap_aggregate": swap_aggregate,
    "and_to_or": and_to_or,
}
_TEXT_LEVEL = {"neq_spelling", "drop_distinct"}


def mutations(gold: str, context: str) -> dict[str, str]:
    """Every applicable mutation of ``gold``: name -> SQL (only those that change the text)."""
    out: dict[str, str] = {}
    try:
        tree = sqlglot.parse_one(gold, read="sqlite")
    except SqlglotError:
        return out
    for name, fn in {**EQUIVALENT, **WRONG}.items():
        try:
            sql = fn(tree.copy(), gold if name in _TEXT_LEVEL else context)
        except (SqlglotError, ValueError, StopIteration):
            continue
        if sql and sql.strip() != gold.strip():
            out[name] = sql
    return out
