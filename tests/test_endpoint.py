"""The endpoint predictions backend against the local OpenAI emulator (real SDK, real HTTP)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.openai_emulator import Emulator
from tunebench.config import TaskConfig
from tunebench.errors import TunebenchError
from tunebench.evaluation import evaluate
from tunebench.inference.endpoint import partial_path, predict_endpoint
from tunebench.io import read_jsonl
from tunebench.tasks import get_task
from tunebench.tasks.base import Example, Task


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    emulator = Emulator().start()
    monkeypatch.setenv("TB_TEST_KEY", emulator.api_key)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def viggo() -> tuple[Task, list[Example]]:
    task = get_task(TaskConfig(name="viggo", max_eval_examples=10))
    return task, task.splits()["test"]


def run_predict(emu: Emulator, viggo: tuple[Task, list[Example]], out: Path, **kw: object) -> dict:
    task, examples = viggo
    options = {"api": "chat", "max_retries": 2, "max_concurrency": 3, "api_key_env": "TB_TEST_KEY", **kw}
    return predict_endpoint(examples, task=task, base_url=emu.base_url, model="m", out_path=out, **options)


def test_chat_predictions_rows_and_scores(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]
) -> None:
    examples = viggo[1]
    emu.answers = {ex.fields["sentence"]: ex.completion for ex in examples[:7]}
    out = tmp_path / "pred.jsonl"
    info = run_predict(emu, viggo, out)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [ex.id for ex in examples]
    row = rows[0]
    assert set(row) >= {
        "id",
        "prompt",
        "prediction",
        "gold",
        "sentence",
        "raw",
        "prompt_tokens",
        "completion_tokens",
    }
    assert row["prediction"] == examples[0].completion and row["finish_reason"] == "stop"
    assert info["n"] == 10 and info["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert not partial_path(out).exists()
    assert evaluate("viggo", out, tmp_path / "eval", {})["exact_match"] == pytest.approx(0.7)


def test_completions_api_stops_at_newline(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]
) -> None:
    examples = viggo[1]
    emu.answers = {examples[0].prompt: "inform(name[X])"}
    out = tmp_path / "pred.jsonl"
    run_predict(emu, viggo, out, api="completions")
    first = read_jsonl(out)[0]
    assert first["raw"] == "inform(name[X])" and first["prediction"] == "inform(name[X])"


def test_429_retry_after_is_honoured(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]
) -> None:
    emu.fail("POST /v1/chat/completions", 429, times=1, retry_after="1")
    out = tmp_path / "pred.jsonl"
    run_predict(emu, viggo, out, max_concurrency=1)
    stamps = emu.times("POST", "/v1/chat/completions")
    assert len(stamps) == 11  # one refused + ten answered
    assert stamps[1] - stamps[0] >= 0.95  # waited as told, not the SDK's shorter backoff
    assert len(read_jsonl(out)) == 10


def test_500s_are_retried_then_succeed(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]
) -> None:
    emu.fail("POST /v1/chat/completions", 500, times=2)
    out = tmp_path / "pred.jsonl"
    run_predict(emu, viggo, out, max_concurrency=1, max_retries=2)
    assert emu.count("POST", "/v1/chat/completions") == 12 and len(read_jsonl(out)) == 10


def test_persistent_500_stops_bounded_then_resumes(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]
) -> None:
    out = tmp_path / "pred.jsonl"
    # four answers, then the server breaks for longer than the retries last
    first = run_predict(emu, (viggo[0], viggo[1][:4]), out, max_concurrency=1)
    assert first["n"] == 4
    emu.fail("POST /v1/chat/completions", 500, times=100)
    start = time.monotonic()
    with pytest.raises(TunebenchError) as info:
        run_predict(emu, viggo, out, max_concurrency=1, max_retries=1)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "HTTP 500" in message and "4 prediction(s) kept" in message and "\n" not in message
    assert len(read_jsonl(out)) == 4  # the earlier rows are intact
    emu.faults.clear()
    calls = emu.count("POST", "/v1/chat/completions")
    run_predict(emu, viggo, out, max_concurrency=2)
    assert emu.count("POST", "/v1/chat/completions") - calls == 6  # only the missing ones
    assert len(read_jsonl(out)) == 10


def test_401_stops_then_a_rerun_completes(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]
) -> None:
    out = tmp_path / "pred.jsonl"
    emu.fail("POST /v1/chat/completions", 401, times=1)  # first request: bad key
    with pytest.raises(TunebenchError, match=r"rejected the API key from \$TB_TEST_KEY"):
        run_predict(emu, viggo, out, max_concurrency=1)
    assert not out.exists()
    run_predict(emu, viggo, out, max_concurrency=1)
    assert len(read_jsonl(out)) == 10


def test_unreachable_endpoint_is_one_line(tmp_path: Path, viggo: tuple[Task, list[Example]]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    task, examples = viggo
    start = time.monotonic()
    with pytest.raises(TunebenchError, match=r"cannot reach http://127\.0\.0\.1") as info:
        predict_endpoint(
            examples, task=task, base_url=f"http://127.0.0.1:{port}/v1", model="m",
            out_path=tmp_path / "p.jsonl", max_retries=1, api_key_env="UNSET_KEY_VAR",
        )  # fmt: skip
    assert "\n" not in str(info.value) and time.monotonic() - start < 10


def test_bad_key_never_written_or_shown(
    tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = "sk-not-the-right-key-987654321"
    monkeypatch.setenv("TB_TEST_KEY", bad)
    with pytest.raises(TunebenchError) as info:
        run_predict(emu, viggo, tmp_path / "pred.jsonl")
    assert bad not in str(info.value)
    monkeypatch.setenv("TB_TEST_KEY", emu.api_key)
    run_predict(emu, viggo, tmp_path / "pred.jsonl")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert bad.encode() not in data and emu.api_key.encode() not in data


def test_missing_key_for_a_remote_endpoint(tmp_path: Path, viggo: tuple[Task, list[Example]]) -> None:
    task, examples = viggo
    with pytest.raises(TunebenchError, match=r"\$NO_SUCH_KEY_VAR is not set"):
        predict_endpoint(
            examples, task=task, base_url="https://api.example.invalid/v1", model="m",
            out_path=tmp_path / "p.jsonl", api_key_env="NO_SUCH_KEY_VAR",
        )  # fmt: skip


def test_concurrency_is_bounded(tmp_path: Path, emu: Emulator, viggo: tuple[Task, list[Example]]) -> None:
    task, examples = viggo
    emu.delay_s = 0.05
    many = examples * 3
    many = [
        Example(id=f"{ex.id}-{i}", prompt=ex.prompt, completion=ex.completion, fields=ex.fields)
        for i, ex in enumerate(many)
    ]
    out = tmp_path / "pred.jsonl"
    predict_endpoint(
        many, task=task, base_url=emu.base_url, model="m", out_path=out,
        api_key_env="TB_TEST_KEY", max_concurrency=4,
    )  # fmt: skip
    assert 2 <= emu.max_in_flight <= 4 and len(read_jsonl(out)) == 30
