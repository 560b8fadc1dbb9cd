"""The worked example end to end on the CPU: ViGGO as JSON extraction in OpenAI chat format,
`tunebench init` -> `tunebench run` (base chat, LoRA, OpenAI on the local emulator) -> report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from examples.make_viggo_json import build
from tests import cli
from tests.openai_emulator import Emulator
from tests.tiny import CHATML, build_tiny_model
from tunebench.io import read_json, read_jsonl
from tunebench.study import run_study


def tunebench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli.tunebench(*args, cwd=cwd, timeout=120, COLUMNS="200")


def test_init_writes_a_study_splits_the_file_and_estimates_openai(tmp_path: Path, data_dir: Path) -> None:
    data = build(data_dir, tmp_path / "data", train=50, test=1)["train"]
    result = tunebench("init", str(data), "--out", "study/s.yaml", "--model", "my-model", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "format: chat; metrics: json_match, json_field_f1, json_valid" in result.stderr
    assert "ESTIMATED training cost: $" in result.stderr and "nothing is uploaded" in result.stderr
    folder = tmp_path / "study"
    train, test = read_jsonl(folder / "train.train.jsonl"), read_jsonl(folder / "train.test.jsonl")
    assert (len(train), len(test)) == (40, 10)  # 20% of 50, seeded
    assert sorted(map(json.dumps, train + test)) == sorted(map(json.dumps, read_jsonl(data)))
    study = yaml.safe_load((folder / "s.yaml").read_text(encoding="utf-8"))
    assert [(s["name"], s["provider"]) for s in study["systems"]] == [
        ("base", "base"),
        ("lora", "local"),
        ("openai", "openai"),
    ]
    assert study["systems"][0]["generation"] == {"prompt_format": "chat"}
    assert study["systems"][1]["model"] == {"name": "my-model"}
    assert study["tasks"][0]["task"]["train_file"] == "train.train.jsonl"  # read from the config's folder
    assert "# Study written by `tunebench init`" in (folder / "s.yaml").read_text(encoding="utf-8")
    again = tunebench("init", str(data), "--out", "study/s.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "s.yaml: already exists" in again.stderr


@pytest.mark.slow  # ~150 s on 2 shared CPU cores (three systems, training, the report)
def test_viggo_json_example_from_init_to_report(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_tiny_model(tmp_path / "tiny", data_dir, chat_template=CHATML)
    data = build(data_dir, tmp_path / "data", train=60, test=1)["train"]
    made = tunebench("init", str(data), "--out", "study/viggo.yaml", "--model", str(model), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    test_rows = read_jsonl(tmp_path / "study" / "train.test.jsonl")
    emulator = Emulator().start()
    try:
        # the fine-tuned OpenAI model answers half of the test rows right
        for row in test_rows[::2]:
            emulator.answers[row["messages"][1]["content"]] = row["messages"][2]["content"]
        monkeypatch.setenv("OPENAI_API_KEY", emulator.api_key)
        monkeypatch.chdir(tmp_path)
        report = run_study(
            tmp_path / "study" / "viggo.yaml",
            yes=True,
            overrides={
                "openai.base_url": emulator.base_url,
                "openai.poll_interval_s": 0.01,
                "generation.max_new_tokens": 24,
                "training.epochs": 1,
            },
        )
        uploaded = [json.loads(line) for line in next(iter(emulator.contents.values())).decode().splitlines()]
    finally:
        emulator.stop()
    assert report is not None
    runs = tmp_path / "runs" / "train"
    # the OpenAI upload is the file's rows as they are (training share: validation held out)
    file_rows = read_jsonl(tmp_path / "study" / "train.train.jsonl")
    assert all(row in file_rows for row in uploaded) and len(uploaded) == len(file_rows) - 5
    # LoRA trained in the chat template and predicted in it
    lora_rows = read_jsonl(runs / "lora-train" / "predictions" / "test.jsonl")
    assert lora_rows[0]["prompt"].startswith("<|im_start|>system\nExtract the meaning")
    assert lora_rows[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    openai_metrics = read_json(runs / "openai-train" / "eval" / "test" / "metrics.json")
    assert openai_metrics["json_match"] == pytest.approx(len(test_rows[::2]) / len(test_rows))
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "json_match" in md and "significance" in md.lower()
