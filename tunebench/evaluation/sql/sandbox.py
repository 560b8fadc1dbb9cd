"""Run untrusted SQL against SQLite without letting it change anything or run forever.

Layers, each sufficient on its own for writes:

* real databases are opened through a ``file:...?mode=ro&immutable=1`` URI: read-only at the
  VFS level, and ``immutable`` also skips locking and journal files, so not even a ``-journal``
  or ``-wal`` file appears beside the source (safe because nothing else writes these files
  while we read them);
* an authorizer allows only reading (SELECT, column reads, recursive CTEs and ordinary
  functions) and denies everything else: ATTACH/DETACH, PRAGMA, INSERT/UPDATE/DELETE,
  CREATE/DROP/ALTER, transactions, ``load_extension`` ...;
* Python's ``execute`` refuses more than one statement, and extension loading stays disabled;
* a progress handler aborts a query after ``timeout_s`` seconds (checked every few thousand
  virtual-machine steps, so a runaway cross join or recursive CTE stops promptly), and at most
  ``max_rows`` rows are fetched.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

# The authorizer action codes that a read-only query needs; everything else is denied.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
_ALLOWED_ACTIONS.add(getattr(sqlite3, "SQLITE_RECURSIVE", 33))
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}

PROGRESS_STEPS = 2000  # VM instructions between two clock checks (about tens of microseconds)
MAX_TEXT_BYTES = 10_000_000  # caps randomblob()/zeroblob()/printf() bombs


@dataclass(frozen=True)
class QueryResult:
    """Rows of a successful query, or ``error`` with a coarse ``kind`` for reports."""

    rows: list[tuple[Any, ...]] | None
    error: str | None = None
    kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.rows is not None


def _authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
) -> int:
    """Allow read-only actions; deny the rest (the statement then fails to prepare)."""
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _decode(raw: bytes) -> str:
    """Text columns with invalid UTF-8 are decoded leniently, as the official evaluator does."""
    return raw.decode(errors="ignore")


def harden(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Install the read-only authorizer, lenient text decoding and size limits on ``conn``."""
    conn.text_factory = _decode
    conn.set_authorizer(_authorizer)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_TEXT_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    return conn


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an existing SQLite file read-only and immutable, hardened for untrusted queries."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(p)
    uri = f"file:{quote(str(p))}?mode=ro&immutable=1"
    return harden(sqlite3.connect(uri, uri=True, check_same_thread=False))


def classify_error(exc: BaseException) -> str:
    """Map an SQLite error to a failure kind used in per-example rows and metrics."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in text:
        return "multiple_statements"
    if "interrupted" in text:
        return "timeout"
    if (
        "not authorized" in text
        or "authorization denied" in text
        or "prohibited" in text
        or "readonly" in text
        or "read-only" in text
    ):
        return "denied"
    if "syntax error" in text or "incomplete input" in text or "unrecognized token" in text:
        return "syntax_error"
    if "no such table" in text:
        return "no_such_table"
    if "no such column" in text or "ambiguous column" in text:
        return "no_such_column"
    if "no such function" in text or "wrong number of arguments" in text:
        return "no_such_function"
    return "runtime_error"


def run_query(conn: sqlite3.Connection, sql: str, timeout_s: float, max_rows: int) -> QueryResult:
    """Execute one statement and fetch at most ``max_rows`` rows within ``timeout_s`` seconds."""
    if not sql.strip():
        return QueryResult(None, "empty query", "empty_prediction")
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, PROGRESS_STEPS)
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
        kind = classify_error(exc)
        message = f"timed out after {timeout_s:g} s" if kind == "timeout" else f"{type(exc).__name__}: {exc}"
        return QueryResult(None, message, kind)
    finally:
        cursor.close()
        conn.set_progress_handler(None, 0)
    if len(rows) > max_rows:
        return QueryResult(None, f"more than {max_rows} rows", "too_many_rows")
    return QueryResult(rows)
