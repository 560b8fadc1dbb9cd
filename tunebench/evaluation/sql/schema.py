"""What a gold query tells us about its data: schema from the CREATE TABLE context plus usage.

The sql-create-context ``context`` lists only the columns the question needs and often declares
everything ``VARCHAR``, so the schema is completed from the gold query (tables and columns it
references) and each column's kind (number or text) is inferred from how the gold uses it:
compared with a number, summed or averaged, used in arithmetic. Columns compared with each other
(join conditions, ``x IN (SELECT y ...)``) and same-named key columns are grouped so that the
generator can draw them from one shared pool of values and joins actually match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

NUMERIC_TYPES = re.compile(r"INT|REAL|NUM|FLOAT|DOUBLE|DEC", re.IGNORECASE)
REAL_TYPES = re.compile(r"REAL|FLOAT|DOUBLE|DEC", re.IGNORECASE)
# Names that almost always hold numbers even when the context declares VARCHAR.
NUMERIC_NAMES = re.compile(
    r"(^|_)(age|year|years|price|weight|salary|population|count|num|number|amount|rating|score|height|"
    r"area|budget|capacity|horsepower|mpg|percentage|earnings|sales|attendance|rank|ranking|points|"
    r"hours|days|total|size|length|duration|cost|gnp|lifeexpectancy|surfacearea|cylinders|edispl|accelerate)"
    r"(_|$)",
    re.IGNORECASE,
)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_NUMERIC_AGGS = (exp.Sum, exp.Avg)

ColumnKey = tuple[str, str]  # (lower-case table, lower-case column)


@dataclass
class ColumnInfo:
    """One column: its original spelling, declared type and what the gold says about it."""

    table: str
    name: str
    declared: str = ""
    numeric_votes: int = 0
    text_votes: int = 0
    is_real: bool = False
    literals: list[Any] = field(default_factory=list)
    like_patterns: list[str] = field(default_factory=list)
    ordered: bool = False  # sorted on or used in MAX/MIN: fewer ties wanted

    @property
    def numeric(self) -> bool:
        if self.numeric_votes or self.text_votes:
            return self.numeric_votes > self.text_votes
        if NUMERIC_TYPES.search(self.declared):
            return True
        # sorted on (or MAX/MIN) and named like a quantity: numbers, or text order would differ
        return bool(NUMERIC_NAMES.search(self.name)) or (self.ordered and self.name.lower().endswith("age"))


@dataclass
class Schema:
    """Tables (original names, in order) with their columns and the join groups among columns."""

    tables: dict[str, str] = field(default_factory=dict)  # lower -> original name
    columns: dict[str, dict[str, ColumnInfo]] = field(default_factory=dict)  # table -> col -> info
    parent: dict[ColumnKey, ColumnKey] = field(default_factory=dict)  # union-find over columns
    # Each AND-chain of a WHERE / HAVING / ON clause: the values that satisfy its column-literal
    # conditions, per column. The generator writes them together into some rows, so a filter
    # with several literals (cylinders = 8 AND year = 1974) matches more than one row by chance.
    conjunctions: list[dict[ColumnKey, list[Any]]] = field(default_factory=list)
    aggregated: bool = False  # the gold aggregates or groups: bigger tables wanted

    def add_table(self, name: str) -> str:
        key = name.lower()
        if key not in self.tables:
            self.tables[key] = name
            self.columns[key] = {}
        return key

    def add_column(self, table: str, name: str, declared: str = "") -> ColumnInfo:
        tkey = self.add_table(table)
        cols = self.columns[tkey]
        if name.lower() not in cols:
            cols[name.lower()] = ColumnInfo(table=tkey, name=name, declared=declared)
        return cols[name.lower()]

    def find(self, key: ColumnKey) -> ColumnKey:
        root = self.parent.setdefault(key, key)
        if root != key:
            root = self.parent[key] = self.find(root)
        return root

    def union(self, a: ColumnKey, b: ColumnKey) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb

    def info(self, key: ColumnKey) -> ColumnInfo:
        return self.columns[key[0]][key[1]]

    def groups(self) -> dict[ColumnKey, list[ColumnKey]]:
        out: dict[ColumnKey, list[ColumnKey]] = {}
        for table, cols in self.columns.items():
            for col in cols:
                out.setdefault(self.find((table, col)), []).append((table, col))
        return out


# The sql-create-context form: ``CREATE TABLE name (col TYPE, ...)`` joined by ``;``. Contexts of
# this shape (all of the dataset) are read with a regular expression; anything else goes through
# sqlglot. Both give the same Schema (checked in the tests); the fast path exists because the
# context is read for every example, twice (component match and suite generation).
_SIMPLE_CREATE = re.compile(r"\s*CREATE\s+TABLE\s+([A-Za-z_]\w*)\s*\(([^()]*)\)\s*", re.IGNORECASE)
_SIMPLE_COLUMN = re.compile(r"\s*([A-Za-z_]\w*)\s+([A-Za-z]+)\s*")
Declared = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # ((table, ((column, type), ...)), ...)


@lru_cache(maxsize=64)
def _type_sql(declared: str) -> str:
    """How sqlglot spells a declared column type (``INTEGER`` -> ``INT``), as the slow path does."""
    return exp.DataType.build(declared, dialect="sqlite").sql()


def _simple_declarations(context: str) -> Declared | None:
    """Tables and columns of a context in the plain sql-create-context form, else ``None``."""
    out = []
    for statement in context.split(";"):
        if not statement.strip():
            continue
        match = _SIMPLE_CREATE.fullmatch(statement)
        if match is None:
            return None
        columns = []
        for coldef in match.group(2).split(","):
            col = _SIMPLE_COLUMN.fullmatch(coldef)
            if col is None or col.group(1).upper() in _RESERVED_COLUMN_WORDS:
                return None
            columns.append((col.group(1), _type_sql(col.group(2))))
        out.append((match.group(1), tuple(columns)))
    return tuple(out)


# words that would make a ``name TYPE`` pair mean something else (constraints): left to sqlglot
_RESERVED_COLUMN_WORDS = {"PRIMARY", "FOREIGN", "UNIQUE", "CHECK", "CONSTRAINT"}


def _sqlglot_declarations(context: str) -> Declared:
    try:
        statements = sqlglot.parse(context, read="sqlite")
    except SqlglotError:
        statements = []
    out = []
    for statement in statements:
        if not isinstance(statement, exp.Create) or not isinstance(statement.this, exp.Schema):
            continue
        columns = []
        for coldef in statement.this.expressions:
            if isinstance(coldef, exp.ColumnDef):
                kind = coldef.args.get("kind")
                columns.append((coldef.name, kind.sql() if kind else ""))
        out.append((statement.this.this.name, tuple(columns)))
    return tuple(out)


@lru_cache(maxsize=4096)
def context_declarations(context: str, fast: bool = True) -> Declared:
    """Declared tables and columns of a context (cached: each example's context is read twice)."""
    simple = _simple_declarations(context) if fast else None
    return simple if simple is not None else _sqlglot_declarations(context)


def parse_context(context: str | None) -> Schema:
    """Tables and declared columns of a ``CREATE TABLE ...; CREATE TABLE ...`` context string."""
    schema = Schema()
    if not context:
        return schema
    for table, columns in context_declarations(context):
        schema.add_table(table)
        for name, declared in columns:
            schema.add_column(table, name, declared)
    return schema


def _scope_tables(select: exp.Expression) -> dict[str, str]:
    """alias-or-name (lower) -> table (lower) for the tables a SELECT reads directly."""
    out: dict[str, str] = {}
    sources = [select.args.get("from_") or select.args.get("from"), *list(select.args.get("joins") or [])]
    for source in sources:
        if source is None:
            continue
        table = source.this
        if isinstance(table, exp.Table) and table.name:
            out[table.alias_or_name.lower()] = table.name.lower()
    return out


class GoldAnalyzer:
    """Walks the gold query once and records literals, type hints and join groups in ``schema``."""

    def __init__(self, schema: Schema, tree: exp.Expression) -> None:
        self.schema = schema
        self.tree = tree
        self.scopes: dict[int, dict[str, str]] = {}
        for select in tree.find_all(exp.Select):
            self.scopes[id(select)] = _scope_tables(select)
        for table in tree.find_all(exp.Table):
            if table.name:
                schema.add_table(table.name)

    def _scope_chain(self, node: exp.Expression) -> list[dict[str, str]]:
        chain = []
        select = node.find_ancestor(exp.Select)
        while select is not None:
            chain.append(self.scopes.get(id(select), {}))
            select = select.find_ancestor(exp.Select)
        return chain

    def resolve(self, column: exp.Column) -> ColumnKey | None:
        """The (table, column) a gold column reference reads; adds unknown columns to the schema."""
        name = column.name
        if not name:
            return None
        chain = self._scope_chain(column)
        qualifier = column.table.lower()
        if qualifier:
            for scope in chain:
                if qualifier in scope:
                    return self._ensure(scope[qualifier], name)
            if qualifier in self.schema.tables:
                return self._ensure(qualifier, name)
            return None
        for scope in chain:
            for table in scope.values():
                if name.lower() in self.schema.columns.get(table, {}):
                    return (table, name.lower())
        if column.this.quoted:
            return None  # "France": SQLite reads an unknown double-quoted name as a string
        for scope in chain:
            if scope:
                return self._ensure(next(iter(scope.values())), name)
        return None

    def _ensure(self, table: str, name: str) -> ColumnKey:
        self.schema.add_column(self.schema.tables.get(table, table), name)
        return (table, name.lower())

    def literal(self, node: exp.Expression) -> tuple[bool, Any] | None:
        """(is_number, value) when ``node`` is a constant (including ``"text"`` and ``-3``)."""
        if isinstance(node, exp.Paren):
            return self.literal(node.this)
        if isinstance(node, exp.Neg):
            inner = self.literal(node.this)
            return (True, -inner[1]) if inner and inner[0] else None
        if isinstance(node, exp.Literal):
            if node.is_string:
                return (False, node.this)
            text = node.this
            try:
                return (True, int(text))
            except ValueError:
                try:
                    return (True, float(text))
                except ValueError:
                    return None
        if (
            isinstance(node, exp.Column)
            and not node.table
            and node.this.quoted
            and self.resolve(node) is None
        ):
            return (False, node.name)
        return None

    def target(self, node: exp.Expression) -> ColumnKey | None:
        """The single column a comparison side is about (``x``, ``T1.x``, ``avg(x)``, ``x + 1``)."""
        if isinstance(node, exp.Column):
            return self.resolve(node)
        columns = [c for c in node.find_all(exp.Column) if self.literal(c) is None]
        if len(columns) == 1 and not isinstance(node, exp.Subquery | exp.Select):
            return self.resolve(columns[0])
        return None

    def note_literal(self, key: ColumnKey, value: tuple[bool, Any]) -> None:
        info = self.schema.info(key)
        is_number, val = value
        info.literals.append(val)
        if is_number:
            info.numeric_votes += 1
            info.is_real = info.is_real or isinstance(val, float)
        else:
            info.text_votes += 1

    def pair(self, left: exp.Expression, right: exp.Expression) -> None:
        """Record what a binary comparison between ``left`` and ``right`` implies."""
        lcol, rcol = self.target(left), self.target(right)
        llit, rlit = self.literal(left), self.literal(right)
        if lcol and rlit:
            self.note_literal(lcol, rlit)
        elif rcol and llit:
            self.note_literal(rcol, llit)
        elif lcol and rcol and isinstance(left, exp.Column) and isinstance(right, exp.Column):
            self.schema.union(lcol, rcol)
        elif lcol and isinstance(right, exp.Subquery | exp.Select):
            self._link_subquery(lcol, right)

    def _link_subquery(self, key: ColumnKey, sub: exp.Expression) -> None:
        select = sub.find(exp.Select)
        if select is not None and len(select.expressions) == 1:
            inner = select.expressions[0]
            if isinstance(inner, exp.Column):
                other = self.resolve(inner)
                if other:
                    self.schema.union(key, other)

    def satisfying(self, node: exp.Expression) -> tuple[ColumnKey, list[Any]] | None:
        """(column, values that make ``node`` true) for a column-vs-literal condition."""
        if isinstance(node, exp.Like):
            key, lit = self.target(node.this), self.literal(node.expression)
            if key and lit and not lit[0]:
                return key, [str(lit[1]).replace("%", "").replace("_", "a")]
            return None
        if isinstance(node, exp.Between):
            key = self.target(node.this)
            bounds = [self.literal(node.args.get("low")), self.literal(node.args.get("high"))]
            values = [b[1] for b in bounds if b]
            return (key, values) if key and values else None
        if isinstance(node, exp.In) and node.expressions:
            key = self.target(node.this)
            values = [lit[1] for lit in map(self.literal, node.expressions) if lit]
            return (key, values) if key and values else None
        if not isinstance(node, _COMPARISONS) or isinstance(node, exp.NEQ):
            return None
        key, lit, flipped = self.target(node.left), self.literal(node.right), False
        if not (key and lit):
            key, lit, flipped = self.target(node.right), self.literal(node.left), True
        if not (key and lit):
            return None
        value = lit[1]
        if isinstance(node, exp.EQ) or not lit[0]:
            return key, [value]
        # value + step satisfies "column > value" (and "value < column")
        above = isinstance(node, exp.GT | exp.GTE) != flipped
        step = 1 if above else -1
        return key, [value + step] if isinstance(node, exp.GT | exp.LT) else [value, value + step]

    def _record_conjunctions(self) -> None:
        for clause in self.tree.find_all(exp.Where, exp.Having, exp.Join):
            node = clause.args.get("on") if isinstance(clause, exp.Join) else clause.this
            if node is None:
                continue
            conditions: dict[ColumnKey, list[Any]] = {}
            for conjunct in _and_operands(node):
                found = self.satisfying(conjunct)
                if found:
                    conditions.setdefault(found[0], []).extend(found[1])
            if conditions:
                self.schema.conjunctions.append(conditions)

    def run(self) -> None:
        tree = self.tree
        self.schema.aggregated = any(True for _ in tree.find_all(exp.AggFunc, exp.Group, exp.Having))
        for column in tree.find_all(exp.Column):  # every referenced column must exist
            self.resolve(column)
        for node in tree.find_all(*_COMPARISONS):
            self.pair(node.left, node.right)
        for node in tree.find_all(exp.Like):
            key, lit = self.target(node.this), self.literal(node.expression)
            if key and lit and not lit[0]:
                info = self.schema.info(key)
                info.like_patterns.append(str(lit[1]))
                info.text_votes += 1
        for node in tree.find_all(exp.Between):
            for bound in (node.args.get("low"), node.args.get("high")):
                if bound is not None:
                    self.pair(node.this, bound)
        for node in tree.find_all(exp.In):
            if node.args.get("query") is not None:
                key = self.target(node.this)
                if key:
                    self._link_subquery(key, node.args["query"])
            for item in node.expressions:
                self.pair(node.this, item)
        for node in tree.find_all(*_NUMERIC_AGGS, exp.Add, exp.Sub, exp.Mul, exp.Div):
            for column in node.find_all(exp.Column):
                key = self.resolve(column)
                if key:
                    self.schema.info(key).numeric_votes += 1
        for node in tree.find_all(exp.Ordered, exp.Max, exp.Min):
            for column in node.find_all(exp.Column):
                key = self.resolve(column)
                if key:
                    self.schema.info(key).ordered = True
        self._record_conjunctions()


def _and_operands(node: exp.Expression) -> list[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _and_operands(node.left) + _and_operands(node.right)
    return [node]


def link_same_names(schema: Schema) -> None:
    """Group key-like columns of the same name across tables (``singer_id`` in two tables)."""
    seen: dict[str, ColumnKey] = {}
    for table, cols in schema.columns.items():
        for col in cols:
            if col == "id" or not (col.endswith("id") or col.endswith("code") or col.endswith("_no")):
                continue
            if col in seen:
                schema.union(seen[col], (table, col))
            else:
                seen[col] = (table, col)


def analyze(context: str | None, gold: str) -> Schema:
    """Schema of ``context`` completed and annotated from ``gold`` (raises SqlglotError)."""
    schema = parse_context(context)
    tree = sqlglot.parse_one(gold, read="sqlite")
    GoldAnalyzer(schema, tree).run()
    for table, cols in schema.columns.items():
        if not cols:  # a table the gold only counts rows of still needs a column
            schema.add_column(schema.tables[table], "id")
    link_same_names(schema)
    return schema
