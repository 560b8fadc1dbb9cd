"""`tunebench train` / `tunebench openai ...` as a user runs them (subprocess, emulator on loopback)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.openai_emulator import Emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator().start()
    yield emulator
    emulator.stop()


def cli(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    if key:
        env["OPENAI_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "tunebench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_estimate_refusal_train_and_status(tmp_path: Path, emu: Emulator) -> None:
    config = tmp_path / "oai.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "runs_dir": str(tmp_path / "runs"),
                "provider": "openai",
                "task": {"name": "viggo", "max_train_examples": 20, "max_eval_examples": 5},
                "openai": {"base_url": emu.base_url, "poll_interval_s": 0.01},
            }
        )
    )
    estimate = cli("openai", "estimate", str(config), key=None)
    assert estimate.returncode == 0, estimate.stderr
    assert "ESTIMATED training cost" in estimate.stdout and "epochs: 5 (auto" in estimate.stdout

    refused = cli("train", str(config), key=emu.api_key)
    assert refused.returncode == 2
    assert "error:" in refused.stderr and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert emu.calls == []

    trained = cli("train", str(config), "--yes", key=emu.api_key)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["provider"] == "openai" and summary["fine_tuned_model"].startswith("ft:gpt-3.5-turbo-0125")

    status = cli("openai", "status", str(tmp_path / "runs" / "cli"), key=None)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    assert emu.count("POST", "/v1/fine_tuning/jobs") == 1


def write_config(tmp_path: Path, emu: Emulator) -> Path:
    config = tmp_path / "oai.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "ctrl-c",
                "runs_dir": str(tmp_path / "runs"),
                "provider": "openai",
                "task": {"name": "viggo", "max_train_examples": 20, "max_eval_examples": 5},
                "openai": {"base_url": emu.base_url, "poll_interval_s": 0.05, "yes": True},
            }
        )
    )
    return config


def default_sigint() -> None:
    """Ctrl-C as an interactive shell delivers it. A suite started in the background by a
    non-interactive shell (`cmd &`) inherits SIGINT ignored, and so would the child: Python
    then installs no KeyboardInterrupt handler and the signal these tests send does nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_following(config: Path, emu: Emulator, stdin: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": emu.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunebench", "train", str(config)],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while emu.count("GET", f"/v1/fine_tuning/jobs/{next(iter(emu.jobs), '?')}") < 3:
        assert time.monotonic() < deadline and proc.poll() is None, "the job was never followed"
        time.sleep(0.05)
    return proc


def test_ctrl_c_without_a_terminal_leaves_the_job_running(tmp_path: Path, emu: Emulator) -> None:
    emu.hold_running = True
    proc = start_following(write_config(tmp_path, emu), emu, subprocess.DEVNULL)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130
    job = next(iter(emu.jobs.values()))
    assert job["status"] == "running" and emu.count("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel") == 0
    assert "keeps running at OpenAI" in text and "tunebench openai cancel" in text


def test_ctrl_c_on_a_terminal_asks_and_cancels(tmp_path: Path, emu: Emulator) -> None:
    emu.hold_running = True
    master, slave = pty.openpty()
    try:
        proc = start_following(write_config(tmp_path, emu), emu, slave)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        os.write(master, b"y\n")
        proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    job = next(iter(emu.jobs.values()))
    assert job["status"] == "cancelled" and emu.count("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel") == 1
    state = json.loads((tmp_path / "runs" / "ctrl-c" / "openai_job.json").read_text())
    assert state["status"] == "cancelled"
