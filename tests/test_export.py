"""``tunebench export``: base + adapter merged into one plain transformers folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from tests import test_inference_support as support
from tunebench.config import PROVIDER_SECTIONS, validate_experiment
from tunebench.io import read_jsonl
from tunebench.pipeline import open_run
from tunebench.pipeline import predict_stage as predict

lively_model_dir = support.lively_model_dir  # the shared fixture
REPO = Path(__file__).resolve().parents[1]


def tunebench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tunebench", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_merged_export_predicts_what_base_plus_adapter_predicts(
    tmp_path: Path, lively_model_dir: Path
) -> None:
    config, run = support.make_run(tmp_path, lively_model_dir, name="tuned", n=8)
    support.save_random_adapter(lively_model_dir, run.adapter_dir)
    with_adapter = read_jsonl(predict(config, run, "test"))

    done = tunebench("export", str(run.root), "--dtype", "float32")
    assert done.returncode == 0, done.stderr[-2000:]
    merged_dir = run.root / "merged"
    weights = list(merged_dir.glob("*.safetensors"))
    assert (
        weights
        and (merged_dir / "config.json").is_file()
        and (merged_dir / "tokenizer_config.json").is_file()
    )
    with safe_open(str(weights[0]), "pt") as f:
        names = list(f.keys())
    assert names and not [k for k in names if "lora" in k]  # plain weights: no peft needed to load
    assert run.manifest()["stages"]["export"]["dtype"] == "float32"
    again = tunebench("export", str(run.root), "--dtype", "float32")  # an earlier export is replaced
    assert again.returncode == 0, again.stderr[-2000:]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    refused = tunebench("export", str(run.root), "--out", str(precious))
    assert refused.returncode == 2 and "is not a tunebench export" in refused.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]

    # the merged folder as a base model, with no adapter: the same greedy predictions
    merged_config = validate_experiment(
        {
            **{k: v for k, v in config.model_dump().items() if k not in PROVIDER_SECTIONS},
            "name": "merged-as-base",
            "provider": "base",
            "model": {"name": str(merged_dir)},
        }
    )
    merged_run = open_run(merged_config)
    from tunebench.pipeline.prepare import prepare

    prepare(merged_config, merged_run)
    from_merged = read_jsonl(predict(merged_config, merged_run, "test"))
    assert [r["raw"] for r in from_merged] == [r["raw"] for r in with_adapter]
    base_config, base_run = support.make_run(tmp_path, lively_model_dir, name="plain", provider="base", n=8)
    plain = read_jsonl(predict(base_config, base_run, "test"))
    assert sum(a["raw"] != b["raw"] for a, b in zip(plain, from_merged, strict=True)) >= 4  # it did merge


def test_export_needs_a_trained_adapter(tmp_path: Path, lively_model_dir: Path) -> None:
    _config, run = support.make_run(tmp_path, lively_model_dir, name="untrained", n=2)
    failed = tunebench("export", str(run.root))
    assert failed.returncode == 2
    assert "no LoRA adapter" in failed.stderr and "tunebench train" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert not (run.root / "merged").exists()
    _config, base_run = support.make_run(tmp_path, lively_model_dir, name="zero-shot", provider="base", n=2)
    refused = tunebench("export", str(base_run.root))
    assert refused.returncode == 2 and "provider base has no trained weights to export" in refused.stderr
