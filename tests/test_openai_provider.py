"""The OpenAI provider driven through the real ``openai`` SDK against the local emulator.

No test calls the real OpenAI API: ``openai.base_url`` points at tests/openai_emulator.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.openai_emulator import Emulator
from tunebench.config import validate_experiment
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl
from tunebench.pipeline import ensure_prepared, evaluate_stage, predict_stage
from tunebench.pipeline import open_run as open_new_run
from tunebench.providers.openai import FAULT_ENV, InjectedFault, state_path, train_openai
from tunebench.tasks.base import load_prepared


def open_run(cfg: Any) -> Any:
    """The run directory, prepared, as `tunebench run` hands it to the provider."""
    run = open_new_run(cfg)
    ensure_prepared(cfg, run)
    return run


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def key(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", emu.api_key)
    monkeypatch.delenv(FAULT_ENV, raising=False)
    return emu.api_key


def make_config(tmp_path: Path, emu: Emulator, **openai: Any) -> Any:
    return validate_experiment(
        {
            "name": "oai",
            "runs_dir": str(tmp_path / "runs"),
            "provider": "openai",
            "task": {"name": "viggo", "max_train_examples": 40, "max_eval_examples": 12},
            "openai": {"base_url": emu.base_url, "poll_interval_s": 0.01, "n_epochs": 2, **openai},
        }
    )


def recording_console() -> Console:
    return Console(record=True, width=200, force_terminal=False)


def test_refuses_without_yes_after_printing_the_estimate(tmp_path: Path, emu: Emulator, key: str) -> None:
    cfg = make_config(tmp_path, emu)
    console = recording_console()
    with pytest.raises(TunebenchError, match=r"--yes or set openai.yes: true"):
        train_openai(cfg, open_run(cfg), yes=False, console=console)
    text = console.export_text()
    assert "ESTIMATED training cost: $" in text and "tiktoken cl100k_base" in text
    assert "epochs: 2" in text
    assert emu.calls == []  # nothing uploaded, nothing created


def test_missing_key_is_an_error_before_any_upload(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = make_config(tmp_path, emu)  # even for a local base_url the key is required
    with pytest.raises(TunebenchError, match=r"\$OPENAI_API_KEY is not set"):
        train_openai(cfg, open_run(cfg), yes=True, console=recording_console())
    assert emu.calls == []


def test_full_lifecycle_then_predict_and_evaluate(tmp_path: Path, emu: Emulator, key: str) -> None:
    cfg = make_config(tmp_path, emu)
    run = open_run(cfg)
    console = recording_console()
    summary = train_openai(cfg, run, yes=True, console=console)

    # uploads, one job, polled through its states
    assert emu.count("POST", "/v1/files") == 2
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 1
    job = next(iter(emu.jobs.values()))
    assert job["status"] == "succeeded" and job["validation_file"] is not None
    assert job["hyperparameters"]["n_epochs"] == 2
    uploaded = [json.loads(line) for line in emu.contents[job["training_file"]].decode().splitlines()]
    assert len(uploaded) == 40 and uploaded[0]["messages"][2]["role"] == "assistant"

    # state, summary, loss curve from the result CSV
    state = read_json(state_path(run))
    assert state["job_id"] == job["id"] and state["status"] == "succeeded"
    assert summary["provider"] == "openai" and summary["job_id"] == job["id"]
    assert summary["fine_tuned_model"] == job["fine_tuned_model"]
    assert summary["trained_tokens"] == emu.trained_tokens == summary["train_tokens"]
    assert summary["wall_time_s"] == 3600.0
    assert summary["cost"]["usd"] == pytest.approx(emu.trained_tokens * 8.0 / 1e6)
    assert [c["step"] for c in summary["checkpoints"]] == [3, 6]
    metrics = read_jsonl(run.metrics_log)
    train = [m for m in metrics if m["split"] == "train"]
    valid = [m for m in metrics if m["split"] == "validation"]
    assert [m["step"] for m in train] == list(range(1, 7))
    assert train[0]["loss"] == 2.0 and train[-1]["epoch"] == 2.0
    assert [m["step"] for m in valid] == [2, 4, 6] and valid[0]["loss"] == 1.1
    assert summary["best_validation_loss"] == valid[-1]["loss"] and summary["best_step"] == 6
    assert run.stage_done("train")
    shown = console.export_text()
    assert (
        shown.index("Fine-tuning job started")
        < shown.index("Step 2/6")
        < shown.index("successfully completed")
    )

    # a rerun after success does nothing remote
    calls = len(emu.calls)
    assert train_openai(cfg, run, yes=True, console=recording_console())["job_id"] == job["id"]
    assert len(emu.calls) == calls

    # predictions with the fine-tuned model (the pipeline's predict stage), then the viggo scorer
    test = load_prepared(run, "test")
    emu.answers = {ex.fields["sentence"]: ex.completion for ex in test[:9]}
    predict_stage(cfg, run, "test")
    assert emu.seen_models == {job["fine_tuned_model"]: 12}
    assert run.manifest()["stages"]["predict:test"]["n"] == 12
    rows = read_jsonl(run.predictions("test"))
    assert [r["id"] for r in rows] == [ex.id for ex in test]
    assert rows[0]["prediction"] == test[0].completion and rows[0]["finish_reason"] == "stop"
    metrics = evaluate_stage(cfg, run, "test")
    assert metrics["exact_match"] == pytest.approx(9 / 12)
    assert read_json(run.eval_dir("test") / "metrics.json")["exact_match"] == pytest.approx(9 / 12)

    # the key is in no file of the run directory
    for path in run.root.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_crash_after_create_resumes_the_same_job(
    tmp_path: Path, emu: Emulator, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, emu)
    run = open_run(cfg)
    monkeypatch.setenv(FAULT_ENV, "after_create")
    with pytest.raises(InjectedFault):
        train_openai(cfg, run, yes=True, console=recording_console())
    assert read_json(state_path(run))["job_id"]
    monkeypatch.delenv(FAULT_ENV)
    summary = train_openai(cfg, run, yes=False, console=recording_console())  # no --yes needed to follow
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 1
    assert emu.count("POST", "/v1/files") == 2
    assert summary["job_id"] == next(iter(emu.jobs))


def test_created_but_unrecorded_job_is_found_not_duplicated(tmp_path: Path, emu: Emulator, key: str) -> None:
    """The create call succeeded but the process died before storing the id."""
    cfg = make_config(tmp_path, emu)
    run = open_run(cfg)
    train_openai(cfg, run, yes=True, console=recording_console())
    state = read_json(state_path(run))
    job_id = state["job_id"]
    # forget the id (as if the write after create never happened) and rerun
    state.pop("job_id")
    state["status"] = None
    state_path(run).write_text(json.dumps(state))
    run.train_summary.unlink()
    train_openai(cfg, run, yes=True, console=recording_console())
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 1
    assert read_json(state_path(run))["job_id"] == job_id


def test_failed_job_shows_the_error_and_needs_retry_flag(tmp_path: Path, emu: Emulator, key: str) -> None:
    emu.job_outcome = "failed"
    cfg = make_config(tmp_path, emu)
    run = open_run(cfg)
    with pytest.raises(TunebenchError) as info:
        train_openai(cfg, run, yes=True, console=recording_console())
    message = str(info.value)
    assert emu.job_error in message and "--retry-failed" in message and "\n" not in message
    state = read_json(state_path(run))
    assert state["status"] == "failed" and state["error"]["message"] == emu.job_error
    # a plain rerun creates nothing
    with pytest.raises(TunebenchError, match="--retry-failed"):
        train_openai(cfg, run, yes=True, console=recording_console())
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 1
    # the explicit flag starts a new job, reusing the uploaded files
    emu.job_outcome = "succeeded"
    summary = train_openai(cfg, run, yes=True, retry_failed=True, console=recording_console())
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 2 and emu.count("POST", "/v1/files") == 2
    state = read_json(state_path(run))
    assert state["previous_jobs"][0]["status"] == "failed" and summary["job_id"] == state["job_id"]


def test_bad_key_is_one_line_and_never_echoed(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = "sk-wrong-key-that-must-not-leak-42"
    monkeypatch.setenv("OPENAI_API_KEY", bad)
    cfg = make_config(tmp_path, emu)
    run = open_run(cfg)
    with pytest.raises(TunebenchError) as info:
        train_openai(cfg, run, yes=True, console=recording_console())
    assert "rejected the API key from $OPENAI_API_KEY" in str(info.value) and bad not in str(info.value)
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 0
    for path in run.root.rglob("*"):
        if path.is_file():
            assert bad.encode() not in path.read_bytes()
