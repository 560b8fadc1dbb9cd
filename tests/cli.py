"""The tunebench command as a user runs it: a subprocess, with this checkout first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tunebench(
    *args: str, cwd: Path = REPO, timeout: int = 300, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """`python -m tunebench ARGS` in CWD; ``env`` sets variables, and a None removes one."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, value in env.items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run(
        [sys.executable, "-m", "tunebench", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
