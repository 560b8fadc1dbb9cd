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
  virtual-machine steps, so a runaway cross join or recursive CTE stops promptly), and a
  watchdog thread interrupts the connection at the same deadline (for long steps that check
  for interruption without reaching the progress handler);
* ``printf``/``format`` refuse a width or precision over the string length limit: SQLite (3.40)
  repeats ``%.Nc`` one character at a time, a single step that neither the progress handler
  nor an interrupt can stop;
* memory: strings and blobs are capped at ``MAX_TEXT_BYTES``, temporary tables and sorts are
  kept in memory (not on disk) so that :func:`limit_memory`'s heap limit bounds them, and at
  most ``max_rows`` rows and ``max_bytes`` bytes of result are fetched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
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
DEFAULT_MAX_RESULT_BYTES = 128 * 2**20  # a fetched result larger than this is an error
DEFAULT_MAX_MEMORY_BYTES = 512 * 2**20  # SQLite's heap limit per process (limit_memory)
_VALUE_OVERHEAD = 16  # bytes counted per fetched value on top of its text/blob length


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


# A printf conversion: flags, width, precision, length modifier, type (SQLite's syntax).
_PRINTF_SPEC = re.compile(r"%[-+ #!0,]*(\*|\d+)?(?:\.(\*|\d*))?(?:ll|l)?(.?)", re.DOTALL)
_TRUNCATING = set("sqQwz")  # a precision on these cuts the text: any size is harmless


def _as_int(value: Any) -> int:
    """An argument as SQLite's printf reads a ``*`` width or precision (0 when not a number)."""
    try:
        return int(float(value)) if not isinstance(value, bytes) else 0
    except (TypeError, ValueError, OverflowError):
        return 0


def printf_oversized(fmt: Any, args: tuple[Any, ...]) -> bool:
    """Whether a width or precision of ``printf(fmt, *args)`` exceeds the string length limit."""
    if not isinstance(fmt, str):
        return False
    position = 0
    for match in _PRINTF_SPEC.finditer(fmt):
        width, precision, kind = match.groups()
        if kind == "%":
            continue
        sizes = []
        for part in (width, precision):
            if part == "*":
                sizes.append(_as_int(args[position]) if position < len(args) else 0)
                position += 1
            else:
                sizes.append(int(part) if part else 0)
        if abs(sizes[0]) > MAX_TEXT_BYTES or (abs(sizes[1]) > MAX_TEXT_BYTES and kind not in _TRUNCATING):
            return True
        position += kind not in ("n", "")
    return False


_PRINTF_STATE = threading.local()  # this thread's plain helper connection and last refusal


def _safe_printf(*args: Any) -> Any:
    """SQLite's own printf, after refusing sizes that would make it loop past any deadline."""
    if args and printf_oversized(args[0], args[1:]):
        _PRINTF_STATE.refused = f"printf width or precision over {MAX_TEXT_BYTES} bytes"
        raise ValueError(_PRINTF_STATE.refused)
    helper = getattr(_PRINTF_STATE, "conn", None)
    if helper is None:  # a plain connection: the built-in printf, with the same length limit
        helper = _PRINTF_STATE.conn = sqlite3.connect(":memory:")
        helper.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_TEXT_BYTES)
    marks = ", ".join("?" * len(args))
    return helper.execute(f"SELECT printf({marks})", args).fetchone()[0]


def harden(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Install the read-only authorizer, lenient text decoding, size limits, in-memory temporary
    storage and the guarded printf on ``conn``."""
    conn.text_factory = _decode
    conn.execute("PRAGMA temp_store = MEMORY")  # before the authorizer, which denies PRAGMA
    conn.set_authorizer(_authorizer)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_TEXT_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    for name in ("printf", "format"):
        conn.create_function(name, -1, _safe_printf, deterministic=True)
    return conn


def limit_memory(max_bytes: int) -> None:
    """Cap SQLite's heap in this process (every connection together): a query that needs more
    fails with ``MemoryError`` instead of growing the process. Half of it is the soft limit, above
    which SQLite frees cached pages first. SQLite only ever lowers the hard limit: once set, a
    larger value later in the same process has no effect."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"PRAGMA hard_heap_limit = {int(max_bytes)}")
        conn.execute(f"PRAGMA soft_heap_limit = {int(max_bytes) // 2}")
    finally:
        conn.close()


class _Watchdog:
    """One daemon thread that interrupts each guarded connection at its query's deadline."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._deadlines: dict[int, tuple[float, sqlite3.Connection]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, conn: sqlite3.Connection, deadline: float) -> Iterator[None]:
        token = next(self._tokens)
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="sql-watchdog", daemon=True)
                self._thread.start()
            self._deadlines[token] = (deadline, conn)
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:  # under the lock: no interrupt reaches the connection's next query
                self._deadlines.pop(token, None)

    def _watch(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for token, (deadline, conn) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[token]
                        with contextlib.suppress(sqlite3.Error):
                            conn.interrupt()
                nearest = min((d for d, _ in self._deadlines.values()), default=None)
                self._wake.wait(None if nearest is None else nearest - now)


_WATCHDOG = _Watchdog()


def _reset_after_fork() -> None:
    global _WATCHDOG
    _WATCHDOG = _Watchdog()  # the parent's thread does not exist in the child


os.register_at_fork(after_in_child=_reset_after_fork)


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an existing SQLite file read-only and immutable, hardened for untrusted queries."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(p)
    uri = f"file:{quote(str(p))}?mode=ro&immutable=1"
    return harden(sqlite3.connect(uri, uri=True, check_same_thread=False))


def classify_error(exc: BaseException) -> str:
    """Map an SQLite error to a failure kind used in per-example rows and metrics."""
    if isinstance(exc, MemoryError):
        return "too_large"
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


def run_query(
    conn: sqlite3.Connection,
    sql: str,
    timeout_s: float,
    max_rows: int,
    max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> QueryResult:
    """Execute one statement and fetch at most ``max_rows`` rows and about ``max_bytes`` bytes
    (text and blob lengths plus a small overhead per value) within ``timeout_s`` seconds."""
    if not sql.strip():
        return QueryResult(None, "empty query", "empty_prediction")
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, PROGRESS_STEPS)
    cursor = conn.cursor()
    _PRINTF_STATE.refused = None
    try:
        with _WATCHDOG.guard(conn, deadline):
            cursor.execute(sql)
            return _fetch(cursor, max_rows, max_bytes)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
        kind = classify_error(exc)
        if kind == "timeout":
            message = f"timed out after {timeout_s:g} s"
        elif isinstance(exc, MemoryError):
            message = "over the SQLite memory limit"
        elif refused := getattr(_PRINTF_STATE, "refused", None):
            message = refused  # SQLite reports only that a Python function raised
        else:
            message = f"{type(exc).__name__}: {exc}"
        return QueryResult(None, message, kind)
    finally:
        cursor.close()
        conn.set_progress_handler(None, 0)


def _fetch(cursor: sqlite3.Cursor, max_rows: int, max_bytes: int) -> QueryResult:
    """Rows one at a time, counting them and their bytes, stopping at the first cap passed."""
    rows: list[tuple[Any, ...]] = []
    size = 0
    for row in cursor:
        size += sum(len(v) if isinstance(v, str | bytes) else 0 for v in row) + _VALUE_OVERHEAD * len(row)
        if size > max_bytes:
            return QueryResult(None, f"result over {max_bytes / 2**20:g} MB", "too_large")
        if len(rows) == max_rows:
            return QueryResult(None, f"more than {max_rows} rows", "too_many_rows")
        rows.append(row)
    return QueryResult(rows)
