"""What a new user meets following the README: --help text and `init`'s next steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LABELS = {"positive": ["great", "loved it", "works well"], "negative": ["broke", "awful", "refund"]}


def tunebench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "tunebench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write_chat_file(path: Path, copies: int = 5) -> Path:
    """A small sentiment file in OpenAI's chat format (30 rows)."""
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Classify the review's sentiment."},
                {"role": "user", "content": f"{text} #{n}"},
                {"role": "assistant", "content": label},
            ]
        }
        for n in range(copies)
        for label, texts in LABELS.items()
        for text in texts
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_evaluate_help_shows_the_sql_limits_defaults(tmp_path: Path) -> None:
    # rich reads "[default: 10]" in a help string as markup and drops it
    result = tunebench("evaluate", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    for shown in ("(default: 10)", "(default: 128)", "(default: 512)"):
        assert shown in help_text


def test_init_names_the_free_command_and_the_billed_one(tmp_path: Path) -> None:
    data = write_chat_file(tmp_path / "data.jsonl")
    result = tunebench("init", str(data), "--model", "smollm2-135m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tunebench run study.yaml --cells 'base-*' --cells 'lora-*'\n" in result.stderr
    assert "tunebench run study.yaml --yes\n" in result.stderr
    assert "run it with: tunebench run study.yaml\n" not in result.stderr
