"""Component (exact-set) match in the spirit of Spider's exact-set-match metric, on sqlglot.

Both queries are parsed and each clause is reduced to a canonical form; the prediction matches
when every clause matches:

* ``select``: the set of projected expressions (plus the DISTINCT flag);
* ``from``: the set of tables read (join order and aliases do not matter);
* ``where`` / ``having``: the set of AND-ed conditions (order does not matter);
* ``group_by``: the set of grouping expressions; ``order_by``: the list of (expression, direction);
* ``limit``: present or not (its value too when values are compared);
* ``set_op``: UNION / INTERSECT / EXCEPT and, recursively, the components of the right side.

Table aliases are replaced by table names and unqualified columns are qualified when the
query's tables (and the CREATE TABLE context) make the table unambiguous; identifiers are
case-folded. With ``ignore_values`` (the default, as Spider) every literal becomes ``value``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from tunebench.evaluation.sql.schema import Schema, parse_context

COMPONENTS = ("select", "from", "where", "group_by", "having", "order_by", "limit", "set_op")
_SET_OPS = {exp.Union: "union", exp.Intersect: "intersect", exp.Except: "except"}


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    node = node.this if isinstance(node, exp.Where | exp.Having) else node
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


class Canonicalizer:
    """Rewrites a parsed query in place into a canonical form (aliases, case, values)."""

    def __init__(self, schema: Schema, ignore_values: bool) -> None:
        self.schema = schema
        self.ignore_values = ignore_values

    def _tables_of(self, select: exp.Expression) -> dict[str, str]:
        out: dict[str, str] = {}
        sources = [select.args.get("from_"), *list(select.args.get("joins") or [])]
        for source in sources:
            if source is not None and isinstance(source.this, exp.Table):
                out[source.this.alias_or_name.lower()] = source.this.name.lower()
        return out

    def _qualify(self, column: exp.Column, scope: dict[str, str]) -> None:
        qualifier = column.table.lower()
        name = column.name.lower()
        if qualifier:
            table = scope.get(qualifier, qualifier)
        else:
            tables = list(dict.fromkeys(scope.values()))
            owners = [t for t in tables if name in self.schema.columns.get(t, {})]
            table = tables[0] if len(tables) == 1 else (owners[0] if len(owners) == 1 else "")
        column.set("this", exp.to_identifier(name))
        column.set("table", exp.to_identifier(table) if table else None)

    def _known(self, name: str) -> bool:
        return any(name.lower() in cols for cols in self.schema.columns.values())

    def run(self, tree: exp.Expression) -> exp.Expression:
        # SQLite reads an unknown double-quoted name as a string ("France"): make it one first.
        for column in list(tree.find_all(exp.Column)):
            quoted = isinstance(column.this, exp.Identifier) and column.this.quoted
            if quoted and not column.table and not self._known(column.name):
                column.replace(exp.Literal.string(column.name))
        for select in list(tree.find_all(exp.Select)):
            scope = self._tables_of(select)
            for column in select.find_all(exp.Column):
                if column.find_ancestor(exp.Select) is select:
                    self._qualify(column, scope)
        for table in tree.find_all(exp.Table):
            table.set("alias", None)
            table.set("this", exp.to_identifier(table.name.lower()))
        for alias in list(tree.find_all(exp.TableAlias)):
            if isinstance(alias.parent, exp.Subquery):
                alias.pop()
        if self.ignore_values:
            for literal in list(tree.find_all(exp.Literal)):
                literal.replace(exp.Literal.string("value"))
        return tree


def _sql(node: exp.Expression) -> str:
    return node.sql(dialect="sqlite", normalize=True, identify=False).lower()


def _canonical_text(value: Any) -> str:
    """Text of a component value that does not depend on set iteration order.

    ``repr`` of a frozenset lists its items in hash order, which varies with the process's
    hash seed and insertion history: two equal right-hand sides of a UNION could compare unequal.
    """
    if isinstance(value, frozenset | set):
        return "{" + ", ".join(sorted(_canonical_text(v) for v in value)) + "}"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_canonical_text(v) for v in value) + ")"
    return repr(value)


def components(tree: exp.Expression) -> dict[str, Any]:
    """The canonical components of a (canonicalised) query."""
    set_op = None
    for cls, name in _SET_OPS.items():
        if isinstance(tree, cls):
            right = components(tree.expression)
            set_op = (name, tuple(sorted((k, _canonical_text(v)) for k, v in right.items())))
            tree = tree.this
            break
    if not isinstance(tree, exp.Select):
        return {"select": _sql(tree), "set_op": set_op}
    order = tree.args.get("order")
    limit = tree.args.get("limit")
    return {
        "select": (bool(tree.args.get("distinct")), frozenset(_sql(e) for e in tree.expressions)),
        "from": frozenset(_sql(t) for t in tree.find_all(exp.Table) if t.find_ancestor(exp.Select) is tree),
        "where": frozenset(_sql(c) for c in _conjuncts(tree.args.get("where"))),
        "group_by": frozenset(
            _sql(e) for e in (tree.args.get("group").expressions if tree.args.get("group") else [])
        ),
        "having": frozenset(_sql(c) for c in _conjuncts(tree.args.get("having"))),
        "order_by": tuple(
            (_sql(o.this), bool(o.args.get("desc"))) for o in (order.expressions if order else [])
        ),
        "limit": None if limit is None else _sql(limit),
        "set_op": set_op,
    }


def parse_components(query: str, schema: Schema, ignore_values: bool) -> dict[str, Any]:
    """Parse and canonicalise ``query`` (raises SqlglotError when it does not parse)."""
    tree = sqlglot.parse_one(query, read="sqlite")
    if tree is None:
        raise SqlglotError("empty query")
    return components(Canonicalizer(schema, ignore_values).run(tree))


@lru_cache(maxsize=4096)
def _cached_components(query: str, context: str | None, ignore_values: bool) -> dict[str, Any] | str:
    """Components of ``query`` (the schema is only read), or the parse error's name.

    Cached because the gold of an example is parsed for every prediction scored against it.
    """
    try:
        return parse_components(query, _context_schema(context), ignore_values)
    except Exception as exc:  # model output is arbitrary text: any failure is "does not parse"
        return type(exc).__name__


@lru_cache(maxsize=1024)
def _context_schema(context: str | None) -> Schema:
    return parse_context(context)


def component_match(
    prediction: str, gold: str, context: str | None, ignore_values: bool = True
) -> tuple[bool | None, list[str], str | None]:
    """(verdict, mismatched components, error). Null verdict only when the gold cannot be parsed."""
    context = context if isinstance(context, str) else None
    gold_parts = _cached_components(gold, context, ignore_values)
    if isinstance(gold_parts, str):
        return None, [], f"gold does not parse: {gold_parts}"
    pred_parts = _cached_components(prediction, context, ignore_values)
    if isinstance(pred_parts, str):
        return False, ["parse"], None
    mismatched = [c for c in COMPONENTS if gold_parts.get(c) != pred_parts.get(c)]
    return not mismatched, mismatched, None
