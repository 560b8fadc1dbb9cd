"""Hostile and newcomer inputs to ``tunebench estimate``: every failure is one line naming the file
and key, and every number it prints is finite and positive (real files, the real CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.cli import tunebench
from tunebench import sizing
from tunebench.errors import TunebenchError
from tunebench.estimate import estimate

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"cell", "provider", "gpu", "peak_memory_gib", "fits", "train_tokens_per_s", "train_seconds"}
GOOD_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "tie_word_embeddings": True,
    "model_type": "llama",
}


def model_folder(tmp_path: Path, **changes: Any) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    shape = {k: v for k, v in {**GOOD_SHAPE, **changes}.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(shape))
    return folder


def experiment(tmp_path: Path, body: str, name: str = "exp.yaml") -> Path:
    config = tmp_path / name
    config.write_text(
        "name: probe\nprovider: local\ntask: {name: viggo, max_train_examples: 40, max_eval_examples: 8}\n"
        + body
    )
    return config


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("num_attention_heads", 0, "num_attention_heads must be a positive integer (got 0)"),
        ("num_hidden_layers", 0, "num_hidden_layers must be a positive integer (got 0)"),
        ("hidden_size", -64, "hidden_size must be a positive integer (got -64)"),
        ("vocab_size", 0, "vocab_size must be a positive integer (got 0)"),
        ("hidden_size", "64", "hidden_size must be a positive integer (got '64')"),
        ("hidden_size", 64.5, "hidden_size must be a positive integer (got 64.5)"),
        ("num_hidden_layers", True, "num_hidden_layers must be a positive integer (got True)"),
        ("num_key_value_heads", 0, "num_key_value_heads must be a positive integer (got 0)"),
        ("head_dim", -4, "head_dim must be a positive integer (got -4)"),
        ("intermediate_size", None, "intermediate_size: missing (not a decoder config sizing understands)"),
    ],
)
def test_a_bad_model_shape_is_one_error_naming_file_and_key(
    tmp_path: Path, key: str, value: Any, says: str
) -> None:
    folder = model_folder(tmp_path, **{key: value})
    with pytest.raises(TunebenchError) as err:
        sizing.architecture_from_config(folder)
    assert str(err.value) == f"{folder / 'config.json'}: {says}"


def test_an_infinite_size_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "config.json").write_text(
        json.dumps(GOOD_SHAPE).replace('"num_hidden_layers": 2', '"num_hidden_layers": Infinity')
    )
    config = experiment(tmp_path, f"model: {{name: {folder}}}\ntraining: {{max_steps: 2, batch_size: 4}}\n")
    out = tunebench("estimate", str(config), "--json")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {folder / 'config.json'}: num_hidden_layers must be a positive integer (got inf)"
    ]


def test_missing_kv_heads_means_one_per_attention_head(tmp_path: Path) -> None:
    arch = sizing.architecture_from_config(model_folder(tmp_path, num_key_value_heads=None))
    assert arch.kv_heads == arch.heads == 4


def test_rows_with_nothing_to_size_carry_every_json_key() -> None:
    rows = estimate(ROOT / "examples" / "study_full_gpu.yaml", "H100")
    ensemble = [r for r in rows if r["provider"] == "ensemble"]
    assert ensemble, [r["provider"] for r in rows]
    for row in ensemble:
        assert set(row) >= REQUIRED | {"train_usd"}
        assert row["fits"] is None and row["peak_memory_gib"] is None and row["train_seconds"] is None


def test_a_micro_batch_budget_below_one_example_runs_one_example_per_micro_batch(tmp_path: Path) -> None:
    """The packer gives an example longer than tokens_per_micro_batch a micro-batch of its own."""
    body = "model: {name: qwen2.5-coder-1.5b}\ntraining: {max_steps: 4, batch_size: 8, %s}\n"
    tiny = estimate(experiment(tmp_path, body % "tokens_per_micro_batch: 64", "tiny.yaml"), "H100")[0]
    one = estimate(experiment(tmp_path, body % "packing: false, micro_batch_size: 1", "one.yaml"), "H100")[0]
    assert tiny["tokens_per_micro_batch"] == one["tokens_per_micro_batch"] > 64
    assert tiny["peak_memory_gib"] == one["peak_memory_gib"]
    assert tiny["train_tokens_per_s"] == one["train_tokens_per_s"]


def test_a_price_for_the_detected_device_name_is_used(tmp_path: Path) -> None:
    """cost.gpu_type as a run records it (the device name) with its own price."""
    config = experiment(
        tmp_path,
        "model: {name: qwen2.5-coder-1.5b}\ntraining: {max_steps: 4, batch_size: 8}\n"
        "cost: {gpu_type: NVIDIA H100 80GB HBM3, gpu_price_per_hour: 7.5}\n",
    )
    (row,) = estimate(config)
    assert row["gpu"] == "H100" and row["price_per_hour"] == 7.5
    assert row["train_usd"] == pytest.approx(row["train_seconds"] / 3600 * 7.5, abs=1e-4)
    (other,) = estimate(config, "A40")  # another card keeps its own table price
    assert other["price_per_hour"] != 7.5


def test_an_unknown_cost_gpu_type_names_the_key(tmp_path: Path) -> None:
    config = experiment(
        tmp_path, "model: {name: qwen2.5-coder-1.5b}\ntraining: {max_steps: 4}\ncost: {gpu_type: RTX 4090}\n"
    )
    with pytest.raises(TunebenchError) as err:
        estimate(config)
    assert str(err.value).startswith(
        f"{config}: cell probe: cost.gpu_type: unknown GPU 'RTX 4090' (known: L4,"
    )
    assert str(err.value).endswith("; or pass --gpu NAME")
    assert estimate(config, "L4")[0]["gpu"] == "L4"


def test_an_empty_training_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "test.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    config = tmp_path / "exp.yaml"
    config.write_text(
        "name: probe\nprovider: local\nmodel: {name: smollm2-135m}\n"
        "task: {name: custom, train_file: train.jsonl, test_file: test.jsonl}\n"
    )
    with pytest.raises(TunebenchError) as err:
        estimate(config)
    assert str(err.value) == f"{tmp_path / 'train.jsonl'}: file is empty"


def test_a_folder_for_a_config_is_named_a_folder(tmp_path: Path) -> None:
    out = tunebench("estimate", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path}: a folder, not a file"]


@pytest.mark.parametrize("card", ["L4", "A40", "H200"])
def test_every_gpu_example_gives_finite_positive_figures_and_a_fit_that_matches_the_card(card: str) -> None:
    from tunebench.prices import gpu_card

    memory = gpu_card(card).memory_gib
    for example in ("study_codellama34b.yaml", "study_full_gpu.yaml", "study_levers_gpu.yaml"):
        for row in estimate(ROOT / "examples" / example, card):
            where = f"{example} {row['cell']}"
            assert set(row) >= REQUIRED | {"train_usd"}, where
            if row["provider"] == "openai":
                assert row["train_usd"] > 0 and row["train_tokens"] > 0, where
                continue
            if row.get("note"):  # nothing to size
                continue
            assert row["gpu"] == card and isinstance(row["fits"], bool), where
            assert row["fits"] == (row["peak_memory_gib"] <= memory), where
            for key in ("params", "peak_memory_gib", "train_tokens", "train_tokens_per_s", "train_seconds"):
                assert math.isfinite(row[key]) and row[key] > 0, (where, key, row[key])
            assert row["train_seconds"] == pytest.approx(
                row["train_tokens"] / row["train_tokens_per_s"], rel=1e-3
            )
            assert row["predict_seconds"] > 0, where
