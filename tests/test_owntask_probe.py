"""Hostile inputs to the bring-your-own-task path (``tunebench init``, custom tasks, custom
metrics): each failure is one line naming the file and line, and what OpenAI accepts is accepted
(real files, the real CLI and scorer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import tunebench
from tunebench.errors import TunebenchError
from tunebench.evaluation import custom

ROOT = Path(__file__).resolve().parents[1]


def chat_row(index: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"question {index}"},
            {"role": "assistant", "content": f"answer {index}"},
        ]
    }


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


def test_a_bad_row_names_the_users_line_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Blank lines shift the numbering, so the line must be the data file's, not the split's;
    and once the row is fixed, the same command works (no split files left from the failure)."""
    lines = [json.dumps(chat_row(i)) for i in range(20)]
    lines[2:2] = ["", ""]
    bad = json.dumps({"messages": [{"role": "system", "content": "only a system message"}]})
    lines.insert(15, bad)  # line 16 of the file
    data = write_lines(tmp_path / "data.jsonl", lines)
    failed = tunebench("init", str(data), "--out", "study/s.yaml", cwd=tmp_path)
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: {data}:16: no assistant message")
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "study" / "data.train.jsonl").exists()
    assert not (tmp_path / "study" / "data.test.jsonl").exists()
    lines[15] = json.dumps(chat_row(99))
    write_lines(data, lines)
    fixed = tunebench("init", str(data), "--out", "study/s.yaml", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    kept = (tmp_path / "study" / "data.train.jsonl").read_text().splitlines()
    held = (tmp_path / "study" / "data.test.jsonl").read_text().splitlines()
    assert len(kept) + len(held) == 21 and len(held) == 4


def test_a_row_over_the_token_limit_names_the_users_line(tmp_path: Path) -> None:
    lines = [json.dumps(chat_row(i)) for i in range(20)]
    huge = chat_row(0)
    huge["messages"][0]["content"] = "word " * 70_000
    lines.insert(17, json.dumps(huge))  # line 18
    data = write_lines(tmp_path / "data.jsonl", lines)
    failed = tunebench("init", str(data), "--out", "s.yaml", cwd=tmp_path)
    assert failed.returncode != 0
    assert f"{data}:18: " in failed.stderr and "per example" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "data.train.jsonl").exists()


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """Windows editors write a byte-order mark; the rows are still valid JSONL."""
    lines = [json.dumps(chat_row(i)) for i in range(15)]
    data = write_lines(tmp_path / "data.jsonl", lines, encoding="utf-8-sig")
    assert data.read_bytes().startswith(b"\xef\xbb\xbf")
    made = tunebench("init", str(data), "--out", "s.yaml", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    rows = [
        json.loads(line)
        for name in ("data.train.jsonl", "data.test.jsonl")
        for line in (tmp_path / name).read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(f"question {i}" for i in range(15))


def test_a_metric_file_on_a_windows_drive_is_split_at_the_last_colon(tmp_path: Path) -> None:
    """``C:\\metrics\\mine.py:fn``: the drive's colon is not the module/function separator."""
    with pytest.raises(TunebenchError) as caught:
        custom.resolve_metric(r"C:\metrics\mine.py:fn")
    assert "cannot import module 'C:\\metrics\\mine.py'" in str(caught.value)
    module = tmp_path / "mine.py"
    module.write_text("def fn(prediction, gold):\n    return prediction == gold\n")
    assert custom.resolve_metric(f"{module}:fn")("a", "a") is True


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("raise RuntimeError('boom')", "RuntimeError: boom"),
        ("return float('nan')", "ValueError: returned nan"),
        ("return 'yes'", "TypeError: returned str"),
    ],
)
def test_a_metric_that_fails_on_every_example_is_an_error(tmp_path: Path, body: str, reason: str) -> None:
    """Not a silent null that drops the metric from the table (and from ranking the systems)."""
    module = tmp_path / "probe_metric.py"
    module.write_text(f"def broken(prediction, gold):\n    {body}\n")
    rows = [{"id": "a", "prediction": "x", "gold": "x"}, {"id": "b", "prediction": "y", "gold": "x"}]
    with pytest.raises(TunebenchError) as caught:
        custom.score(rows, {"metrics": ["exact_match", f"{module}:broken"]})
    message = str(caught.value)
    assert "\n" not in message and "failed on every example" in message and reason in message


def test_a_metric_that_fails_on_some_examples_still_scores_the_rest(tmp_path: Path) -> None:
    module = tmp_path / "probe_metric_some.py"
    module.write_text(
        "def picky(prediction, gold):\n    if prediction == 'y':\n        raise ValueError('no')\n    return 1.0\n"
    )
    rows = [{"id": "a", "prediction": "x", "gold": "x"}, {"id": "b", "prediction": "y", "gold": "x"}]
    _, metrics = custom.score(rows, {"metrics": [f"{module}:picky"]})
    assert metrics[f"{module}:picky"] == 1.0 and metrics[f"{module}:picky_n"] == 1


def test_too_few_rows_after_the_split_says_so_in_one_line(tmp_path: Path) -> None:
    """12 rows: 2 go to test and 1 to validation, 9 are left for OpenAI's minimum of 10."""
    data = write_lines(tmp_path / "data.jsonl", [json.dumps(chat_row(i)) for i in range(12)])
    failed = tunebench("init", str(data), "--out", "s.yaml", cwd=tmp_path)
    assert failed.returncode != 0
    assert failed.stderr.strip() == (
        f"error: {data}: 9 training rows once 3 are held out (test and validation); "
        "OpenAI fine-tuning needs at least 10: add rows or pass --test FILE"
    )
    assert not (tmp_path / "data.train.jsonl").exists()


TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
}
PARTS_ROW = {
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": "Hi."},
    ]
}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (TOOL_ROW, "message 2: tool calls are not supported"),
        (PARTS_ROW, "message 1: content as a list of parts is not supported"),
    ],
)
def test_openai_features_tunebench_lacks_are_named_not_misreported(
    tmp_path: Path, row: dict[str, Any], message: str
) -> None:
    """OpenAI takes tool calls and list-of-parts content; tunebench cannot score them yet and
    must say that, not 'content must be a string, got NoneType'."""
    lines = [json.dumps(chat_row(i)) for i in range(15)]
    lines.insert(6, json.dumps(row))  # line 7
    data = write_lines(tmp_path / "data.jsonl", lines)
    failed = tunebench("init", str(data), "--out", "s.yaml", cwd=tmp_path)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {data}:7: {message}"), last
    assert "NoneType" not in last


def test_a_test_file_in_another_format_is_named_as_such(tmp_path: Path) -> None:
    train = write_lines(tmp_path / "train.jsonl", [json.dumps(chat_row(i)) for i in range(15)])
    rows = [json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) for i in range(3)]
    test = write_lines(tmp_path / "test.jsonl", rows)
    failed = tunebench("init", str(train), "--test", str(test), "--out", "s.yaml", cwd=tmp_path)
    assert failed.returncode != 0
    assert failed.stderr.strip() == (
        f"error: {test}: prompt/completion JSONL, but {train} is OpenAI chat JSONL; "
        "give the test rows in the training file's format"
    )


def test_a_single_row_says_what_to_do(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "data.jsonl", [json.dumps(chat_row(0))])
    failed = tunebench("init", str(data), "--out", "s.yaml", cwd=tmp_path)
    assert failed.stderr.strip() == (
        f"error: {data}: 1 row(s); a test split needs at least 2: add rows or pass --test FILE"
    )
