"""``training.method: full``: every weight of the tiny model trains, through the same loop,
checkpoints, resume, prediction and export as LoRA."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training_run import REPO, losses, train_cli, write_config
from tunebench.config import load_experiment, validate_experiment
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl
from tunebench.models.weights import WEIGHTS_FILE
from tunebench.pipeline import ensure_prepared, open_run, predict_stage, train_stage
from tunebench.training.data import IGNORE, step_example_indices
from tunebench.training.loop import FAULT_KILL_ENV

#: A full run's settings: cosine from the first step (no zero-rate warm-up step), weight decay
#: and clipping on, so every part of the update is compared.
FULL = {"method": "full", "warmup_steps": 0, "weight_decay": 0.01, "learning_rate": 1e-3}


def run_train(path: Path) -> tuple[dict[str, Any], Path]:
    from tunebench.training import train

    cfg = load_experiment(path)
    run = open_run(cfg)
    ensure_prepared(cfg, run)
    return train(cfg, run, resume=True), run.root


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS_FILE))


def step_weights(root: Path, step: int) -> dict[str, torch.Tensor]:
    return weights(root / "checkpoints" / f"step-{step}" / "model")


def flat(state: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, value) pairs of a parameter's optimizer state, nested dicts opened (bitsandbytes
    keeps its quantized moments one level down)."""
    return [pair for k, v in state.items() for pair in (flat(v) if isinstance(v, dict) else [(k, v)])]


def optimizer_checkpoint(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)


# --- (a) the same maths as plain PyTorch ---------------------------------------------------------
def reference_training(
    model_dir: Path, examples: list[Any], config: Any, steps: int
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Full fine-tuning written out in plain PyTorch: one example per forward pass, loss = sum
    of token cross-entropies over labeled positions / labeled tokens of the step, clipping,
    torch AdamW and the cosine schedule by its formula."""
    from transformers import AutoModelForCausalLM

    tc = config.training
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    params = list(model.parameters())
    if tc.optimizer == "adamw_8bit":
        from bitsandbytes.optim import AdamW8bit

        optimizer = AdamW8bit(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    cosine = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / tc.max_steps))
    )
    step_losses = []
    for step in range(steps):
        chosen = [examples[i] for i in step_example_indices(len(examples), tc.batch_size, step, tc.seed)]
        labeled = sum(sum(1 for t in ex.labels[1:] if t != IGNORE) for ex in chosen)
        total = torch.zeros(())
        for ex in chosen:
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            total = total + torch.nn.functional.cross_entropy(
                logits[:-1], torch.tensor(ex.labels[1:]), ignore_index=IGNORE, reduction="sum"
            )
        loss = total / labeled
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        optimizer.step()
        cosine.step()
        optimizer.zero_grad()
        step_losses.append(loss.item())
    return step_losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def tokenized_train_split(config: Any, root: Path, model_dir: Path) -> list[Any]:
    from transformers import AutoTokenizer, GenerationConfig

    from tunebench.models import training_eos_id
    from tunebench.rundir import RunDir
    from tunebench.tasks import get_task
    from tunebench.tasks.base import load_prepared
    from tunebench.training.data import tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = training_eos_id(tokenizer, GenerationConfig.from_pretrained(model_dir))
    examples, _ = tokenize_examples(
        load_prepared(RunDir(root), "train"),
        tokenizer=tokenizer,
        eos_id=eos,
        suffix=get_task(config.task).completion_suffix,
        max_length=config.training.max_length,
        loss_on=config.training.loss_on,
    )
    return examples


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_8bit"])
def test_full_finetuning_matches_plain_pytorch(tmp_path, tiny_model_dir, data_dir, optimizer) -> None:
    path = write_config(tmp_path, tiny_model_dir, data_dir, "full", max_steps=3, optimizer=optimizer, **FULL)
    summary, root = run_train(path)
    config = load_experiment(path)
    assert summary["steps"] == 3
    ref_losses, ref_weights = reference_training(
        tiny_model_dir, tokenized_train_split(config, root, tiny_model_dir), config, 3
    )
    assert losses(root) == pytest.approx(ref_losses, rel=1e-5)
    trained = step_weights(root, 3)
    assert trained.keys() == ref_weights.keys()  # every weight, the tied head once
    for name, value in ref_weights.items():
        if optimizer == "adamw":
            torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
            continue
        # 8-bit moments: a last-bit difference in a gradient (accumulated over micro-batches
        # here, summed at once in the reference) can move a moment into the next quantization
        # bucket, so a rare element differs by a fraction of one step's size
        off = (trained[name] - value).abs()
        assert off.gt(1e-5).float().mean() < 1e-3 and off.max() < 0.1 * FULL["learning_rate"], name
    # it did train every kind of weight: embeddings, attention, MLP and norms all moved
    from transformers import AutoModelForCausalLM

    start = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).named_parameters())
    moved = {name for name in trained if not torch.equal(trained[name], start[name].detach())}
    assert moved == set(trained)
    # no adapter anywhere: checkpoints hold model/, no peft files
    assert not list(root.rglob("adapter_config.json"))
    assert read_json(root / "checkpoints" / "step-3" / "state.json")["step"] == 3
    # the checkpoint keeps the optimizer's own moments: one byte each with adamw_8bit
    moment_dtypes = {
        value.dtype
        for state in optimizer_checkpoint(root / "checkpoints" / "step-3")["state"].values()
        for key, value in flat(state)
        if key in ("exp_avg", "state1")
    }
    assert moment_dtypes == ({torch.uint8, torch.float32} if optimizer == "adamw_8bit" else {torch.float32})


# --- (b) resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "adamw_8bit"])
def test_full_resume_after_sigkill_matches_uninterrupted_run(
    tmp_path, tiny_model_dir, data_dir, optimizer
) -> None:
    # three checkpoints kept for a choice: the resume must come from the latest
    opts = {**FULL, "max_steps": 6, "optimizer": optimizer, "select_checkpoint_by": "validation_metric"}
    full, root_full = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "straight", **opts))
    path = write_config(tmp_path, tiny_model_dir, data_dir, "killed", **opts)
    proc = train_cli(path, **{FAULT_KILL_ENV: "5"})  # killed after step 5's update; last checkpoint 4
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = tmp_path / "runs" / "killed"
    assert max(r["step"] for r in read_jsonl(root / "metrics.jsonl")) == 5
    resumed, _ = run_train(path)
    assert resumed["steps"] == 6
    assert resumed["best_validation_loss"] == pytest.approx(full["best_validation_loss"], rel=1e-6)
    assert losses(root) == pytest.approx(losses(root_full), rel=1e-6)
    # only the latest checkpoint keeps the optimizer state that a resume needs
    kept = sorted(p.parent.name for p in (root_full / "checkpoints").glob("step-*/state.json"))
    with_optimizer = sorted(p.parent.name for p in (root_full / "checkpoints").glob("step-*/optimizer.pt"))
    assert len(kept) >= 2 and with_optimizer == ["step-6"], (kept, with_optimizer)
    a, b = step_weights(root, 6), step_weights(root_full, 6)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_a_lora_checkpoint_does_not_resume_a_full_run(tmp_path, tiny_model_dir, data_dir) -> None:
    lora_path = write_config(tmp_path, tiny_model_dir, data_dir, "switch", max_steps=2)
    run_train(lora_path)
    cfg = load_experiment(write_config(tmp_path, tiny_model_dir, data_dir, "switch", max_steps=2, **FULL))
    from tunebench.rundir import RunDir
    from tunebench.training import train

    with pytest.raises(TunebenchError, match="holds no model/"):
        train(cfg, RunDir(tmp_path / "runs" / "switch"), resume=True)


# --- (c) export and (d) predict from a full run ----------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir, data_dir) -> tuple[Any, Any]:
    tmp = tmp_path_factory.mktemp("full-run")
    cfg = load_experiment(write_config(tmp, tiny_model_dir, data_dir, "trained", max_steps=4, **FULL))
    run = open_run(cfg)
    ensure_prepared(cfg, run)
    train_stage(cfg, run)
    return cfg, run


def tunebench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tunebench", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def exported(full_run, tmp_path_factory) -> Path:
    """``tunebench export RUN --out DIR --dtype float32`` of the full run, once; tests only read it."""
    _cfg, run = full_run
    out = tmp_path_factory.mktemp("export") / "exported"
    done = tunebench("export", str(run.root), "--out", str(out), "--dtype", "float32")
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_a_full_run_publishes_its_best_model(full_run) -> None:
    _cfg, run = full_run
    summary = read_json(run.train_summary)
    assert run.trained_dir("full") == run.model_dir and not run.adapter_dir.exists()
    best = step_weights(run.root, summary["best_step"])
    published = weights(run.model_dir)
    assert published.keys() == best.keys() and all(torch.equal(published[k], best[k]) for k in best)


def test_export_writes_the_trained_model(full_run, exported) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _cfg, run = full_run
    loaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    trained = weights(run.model_dir)
    params = dict(loaded.named_parameters())
    assert params.keys() == trained.keys()
    assert all(torch.equal(params[k].detach(), trained[k]) for k in trained)
    assert AutoTokenizer.from_pretrained(exported)("SELECT")["input_ids"]
    assert read_json(exported / "tunebench_export.json")["model"] == str(run.model_dir.resolve())
    assert run.manifest()["stages"]["export"]["dtype"] == "float32"


def test_predict_uses_the_full_runs_model(full_run, exported) -> None:
    cfg, run = full_run
    predicted = read_jsonl(predict_stage(cfg, run, "test"))
    assert len(predicted) == 8 and all("prediction" in r for r in predicted)
    # the same greedy text as the exported model loaded as a plain base model
    base_cfg = validate_experiment(
        {
            **{k: v for k, v in cfg.model_dump().items() if k not in ("lora", "training")},
            "name": "exported-as-base",
            "provider": "base",
            "model": {"name": str(exported)},
        }
    )
    base_run = open_run(base_cfg)
    from tunebench.pipeline.prepare import prepare

    prepare(base_cfg, base_run)
    from_export = read_jsonl(predict_stage(base_cfg, base_run, "test"))
    assert [r["raw"] for r in from_export] == [r["raw"] for r in predicted]
    # what prediction loaded is the trained model (the tiny model's greedy text is mostly
    # newlines before and after training, so the weights themselves are compared)
    from tunebench.inference.local import load_generator

    generator = load_generator(cfg.model, run.model_dir, device="cpu")
    trained = weights(run.model_dir)
    loaded = dict(generator.model.named_parameters())
    assert all(torch.equal(loaded[k].detach(), trained[k]) for k in trained)
    base = dict(load_generator(cfg.model, None, device="cpu").model.named_parameters())
    assert not torch.equal(base["model.embed_tokens.weight"], loaded["model.embed_tokens.weight"])


# --- config, study, estimate -----------------------------------------------------------------------
def test_full_finetuning_refuses_quantized_weights() -> None:
    with pytest.raises(ValueError, match=r"model\.quantization must be none"):
        validate_experiment({"name": "x", "training": {"method": "full"}, "model": {"quantization": "8bit"}})
    assert validate_experiment({"name": "x"}).training.method == "lora"  # the default


def test_a_study_takes_full_finetuning_as_a_system(tmp_path) -> None:
    import yaml

    from tunebench.config.study import expand, load_study

    study = {
        "name": "full-vs-lora",
        "tasks": ["sql"],
        "systems": [
            {"name": "lora", "provider": "local"},
            {"name": "full", "provider": "local", "training": {"method": "full", "learning_rate": 2e-5}},
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    cells = {cell.config.name: cell.config for cell in expand(load_study(path), None, str(path))}
    assert cells["full-sql"].training.method == "full" and cells["lora-sql"].training.method == "lora"
    assert cells["full-sql"].training.learning_rate == 2e-5


def test_estimate_sizes_full_finetuning(tmp_path) -> None:
    from tunebench import sizing
    from tunebench.estimate import estimate

    rows = {}
    for method, optimizer in (("lora", "adamw"), ("full", "adamw"), ("full", "adamw_8bit")):
        path = tmp_path / f"{method}-{optimizer}.yaml"
        path.write_text(
            f"name: {method}\nmodel: {{name: qwen2.5-coder-1.5b}}\ntask: {{name: sql, max_train_examples: 64}}\n"
            f"training: {{method: {method}, optimizer: {optimizer}, max_steps: 10, batch_size: 32}}\n",
            encoding="utf-8",
        )
        (rows[method, optimizer],) = estimate(path, gpu="H100")
    lora, full = rows["lora", "adamw"], rows["full", "adamw"]
    arch = sizing.resolve_architecture("qwen2.5-coder-1.5b")
    counts = sizing.parameter_counts(arch)
    parts = full["memory_parts_gib"]
    assert full["trainable_params"] == counts["total"] and full["method"] == "full"
    # 16 bytes a parameter: float32 weights (4) + gradients and two AdamW moments (12)
    assert parts["weights"] + parts["gradients_optimizer"] == pytest.approx(
        16 * counts["total"] / 2**30, rel=1e-3
    )
    # 8-bit AdamW: two one-byte moments, 6 bytes a parameter lost (24 to 18 GB for 1.5B)
    parts_8bit = rows["full", "adamw_8bit"]["memory_parts_gib"]
    assert parts["gradients_optimizer"] - parts_8bit["gradients_optimizer"] == pytest.approx(
        6 * counts["total"] / 2**30, rel=1e-3
    )
    # disk: two resumable checkpoints while one is saved (weights 4 + moments 8 bytes a
    # parameter each), the best one's weights and the published model: 32 bytes a parameter
    assert full["checkpoint_disk_gib"] == pytest.approx(32 * counts["total"] / 2**30, rel=1e-3)
    assert rows["full", "adamw_8bit"]["checkpoint_disk_gib"] == pytest.approx(
        20 * counts["total"] / 2**30, rel=1e-3
    )
    assert parts["weight_casts"] == pytest.approx(
        2 * (counts["linear"] + arch.vocab * arch.hidden) / 2**30, rel=1e-3
    )
    # the same decoder's activations, less what LoRA's adapted layers keep (dropout mask, bf16 input)
    assert (
        0.7 * lora["memory_parts_gib"]["activations"]
        < parts["activations"]
        < lora["memory_parts_gib"]["activations"]
    )
    assert full["peak_memory_gib"] > 24 and full["peak_memory_gib"] > lora["peak_memory_gib"] + 20
    assert full["peak_memory_with_checkpointing_gib"] < full["peak_memory_without_checkpointing_gib"]
    assert full["train_tokens_per_s"] < lora["train_tokens_per_s"]  # weight gradients of every matmul


#: bench_train.py's full fine-tuning variants as configs (its JSON:
#: benchmarks/results/train_h100_60f5272_full_vs_lora_*.json; the LoRA variant beside them is
#: 26% slower on SQL's 3.8k-token steps than the estimate, which BENCHMARKS.md reports)
BENCH_VARIANTS = {
    "full": {"training": {"method": "full"}},
    "full-8bit-adamw": {"training": {"method": "full", "optimizer": "adamw_8bit"}},
    "full-ckpt": {"training": {"method": "full", "gradient_checkpointing": True}},
}


@pytest.mark.parametrize("task", ["sql", "viggo"])
def test_estimate_matches_the_measured_full_finetuning_steps(tmp_path, task) -> None:
    """The estimate against the H100 measurements of full fine-tuning (float32 and 8-bit moments,
    with and without checkpointing) on Qwen2.5-Coder-1.5B's architecture: within ±10% of the
    measured memory and ±20% of the measured speed."""
    from tunebench.estimate import estimate

    measured = read_json(REPO / "benchmarks" / "results" / f"train_h100_60f5272_full_vs_lora_{task}.json")
    for name, variant in BENCH_VARIANTS.items():
        config = {
            "name": name,
            "model": {"name": "qwen2.5-coder-1.5b"},
            "task": {"name": task, "max_train_examples": 384, "max_eval_examples": 8},
            "training": {"max_steps": 12, "batch_size": 32, "liger": True, **variant["training"]},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(config), encoding="utf-8")
        (row,) = estimate(path, gpu="H100")
        point = measured["results"][name]
        memory = row["memory_parts_gib"]["allocated"] / point["peak_memory_gb"]
        speed = row["train_tokens_per_s"] / point["tokens_per_s"]
        assert abs(memory - 1) <= 0.10, (name, memory)
        assert abs(speed - 1) <= 0.20, (name, speed)


def test_training_warns_when_checkpoints_may_not_fit_the_disk(tmp_path, capsys) -> None:
    """A run whose checkpoints need more than the free disk is told before its first step,
    with the settings that shrink the need; one that fits is not."""
    from tunebench.rundir import RunDir
    from tunebench.training.loop import warn_if_disk_is_short

    config = validate_experiment({"name": "x", "training": {"method": "full"}})
    run = RunDir(tmp_path)
    warn_if_disk_is_short(config.training, run, trainable=1000)
    assert "warning" not in capsys.readouterr().err
    warn_if_disk_is_short(config.training, run, trainable=10**15)  # 32 PB of checkpoints
    out = " ".join(capsys.readouterr().err.split())  # the console may wrap the line
    assert "checkpoints may need up to 29802322.4 GiB" in out and "adamw_8bit" in out


@pytest.mark.slow
def test_full_finetuning_under_fsdp_on_two_processes_equals_one(tmp_path, tiny_model_dir, data_dir) -> None:
    """Every weight trained with FSDP over 2 gloo processes: the same losses and weights as one
    process. The root's own trained weights (embeddings, final norm) are the ones a LoRA run
    never trains: the checkpoint after a validation pass must map them to the optimizer's."""
    opts = {**FULL, "max_steps": 4}
    one, root_one = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "one", **opts))
    path = write_config(tmp_path, tiny_model_dir, data_dir, "two", **opts)
    proc = train_cli(path, "--gpus", "2", "--set", "training.fsdp=true", OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "runs" / "two"
    two = read_json(root / "train_summary.json")
    assert two["processes"] == 2 and two["sharding"] == "fsdp"
    assert two["best_validation_loss"] == pytest.approx(one["best_validation_loss"], rel=1e-5)
    assert losses(root) == pytest.approx(losses(root_one), rel=1e-5)
    assert losses(root, "validation") == pytest.approx(losses(root_one, "validation"), rel=1e-5)
    a, b = step_weights(root, 4), step_weights(root_one, 4)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
