"""Generated test-suite databases: small random SQLite databases shaped by the gold query.

A prediction that matches the gold on one real database can still be wrong (the data just
happens to hide the difference). Following the idea of test-suite accuracy (Zhong et al., 2020),
we build ``K`` small databases per example from the CREATE TABLE context and the gold query and
call the prediction right only if it agrees with the gold on all of them.

Values are drawn so that the gold's conditions are exercised both ways:

* each literal of the gold is used as is and with neighbours (numbers ±1, strings altered), and
  LIKE patterns are filled in (``'%computer%'`` -> ``'xcomputery'``) next to non-matching text;
* columns compared with each other (joins, ``IN (SELECT ...)``) and same-named key columns draw
  from one shared pool, so joins match; a key column named after its table is kept unique,
  like the primary key it almost certainly is, and the other columns of its group mostly
  reference existing key values;
* small pools give duplicates (GROUP BY / COUNT / DISTINCT differences show), some databases
  have NULLs, table sizes vary from 1 to ~15 rows (LIMIT changes show), and sorted columns draw
  from wider pools (fewer ties, so ORDER BY ... LIMIT 1 has one right answer).

Everything derives from one ``random.Random`` seeded from (seed, context, gold), so a suite is
reproducible. A database on which the gold returns nothing is re-drawn a few times.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import string
from dataclasses import dataclass
from typing import Any

from sqlglot.errors import SqlglotError

from tunebench.evaluation.sql.sandbox import QueryResult, harden, run_query
from tunebench.evaluation.sql.schema import ColumnInfo, ColumnKey, Schema, analyze

REDRAWS = 4  # attempts per database to get a non-empty gold result


@dataclass
class Suite:
    """K hardened in-memory databases, or the reason none could be built.

    A suite read from the cache holds serialized ``images`` instead; they are opened on first
    use (a prediction equal to the gold never needs them).
    """

    dbs: list[sqlite3.Connection]
    error: str | None = None
    images: list[bytes] | None = None

    def connections(self) -> list[sqlite3.Connection]:
        if self.images is not None:
            for image in self.images:
                conn = sqlite3.connect(":memory:", check_same_thread=False)
                conn.deserialize(image)
                self.dbs.append(harden(conn))
            self.images = None
        return self.dbs

    def serialized(self) -> list[bytes]:
        """The databases as SQLite images (serializing reads pages the authorizer would deny)."""
        images = []
        for conn in self.dbs:
            conn.set_authorizer(None)
            try:
                images.append(conn.serialize())
            finally:
                harden(conn)
        return images

    def close(self) -> None:
        for conn in self.dbs:
            conn.close()
        self.dbs.clear()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _alter_text(text: str, rng: random.Random) -> str:
    """A near miss of ``text``: one character changed, or a suffix added."""
    if text and rng.random() < 0.5:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice("xyz") + text[i + 1 :]
    return text + rng.choice(["x", " 2", "a"])


def _fill_like(pattern: str, rng: random.Random) -> list[str]:
    """Strings that match a LIKE pattern (wildcards filled) plus the bare pattern text."""
    filled = []
    for filler in ("", "ab"):
        out = []
        for ch in pattern:
            if ch == "%":
                out.append(filler or "")
            elif ch == "_":
                out.append(rng.choice(string.ascii_lowercase))
            else:
                out.append(ch)
        filled.append("".join(out))
    core = pattern.replace("%", "").replace("_", "")
    return [*filled, "q" + core + "r", core.upper(), _alter_text(core, rng)]


class ValuePools:
    """Candidate values per column group (literal-derived and random), fixed for one suite."""

    def __init__(self, schema: Schema, rng: random.Random) -> None:
        self.schema = schema
        self.rng = rng
        self.groups = schema.groups()
        self.group_of: dict[ColumnKey, ColumnKey] = {m: root for root, ms in self.groups.items() for m in ms}
        self.numeric = {root: self._group_numeric(ms) for root, ms in self.groups.items()}
        self.literal_pool = {root: self._literal_values(root, ms) for root, ms in self.groups.items()}

    def _group_numeric(self, members: list[ColumnKey]) -> bool:
        infos = [self.schema.info(m) for m in members]
        votes = sum(i.numeric_votes - i.text_votes for i in infos)
        if votes:
            return votes > 0
        return any(i.numeric for i in infos)

    def _literal_values(self, root: ColumnKey, members: list[ColumnKey]) -> list[Any]:
        values: list[Any] = []
        numeric = self.numeric[root]
        for member in members:
            info = self.schema.info(member)
            for lit in info.literals:
                if numeric and isinstance(lit, int | float):
                    values += [lit, lit - 1, lit + 1]
                elif numeric:
                    values.append(lit)
                else:
                    text = str(lit)
                    values += [text, _alter_text(text, self.rng)]
            for pattern in info.like_patterns:
                values += _fill_like(pattern, self.rng)
        return values

    def fresh_values(self, root: ColumnKey, count: int, taken: list[Any]) -> list[Any]:
        """``count`` values of the group's type that are not in ``taken`` (beyond its range)."""
        if self.numeric[root]:
            start = int(max((v for v in taken if isinstance(v, int | float)), default=0)) + 1
            return list(range(start, start + count))
        name = root[1][:4] or "v"
        used = set(taken)
        return [v for v in (f"{name}_{k}" for k in range(count + len(used) + 1)) if v not in used][:count]

    def random_pool(self, root: ColumnKey, size: int) -> list[Any]:
        """``size`` random values for a group, in the range of its literals when it has some."""
        rng = self.rng
        if self.numeric[root]:
            nums = [v for v in self.literal_pool[root] if isinstance(v, int | float)]
            low = int(min(nums)) - 3 if nums else 1
            high = int(max(nums)) + 3 if nums else max(size, 3)
            is_real = any(self.schema.info(m).is_real for m in self.groups[root])
            pool = [rng.randint(low, high) for _ in range(size)]
            return [v + rng.choice((0, 0.5)) for v in pool] if is_real else pool
        name = root[1][:4] or "v"
        return [f"{name}{rng.randint(1, max(size, 2))}" for _ in range(size)]


def _table_sizes(schema: Schema, rng: random.Random, db_index: int) -> dict[str, int]:
    """Rows per table: tiny, small and medium databases alternate (LIMIT and GROUP BY differ).

    Aggregating golds get bigger tables: groups of several sizes (HAVING count(*) >= 3 vs > 3)
    and several rows per filter (MIN vs MAX) need more rows to appear.
    """
    upper = ((4, 8, 12, 20) if schema.aggregated else (3, 6, 10, 15))[db_index % 4]
    return {t: rng.randint(max(1, upper // 3), upper) for t in schema.tables}


def _is_key(info: ColumnInfo, table: str) -> bool:
    """A column named like the primary key of its table (``id``, ``singer_id`` in singer)."""
    name = info.name.lower().replace("_", "")
    base = table.lower().replace("_", "")
    return name == "id" or name in {base + "id", base.rstrip("s") + "id", base + "code"}


class Generator:
    """Draws the rows of one database of a suite."""

    def __init__(self, schema: Schema, pools: ValuePools, rng: random.Random, db_index: int) -> None:
        self.schema = schema
        self.pools = pools
        self.rng = rng
        self.sizes = _table_sizes(schema, rng, db_index)
        self.null_rate = (0.0, 0.15)[db_index % 2] if db_index >= 2 else 0.0
        biggest = max(self.sizes.values(), default=1)
        self.shared = {
            root: pools.random_pool(root, max(2, biggest // 2 + rng.randint(0, 2))) for root in pools.groups
        }
        self.key_values: dict[ColumnKey, list[Any]] = {}

    def _column_values(self, table: str, col: str, n: int) -> list[Any]:
        key = (table, col)
        info = self.schema.info(key)
        root = self.pools.group_of[key]
        rng = self.rng
        literal = self.pools.literal_pool[root]
        if _is_key(info, table) and len(self.pools.groups[root]) >= 1:
            distinct = list(dict.fromkeys(literal + self.shared[root] + self.pools.random_pool(root, n * 3)))
            if len(distinct) < n:  # a narrow literal range (say 1..4) cannot key every row
                distinct += self.pools.fresh_values(root, n - len(distinct), distinct)
            rng.shuffle(distinct)
            values = distinct[:n]
            self.key_values[root] = values
            return values
        pool = self.pools.random_pool(root, n * 3) + literal if info.ordered else self.shared[root] + literal
        values = []
        for _ in range(n):
            keys = self.key_values.get(root)
            if rng.random() < self.null_rate and not _is_key(info, table):
                values.append(None)
            elif keys and rng.random() < 0.85:
                # skewed towards the first keys: group sizes range from 1 to many (HAVING count)
                values.append(keys[min(int(rng.expovariate(0.6)), len(keys) - 1)])
            elif literal and rng.random() < 0.4:
                values.append(rng.choice(literal))
            else:
                values.append(rng.choice(pool))
        return values

    def _plant_conjunctions(self, table: str, names: list[str], columns: list[list[Any]]) -> None:
        """Write the satisfying values of each gold AND-chain together into about a third of the
        rows (never all: the filter must still exclude something), so that rows meeting every
        condition at once exist and are several (MIN differs from MAX, COUNT from 1)."""
        n = len(columns[0]) if columns else 0
        if n < 2:
            return
        for conditions in self.schema.conjunctions:
            mine = [
                (i, values)
                for i, col in enumerate(names)
                if (values := conditions.get((table, col)))
                and not _is_key(self.schema.info((table, col)), table)
            ]
            if not mine:
                continue
            count = min(n - 1, max(2, round(n * 0.3))) if n >= 3 else 1
            for row in self.rng.sample(range(n), count):
                for i, values in mine:
                    columns[i][row] = self.rng.choice(values)

    def build(self) -> sqlite3.Connection:
        """Create the tables with inferred types and fill them; returns an open connection."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        order = sorted(
            self.schema.columns.items(),
            key=lambda item: -sum(_is_key(i, item[0]) for i in item[1].values()),
        )
        for table, cols in order:
            names = list(cols)
            decls = []
            for col in names:
                root = self.pools.group_of.get((table, col))
                numeric = self.pools.numeric.get(root, False) if root else False
                decls.append(f"{_quote(cols[col].name)} {'NUMERIC' if numeric else 'TEXT'}")
            tname = _quote(self.schema.tables[table])
            conn.execute(f"CREATE TABLE {tname} ({', '.join(decls)})")
            n = self.sizes[table]
            columns = [self._column_values(table, col, n) for col in names]
            self._plant_conjunctions(table, names, columns)
            rows = list(zip(*columns, strict=True))
            marks = ", ".join("?" for _ in names)
            conn.executemany(f"INSERT INTO {tname} VALUES ({marks})", rows)
        conn.commit()
        return harden(conn)


def _rng_for(seed: int, context: str, gold: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{context}\x00{gold}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def build_suite(
    context: str | None, gold: str, size: int, seed: int, timeout_s: float, max_rows: int
) -> tuple[Suite, list[QueryResult]]:
    """Generate ``size`` databases for (context, gold) and the gold's result on each.

    Returns an empty suite with ``error`` set when the gold cannot be parsed or fails on the
    generated data (its verdicts are then null, never guessed).
    """
    try:
        schema = analyze(context, gold)
    except (SqlglotError, RecursionError, ValueError) as exc:
        return Suite([], f"gold not analysable for test suite: {type(exc).__name__}"), []
    rng = _rng_for(seed, context or "", gold)
    pools = ValuePools(schema, rng)
    dbs: list[sqlite3.Connection] = []
    results: list[QueryResult] = []
    for index in range(size):
        for attempt in range(REDRAWS):
            conn = Generator(schema, pools, rng, index + attempt).build()
            result = run_query(conn, gold, timeout_s, max_rows)
            if not result.ok:
                for db in dbs:
                    db.close()
                conn.close()
                return Suite([], f"gold fails on generated database: {result.error}"), []
            if result.rows or attempt == REDRAWS - 1:
                break
            conn.close()
        dbs.append(conn)
        results.append(result)
    return Suite(dbs), results
