"""Training runs end to end on the tiny real model and real SQL data (CPU, a few steps each):
determinism, resume after a real SIGKILL, early stopping, skipped non-finite steps, and
2-process gloo runs (DDP and FSDP) equal to the 1-process one."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunebench.config import load_experiment
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl
from tunebench.pipeline import ensure_prepared, open_run, train_stage
from tunebench.providers.choose import choose_checkpoint, pick
from tunebench.training.loop import FAULT_KILL_ENV, FAULT_NAN_ENV

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, model: Path, data: Path, name: str, **training: Any) -> Path:
    lora = training.pop("lora", {"dropout": 0.0})
    quantization = training.pop("model_quantization", "none")
    dtype = training.pop("model_dtype", "auto")
    cfg = {
        "name": name,
        "runs_dir": str(tmp / "runs"),
        "model": {"name": str(model), "quantization": quantization, "dtype": dtype},
        "task": {"data_dir": str(data), "max_train_examples": 32, "max_eval_examples": 8},
        "lora": lora,
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "eval_every": 2,
            "warmup_steps": 1,
            "learning_rate": 2e-3,
            "tokens_per_micro_batch": 512,  # ~2 micro-batches per step: accumulation is exercised
            "early_stopping_patience": None,
            **training,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def run_train(path: Path, resume: bool = True) -> tuple[dict[str, Any], Path]:
    """Prepare and train as `tunebench train` does (the summary and adapter recorded)."""
    cfg = load_experiment(path)
    run = open_run(cfg)
    ensure_prepared(cfg, run)
    return train_stage(cfg, run, resume=resume), run.root


def losses(root: Path, split: str = "train") -> list[float | None]:
    return [r["loss"] for r in read_jsonl(root / "metrics.jsonl") if r["split"] == split]


def adapter(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(root / "adapter" / "adapter_model.safetensors"))


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_KILL_ENV, FAULT_NAN_ENV)}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def train_cli(path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m tunebench train PATH ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "tunebench", "train", str(path), *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, data_dir) -> tuple[dict[str, Any], Path]:
    """The default config (4 steps) trained once in this process: (summary, run root). Tests
    compare other runs with it and only read its files."""
    tmp = tmp_path_factory.mktemp("reference")
    return run_train(write_config(tmp, tiny_model_dir, data_dir, "one"))


def test_identical_runs_give_identical_curves_and_files(
    tmp_path, tiny_model_dir, data_dir, reference
) -> None:
    _a, root_a = reference
    _b, root_b = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "b"))
    assert losses(root_a) == losses(root_b) and len(losses(root_a)) == 4
    assert losses(root_a, "validation") == losses(root_b, "validation")
    assert losses(root_a)[-1] < losses(root_a)[0]  # it learns
    wa, wb = adapter(root_a), adapter(root_b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = read_json(root_a / "train_summary.json")
    for key in (
        "steps",
        "train_tokens",
        "tokens_per_s",
        "best_validation_loss",
        "best_step",
        "skipped_steps",
    ):
        assert key in summary
    assert summary["steps"] == 4 and summary["gpu_type"] == "cpu" and summary["skipped_steps"] == 0
    rows = read_jsonl(root_a / "metrics.jsonl")
    assert {"step", "split", "loss", "epoch", "tokens", "wall_time", "train_time", "lr"} <= rows[0].keys()
    assert [r["tokens"] for r in rows if r["split"] == "train"] == sorted({r["tokens"] for r in rows})
    manifest = read_json(root_a / "manifest.json")
    assert manifest["stages"]["train"]["best_step"] == summary["best_step"]
    # the final adapter is the best checkpoint's; only latest + best checkpoints are kept
    kept = sorted(p.name for p in (root_a / "checkpoints").iterdir())
    assert f"step-{summary['best_step']}" in kept and "step-4" in kept and len(kept) <= 2
    # a padded (non-packed) run sees the same loss: packing changes the speed, not the maths
    _c, root_c = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "c", packing=False, max_steps=1))
    assert losses(root_c)[0] == pytest.approx(losses(root_a)[0], rel=1e-5)


def test_compiled_layers_train_like_eager(tmp_path, tiny_model_dir, data_dir) -> None:
    """training.compile (each decoder layer through torch.compile/inductor) follows eager's
    curve: same losses and adapter within fp32 rounding (dropout 0: compiled code draws its
    own random masks)."""
    eager_summary, eager = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "eager", max_steps=3))
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    options = {"compile": True}
    summary, compiled = run_train(
        write_config(tmp_path, tiny_model_dir, data_dir, "compiled", max_steps=3, **options)
    )
    assert summary["train_tokens"] == eager_summary["train_tokens"]
    # compiled, not silently eager; and no graph per step or per layer: one for the first layer
    # (its input needs no gradient), one for the others, one for validation (no_grad), whatever
    # the micro-batch lengths of the 3 steps
    assert 1 <= counters["stats"]["unique_graphs"] <= 3
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    assert losses(compiled, "validation") == pytest.approx(losses(eager, "validation"), rel=1e-4)
    we, wc = adapter(eager), adapter(compiled)
    assert we.keys() == wc.keys()  # compiling in place keeps the adapter's parameter names
    assert all(torch.allclose(we[k], wc[k], rtol=1e-3, atol=1e-5) for k in we)


def test_compiled_bf16_rounds_like_eager(tmp_path, tiny_model_dir, data_dir) -> None:
    """In bf16, compiled layers round intermediates where eager does by default
    (training.compile_eager_rounding), so their curve follows eager's more closely than
    inductor's own rounding does (on the H100: within 0.27% against 0.7-4.2% below)."""
    bf16 = {"model_dtype": "bfloat16", "max_steps": 3}
    _, eager = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "eager", **bf16))
    gaps = {}
    for rounding in (True, False):
        torch._dynamo.reset()
        name = f"rounding-{rounding}"
        opts = {**bf16, "compile": True, "compile_eager_rounding": rounding}
        _, compiled = run_train(write_config(tmp_path, tiny_model_dir, data_dir, name, **opts))
        gaps[rounding] = max(abs(c / e - 1) for c, e in zip(losses(compiled), losses(eager), strict=True))
    # CPU, tiny model: identical losses against 1.8e-5 apart (torch 2.13)
    assert gaps[True] < 1e-6 < gaps[False]
    # the layers' own option, not inductor's process-wide setting (nothing else is affected)
    assert torch._inductor.config.emulate_precision_casts is False


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_model_dir, data_dir) -> None:
    opts = {"max_steps": 6, "lora": {"dropout": 0.1}}  # dropout: RNG resumes
    full, root_full = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "full", **opts))
    path = write_config(tmp_path, tiny_model_dir, data_dir, "killed", **opts)
    # killed after step 5's update; last checkpoint: step 4
    proc = train_cli(path, **{FAULT_KILL_ENV: "5"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = tmp_path / "runs" / "killed"
    assert max(r["step"] for r in read_jsonl(root / "metrics.jsonl")) == 5
    assert not (root / "adapter").exists()
    resumed, _ = run_train(path)
    assert resumed["steps"] == 6
    assert resumed["best_validation_loss"] == pytest.approx(full["best_validation_loss"], rel=1e-6)
    assert losses(root) == pytest.approx(losses(root_full), rel=1e-6)  # step 5 logged once, redone
    wa, wb = adapter(root), adapter(root_full)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-7) for k in wa)


def test_early_stopping_keeps_the_best_adapter(tmp_path, tiny_model_dir, data_dir) -> None:
    path = write_config(
        tmp_path,
        tiny_model_dir,
        data_dir,
        "early",
        learning_rate=0.3,  # far too high: validation loss climbs after the first steps
        lr_scheduler="constant",
        warmup_steps=0,
        max_steps=12,
        eval_every=1,
        early_stopping_patience=2,
    )
    summary, root = run_train(path)
    assert summary["stopped_early"] and summary["steps"] < 12
    val = losses(root, "validation")
    assert summary["best_validation_loss"] == min(val)
    assert summary["steps"] == summary["best_step"] + 2  # two evaluations without improvement
    best = load_file(
        str(root / "checkpoints" / f"step-{summary['best_step']}" / "adapter" / "adapter_model.safetensors")
    )
    final = adapter(root)
    assert all(torch.equal(best[k], final[k]) for k in best)


def test_an_evaluation_that_cannot_be_chosen_writes_no_checkpoint(tmp_path, tiny_model_dir, data_dir) -> None:
    """A checkpoint is written at an evaluation only while its step has the lowest validation
    loss so far (or is the last step); a kill after a worse evaluation resumes from the best
    checkpoint before it, and replaying the steps since gives the uninterrupted run."""
    opts = {
        "learning_rate": 0.3,  # far too high: validation loss climbs after the first steps
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "max_steps": 7,
        "eval_every": 1,
        "lora": {"dropout": 0.1},
    }
    full, root_full = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "full", **opts))
    val = losses(root_full, "validation")
    worse = next(i for i in range(1, len(val)) if val[i] > min(val[:i])) + 1  # 1-based step
    assert worse < 7
    path = write_config(tmp_path, tiny_model_dir, data_dir, "killed", **opts)
    assert train_cli(path, **{FAULT_KILL_ENV: str(worse + 1)}).returncode == -9
    root = tmp_path / "runs" / "killed"
    written = sorted(int(p.name.split("-")[1]) for p in (root / "checkpoints").glob("step-*"))
    best_before = 1 + min(range(worse - 1), key=lambda i: val[i])
    assert written == [best_before] and best_before < worse
    resumed, _ = run_train(path)
    assert resumed["steps"] == 7 and resumed["best_step"] == full["best_step"]
    assert losses(root) == pytest.approx(losses(root_full), rel=1e-6)
    assert losses(root, "validation") == pytest.approx(val, rel=1e-6)
    wa, wb = adapter(root), adapter(root_full)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-7) for k in wa)


def test_non_finite_step_is_skipped_and_counted(tmp_path, tiny_model_dir, data_dir, monkeypatch) -> None:
    _clean, root_clean = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "clean", max_steps=2))
    monkeypatch.setenv(FAULT_NAN_ENV, "2")
    summary, root = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "nan", max_steps=3))
    rows = [r for r in read_jsonl(root / "metrics.jsonl") if r["split"] == "train"]
    assert rows[1]["skipped"] is True and rows[1]["loss"] is None
    assert "skipped" not in rows[0] and "skipped" not in rows[2]
    assert summary["skipped_steps"] == 1
    assert all(torch.isfinite(w).all() for w in adapter(root).values())
    # the skipped step changed nothing: step 3 trains on step 3's data from step 1's weights
    assert math.isfinite(rows[2]["loss"]) and rows[0]["loss"] == losses(root_clean)[0]
    monkeypatch.setenv(FAULT_NAN_ENV, "1,2")
    with pytest.raises(
        TunebenchError, match=r"aborted at step 2: 2 non-finite steps \(> training.max_bad_steps 1\)"
    ):
        run_train(write_config(tmp_path, tiny_model_dir, data_dir, "abort", max_bad_steps=1))


def test_a_checkpoint_before_the_first_update_leaves_training_unchanged(
    tmp_path, tiny_model_dir, data_dir, monkeypatch
) -> None:
    """Steps 1-2 non-finite (skipped): saving at step 2 finds AdamW without state. Gathering it
    by name would run a zero-gradient step() and shift every later bias correction."""
    monkeypatch.setenv(FAULT_NAN_ENV, "1,2")
    opts = {"max_steps": 5, "max_bad_steps": 2}
    _a, saved_early = run_train(
        write_config(tmp_path, tiny_model_dir, data_dir, "early", eval_every=2, **opts)
    )
    _b, saved_late = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "late", eval_every=5, **opts))
    assert losses(saved_early) == losses(saved_late)
    wa, wb = adapter(saved_early), adapter(saved_late)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_non_finite_step_is_skipped_without_touching_adamw(
    tmp_path, tiny_model_dir, data_dir, monkeypatch
) -> None:
    """A non-finite step changes nothing: the next step starts from the same weights, the
    schedule holds, AdamW's moments, decay and step count stay; too many of them abort the run,
    naming the step that crossed the limit."""
    monkeypatch.setenv(FAULT_NAN_ENV, "2")
    _n, nan_run = run_train(
        write_config(tmp_path, tiny_model_dir, data_dir, "nan", max_steps=3, eval_every=10)
    )
    rows = [r for r in read_jsonl(nan_run / "metrics.jsonl") if r["split"] == "train"]
    assert rows[1]["skipped"] is True and rows[1]["loss"] is None
    assert "skipped" not in rows[0] and "skipped" not in rows[2]
    assert rows[2]["lr"] == rows[1]["lr"]  # the schedule is held back over the skipped step
    assert all(torch.isfinite(w).all() for w in adapter(nan_run).values())

    flat = {"max_steps": 4, "eval_every": 10, "lr_scheduler": "constant", "warmup_steps": 0}
    run_train(write_config(tmp_path, tiny_model_dir, data_dir, "flat", weight_decay=0.1, **flat))
    saved = torch.load(
        tmp_path / "runs" / "flat" / "checkpoints" / "step-4" / "optimizer.pt", weights_only=False
    )
    assert {float(v["step"]) for v in saved["state"].values()} == {3.0}  # 3 counted steps of 4

    monkeypatch.setenv(FAULT_NAN_ENV, "1,3")
    with pytest.raises(
        TunebenchError, match=r"aborted at step 3: 2 non-finite steps \(> training.max_bad_steps 1\)"
    ):
        run_train(write_config(tmp_path, tiny_model_dir, data_dir, "abort", max_bad_steps=1, eval_every=4))


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_a_kbit_base_trains_its_adapter(tmp_path, tiny_model_dir, data_dir, kind) -> None:
    """LoRA over a bitsandbytes 8-/4-bit base (bitsandbytes' CPU backend), as the study trained
    Code Llama 34B: finite losses, no skipped step, a saved adapter whose B matrices moved off
    zero, and a validation loss near the dense base's (the quantised weights are close)."""
    pytest.importorskip("bitsandbytes")
    dense, _root = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "dense", max_steps=2))
    summary, root = run_train(
        write_config(tmp_path, tiny_model_dir, data_dir, kind, max_steps=2, model_quantization=kind)
    )
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    assert all(math.isfinite(x) for x in losses(root))
    weights = adapter(root)
    assert any(k.endswith("lora_B.weight") and w.abs().sum() > 0 for k, w in weights.items())
    assert summary["best_validation_loss"] == pytest.approx(dense["best_validation_loss"], rel=0.05)
    # export merges the adapter into the unquantized base: W + (alpha / r) * B @ A
    from tunebench.providers.export import export_merged
    from tunebench.rundir import RunDir

    cfg = load_experiment(tmp_path / f"{kind}.yaml")
    merged = load_file(str(export_merged(cfg, RunDir(root)) / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    lora_a, lora_b = (weights[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
    scale = cfg.lora.alpha / cfg.lora.r
    expected = base[f"{name}.weight"].float() + scale * lora_b.float() @ lora_a.float()
    torch.testing.assert_close(merged[f"{name}.weight"].float(), expected, rtol=1e-4, atol=1e-5)


def test_bad_target_modules_fail_before_training(tmp_path, tiny_model_dir, data_dir) -> None:
    path = write_config(tmp_path, tiny_model_dir, data_dir, "badtarget", lora={"target_modules": ["qproj"]})
    with pytest.raises(TunebenchError, match=r"lora\.target_modules: qproj match no module"):
        run_train(path)
    assert not (tmp_path / "runs" / "badtarget" / "metrics.jsonl").exists()


# 2 processes on gloo: DDP (a full copy each) or FSDP2 (each process holds half of every weight)
SHARDING = {
    "ddp": ["--gpus", "2"],
    "fsdp": ["--gpus", "2", "--set", "training.fsdp=true"],
}


def assert_equals_one_process(
    root: Path, stderr: str, reference: tuple[dict[str, Any], Path], sharding: str
) -> None:
    """The 2-process run in ``root`` trained what the 1-process ``reference`` run did."""
    one, root_one = reference
    # where bitsandbytes is installed, its CPU-kernel notice is not printed by every process
    assert "gemm_4bit_forward" not in stderr
    two = read_json(root / "train_summary.json")
    assert two["processes"] == 2 and two["sharding"] == sharding
    assert two["best_validation_loss"] == pytest.approx(one["best_validation_loss"], rel=1e-5)
    assert losses(root) == pytest.approx(losses(root_one), rel=1e-5)
    assert losses(root, "validation") == pytest.approx(losses(root_one, "validation"), rel=1e-5)
    assert two["train_tokens"] == one["train_tokens"]
    wa, wb = adapter(root), adapter(root_one)
    assert wa.keys() == wb.keys() and wa  # FSDP: the saved adapter is gathered whole, not a shard
    assert all(wa[k].shape == wb[k].shape and torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    rows = read_jsonl(root / "metrics.jsonl")  # the main process alone writes the log
    assert len(rows) == len({(r["step"], r["split"]) for r in rows})
    assert json.loads(json.dumps(two))["gpu_count"] == 0


@pytest.mark.slow
def test_two_processes_on_gloo_equal_one_process(tmp_path, tiny_model_dir, data_dir, reference) -> None:
    """DDP here; FSDP from scratch is compared the same way in the `tunebench run --gpus 2` test."""
    path = write_config(tmp_path, tiny_model_dir, data_dir, "two")
    proc = train_cli(path, *SHARDING["ddp"], OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_equals_one_process(tmp_path / "runs" / "two", proc.stderr, reference, "ddp")


@pytest.fixture(scope="module")
def killed_at_step_3(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    """A default-config run killed (SIGKILL) on 1 process after step 3 (checkpoint: step 2): the
    folder holding its config and runs/. Tests resume copies of it."""
    tmp = tmp_path_factory.mktemp("killed")
    path = write_config(tmp, tiny_model_dir, data_dir, "moved")
    killed = train_cli(path, **{FAULT_KILL_ENV: "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(r["step"] for r in read_jsonl(tmp / "runs" / "moved" / "metrics.jsonl")) == 3
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("sharding", SHARDING)
def test_resume_on_a_different_process_count(
    tmp_path, tiny_model_dir, data_dir, sharding, reference, killed_at_step_3
) -> None:
    """Killed on 1 process after step 3 (checkpoint: step 2), resumed on 2 (DDP or FSDP, whose
    optimizer states are sharded: checkpoints are keyed by parameter name): same result."""
    one, root_one = reference
    shutil.copytree(killed_at_step_3 / "runs", tmp_path / "runs")
    path = write_config(tmp_path, tiny_model_dir, data_dir, "moved")
    proc = train_cli(path, *SHARDING[sharding], OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "step-2" in proc.stderr
    root = tmp_path / "runs" / "moved"
    assert read_json(root / "train_summary.json")["best_validation_loss"] == pytest.approx(
        one["best_validation_loss"], rel=1e-5
    )
    assert losses(root) == pytest.approx(losses(root_one), rel=1e-5)
    wa, wb = adapter(root), adapter(root_one)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wb)


@pytest.mark.slow
def test_run_on_two_processes_trains_and_predicts_on_both(
    tmp_path, tiny_model_dir, data_dir, reference
) -> None:
    """`tunebench run CONFIG --gpus 2`: training and predictions launched on 2 processes, scoring
    and cost once, in the calling process; the FSDP training equals the 1-process run."""
    path = write_config(tmp_path, tiny_model_dir, data_dir, "whole")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["generation"] = {"max_new_tokens": 8}
    raw["runs_dir"] = "runs"  # relative: the run directory is tmp_path/runs/whole from tmp_path
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tunebench", *args]
        env = cli_env(OMP_NUM_THREADS="1")
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)

    assert cli("prepare", str(path), cwd=tmp_path).returncode == 0  # run dir made, FSDP off
    root = tmp_path / "runs" / "whole"
    # from another folder, pointing at the same runs, with an operational change (FSDP on):
    # the launched processes must use this command's config, not the stored config.yaml
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli(
        "run", str(path), "--gpus", "2", "--set", f"runs_dir={tmp_path / 'runs'}", "--set", "training.fsdp=true",
        cwd=elsewhere,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (elsewhere / "runs").exists()
    assert_equals_one_process(root, proc.stderr, reference, "fsdp")
    stages = read_json(root / "manifest.json")["stages"]
    assert stages["predict:test"]["processes"] == 2
    assert {"evaluate:test", "cost"} <= stages.keys()
    assert len(read_jsonl(root / "predictions" / "test.jsonl")) == 8


def stop_a_transformers_trainer_mid_accumulation(model_dir: Path, out: Path) -> None:
    """What a notebook user may have done before calling tunebench: a transformers.Trainer with
    gradient accumulation that died in its first forward. It leaves accelerate's process-wide
    GradientState saying "gradients not in sync"."""
    from accelerate.state import GradientState
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(model_dir)

    def die(*_args: Any) -> None:
        raise RuntimeError("stopped")

    model.register_forward_pre_hook(die)
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * 4
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=1, gradient_accumulation_steps=2,
        max_steps=1, report_to=[], use_cpu=True, save_strategy="no",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="stopped"):
        Trainer(model=model, args=args, train_dataset=rows).train()
    assert GradientState().sync_gradients is False  # the state the loop must not depend on


def test_training_ignores_accelerate_state_left_by_another_trainer(
    tmp_path, tiny_model_dir, data_dir
) -> None:
    from accelerate.state import AcceleratorState, GradientState

    _clean, root_clean = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "clean", max_steps=2))
    stop_a_transformers_trainer_mid_accumulation(tiny_model_dir, tmp_path / "hf")
    try:
        _after, root = run_train(write_config(tmp_path, tiny_model_dir, data_dir, "after", max_steps=2))
    finally:
        GradientState._reset_state()
        AcceleratorState._reset_state(reset_partial_state=True)
    assert losses(root) == losses(root_clean)
    clean, after = adapter(root_clean), adapter(root)
    assert all(torch.equal(clean[k], after[k]) for k in clean)


def test_pick_prefers_the_metric_then_the_loss() -> None:
    def c(step: int, loss: float, value: float | None) -> dict[str, Any]:
        return {"step": step, "validation_loss": loss, "metric": "m", "value": value}

    assert pick([c(10, 0.20, 0.50), c(20, 0.10, 0.40)])["step"] == 10  # metric beats loss
    assert pick([c(10, 0.20, 0.40), c(20, 0.10, 0.40)])["step"] == 20  # tie: lower loss
    assert pick([c(10, 0.10, 0.40), c(20, 0.10, 0.40)])["step"] == 10  # then the earlier step
    assert pick([c(10, 0.10, None), c(20, 0.30, 0.0)])["step"] == 20  # no score ranks last


def test_checkpoint_chosen_by_validation_metric(tmp_path, tiny_model_dir, data_dir) -> None:
    from tunebench.pipeline import train_stage

    path = write_config(
        tmp_path, tiny_model_dir, data_dir, "chosen", max_steps=5, eval_every=1,
        select_checkpoint_by="validation_metric", checkpoints_to_compare=3,
    )  # fmt: skip
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["generation"] = {"max_new_tokens": 12}
    raw["eval_splits"] = ["validation", "test"]
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_experiment(path)
    run = open_run(cfg)
    from tunebench.pipeline import ensure_prepared

    ensure_prepared(cfg, run)
    train_stage(cfg, run)
    record = read_json(run.root / "checkpoint_choice.json")
    val = {r["step"]: r["loss"] for r in read_jsonl(run.metrics_log) if r["split"] == "validation"}
    lowest = sorted(val, key=lambda step: (val[step], step))[:3]
    assert [c["step"] for c in record["candidates"]] == lowest  # scored in loss order
    assert {c["metric"] for c in record["candidates"]} == {"suite_accuracy"}  # no real DB for held-out
    assert all(0.0 <= c["value"] <= 1.0 for c in record["candidates"])
    assert record["chosen_step"] == pick(record["candidates"])["step"]
    chosen = load_file(
        str(run.checkpoints_dir / f"step-{record['chosen_step']}" / "adapter" / "adapter_model.safetensors")
    )
    published = adapter(run.root)
    assert all(torch.equal(chosen[k], published[k]) for k in chosen)
    for step in lowest:  # every candidate kept, its predictions and metrics on disk
        scratch = run.root / "checkpoint_choice" / f"step-{step}"
        assert (scratch / "predictions" / "validation.jsonl").is_file()
        assert (scratch / "eval" / "validation" / "metrics.json").is_file()
    choose = run.manifest()["stages"]["choose"]
    assert choose["chosen_step"] == record["chosen_step"]
    assert choose["wall_time_s"] > 0  # three candidates loaded, predicted and scored
    spent = choose["gpu_time_s"]
    assert spent > 0 and spent <= choose["wall_time_s"]
    assert read_json(run.train_summary)["chosen_step"] == record["chosen_step"]

    # rerun (as after `tunebench train` on a finished run, whose finish() republishes another
    # adapter): the scored candidates are read back, and the chosen adapter is published again
    other = next(step for step in lowest if step != record["chosen_step"])
    shutil.rmtree(run.adapter_dir)
    shutil.copytree(run.checkpoints_dir / f"step-{other}" / "adapter", run.adapter_dir)
    written = {
        step: (run.root / "checkpoint_choice" / f"step-{step}" / "predictions" / "validation.jsonl")
        .stat()
        .st_mtime_ns
        for step in lowest
    }
    assert choose_checkpoint(cfg, run)["chosen_step"] == record["chosen_step"]
    assert run.manifest()["stages"]["choose"]["gpu_time_s"] == spent  # read back: same cost
    published = adapter(run.root)
    assert all(torch.equal(chosen[k], published[k]) for k in chosen)
    for step in lowest:
        path = run.root / "checkpoint_choice" / f"step-{step}" / "predictions" / "validation.jsonl"
        assert path.stat().st_mtime_ns == written[step]
    # a checkpoint written again (a retrained run) is scored again, from its new files
    weights = run.checkpoints_dir / f"step-{other}" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())
    choose_checkpoint(cfg, run)
    again = run.root / "checkpoint_choice" / f"step-{other}" / "predictions" / "validation.jsonl"
    assert again.stat().st_mtime_ns != written[other]

    # the rest of the pipeline takes the chosen candidate's validation predictions as its own
    from tunebench.pipeline import run_experiment
    from tunebench.providers.choose import reuse_chosen_predictions

    leftover = run.predictions("validation").with_name("validation.rank1-of-2.partial.jsonl")
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text("", encoding="utf-8")  # as an interrupted `predict --gpus 2` leaves it
    run_experiment(cfg)
    assert not leftover.exists()
    step = read_json(run.root / "checkpoint_choice.json")["chosen_step"]
    stages = run.manifest()["stages"]
    assert stages["predict:validation"]["reused_from"] == f"checkpoint_choice/step-{step}"
    source = run.root / "checkpoint_choice" / f"step-{step}" / "predictions" / "validation.jsonl"
    assert run.predictions("validation").read_bytes() == source.read_bytes()
    assert "reused_from" not in stages["predict:test"] and run.predictions("test").is_file()
    assert "also in training" in read_json(run.cost_path)["inference"]["validation"]["note"]
    # with another checkpoint's adapter published, nothing is taken
    different = next(s for s in lowest if s != step)
    shutil.rmtree(run.adapter_dir)
    shutil.copytree(run.checkpoints_dir / f"step-{different}" / "adapter", run.adapter_dir)
    assert not reuse_chosen_predictions(cfg, run, "validation")


def test_headline_metric_of_a_task_with_nothing_scored(tmp_path) -> None:
    from tunebench.config import TaskConfig
    from tunebench.tasks import get_task

    data = tmp_path / "rows.jsonl"
    data.write_text('{"q": "a", "a": "b"}\n', encoding="utf-8")
    custom = TaskConfig(
        name="custom", train_file=str(data), test_file=str(data), prompt_template="{q}", target_field="a",
        metrics=["json_match"],
    )  # fmt: skip
    assert get_task(custom).headline_metric({"metrics": ["json_match"], "json_match": None}) == (
        "json_match",
        None,
    )
    sql = get_task(TaskConfig(name="sql"))
    assert sql.headline_metric(
        {"execution_n": 0, "execution_accuracy": None, "suite_n": 4, "suite_accuracy": 0.5}
    ) == (
        "suite_accuracy",
        0.5,
    )
    assert sql.headline_metric(
        {"execution_n": 3, "execution_accuracy": 0.25, "suite_n": 4, "suite_accuracy": 0.5}
    ) == (
        "execution_accuracy",
        0.25,
    )


def test_logs_without_a_terminal_carry_what_the_bars_show(tmp_path, tiny_model_dir, data_dir) -> None:
    """`tunebench run` into a pipe: training lines with loss, validation loss and tokens/s, a
    prediction progress line, and no carriage-return bar updates."""
    path = write_config(tmp_path, tiny_model_dir, data_dir, "logged", max_steps=4)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["generation"] = {"max_new_tokens": 4}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "tunebench", "run", str(path)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    last_train = [ln for ln in lines if ln.startswith("train step 4/4")]
    assert last_train and "loss " in last_train[0] and "validation loss " in last_train[0]
    assert "tokens/s" in last_train[0]
    assert any(ln.startswith("train step 1/4") and "ETA" in ln for ln in lines)
    assert any(ln.startswith("predict test: 8/8") and "predictions/s" in ln for ln in lines)
    assert "\r" not in proc.stderr
