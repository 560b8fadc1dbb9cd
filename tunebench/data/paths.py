"""Where the local data mirror lives.

Users with internet load the study's datasets from the Hugging Face hub; offline users, the
tests and CI point ``TUNEBENCH_DATA_DIR`` (or a config's ``task.data_dir``) at a local mirror
with the layout of ``../shared/data`` (``sql/intersect``, ``sql/spider``, ``viggo``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TUNEBENCH_DATA_DIR"


def local_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The local mirror: ``explicit``, else ``$TUNEBENCH_DATA_DIR``, else ``../shared/data``
    or ``./shared/data`` from the working directory when it exists; None when there is none
    (then the hub is used)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for candidate in (Path("../shared/data"), Path("shared/data")):
        if candidate.is_dir():
            return candidate.resolve()
    return None
