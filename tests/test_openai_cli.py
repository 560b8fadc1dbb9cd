"""`tunebench train` / `tunebench openai ...` as a user runs them (subprocess, emulator on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
