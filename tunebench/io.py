"""Small file helpers shared by every stage: JSONL with located errors and atomic writes.

Every stage writes its outputs through :func:`atomic_write` (write to a temporary file in the
same folder, fsync, rename), so an interrupted run never leaves a half-written file that a
later stage would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tunebench.errors import TunebenchError, located


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing file or bad JSON is a located :class:`TunebenchError`."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise located(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None


def read_text(path: str | os.PathLike[str]) -> str:
    """Read UTF-8 text (a leading byte-order mark, as Windows editors write, is dropped); missing
    files and non-UTF-8 bytes become one-line errors."""
    p = Path(path)
    if p.is_dir():
        raise TunebenchError(f"{p}: a folder, not a file")
    if not p.is_file():
        raise TunebenchError(f"{p}: file not found")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise located(p, "not valid UTF-8", line=line) from None


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines, atomically; returns the number of rows written."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSONL text, split on ``\\n`` only.

    ``str.splitlines`` also splits on U+2028, U+0085 and other separators that JSON allows raw
    inside a string, so it would cut a valid row in two.
    """
    return text.split("\n")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line; errors name the file and line."""
    text = read_text(path)
    for number, line in enumerate(jsonl_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise located(path, f"invalid JSON ({exc.msg})", line=number) from None
        if not isinstance(row, dict):
            raise located(path, "expected a JSON object", line=number)
        yield row


def read_jsonl(
    path: str | os.PathLike[str], required: Iterable[str] = (), allow_empty: bool = False
) -> list[dict[str, Any]]:
    """Read a JSONL file, checking that every row has the ``required`` fields."""
    required = tuple(required)
    rows = []
    for number, row in enumerate(iter_jsonl(path), start=1):
        for field in required:
            if field not in row:
                raise located(path, "missing required field", line=number, field=field)
        rows.append(row)
    if not rows and not allow_empty:
        raise TunebenchError(f"{path}: file is empty")
    return rows


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one row and flush it to disk (for logs that must survive a crash)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
