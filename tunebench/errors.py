"""User-facing errors.

Anything a user can cause (a bad file, a wrong config key, a missing package) raises
:class:`TunebenchError` with a one-line message that names the file, line/row and field.
The CLI prints it without a traceback and exits with status 2; library callers can catch it.
"""

from __future__ import annotations


class TunebenchError(Exception):
    """An error caused by the user's input or environment, shown as one line."""

    exit_code = 2


def located(path: object, message: str, line: int | None = None, field: str | None = None) -> TunebenchError:
    """Build a :class:`TunebenchError` whose message names where the problem is.

    ``located("a.jsonl", "invalid JSON", line=3)`` -> ``a.jsonl:3: invalid JSON``.
    """
    where = str(path)
    if line is not None:
        where += f":{line}"
    if field is not None:
        message = f"field '{field}': {message}"
    return TunebenchError(f"{where}: {message}")
