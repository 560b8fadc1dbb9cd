"""Build a training run from its config: the model with what it trains (a LoRA adapter, or
every weight: :mod:`.method`), the optimizer, the learning-rate schedule and the tokenized
data, restored from the latest checkpoint on resume.

:func:`build` is the only place that turns configuration into objects; :mod:`.loop` then only
runs steps over what it returns.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import iter_jsonl, write_jsonl
from tunebench.models import resolve_dtype
from tunebench.rundir import RunDir
from tunebench.tasks import get_task
from tunebench.tasks.base import load_prepared
from tunebench.training import checkpoint as ckpt
from tunebench.training import fsdp
from tunebench.training.data import TokenizedExample, TokenizeStats, tokenize_examples
from tunebench.training.lora import LossModel, causal_lm, liger_loss_fn, load_base
from tunebench.training.method import Method, training_method
from tunebench.training.mfu import model_flops_per_token


@dataclass
class TrainState:
    """Everything a checkpoint's ``state.json`` holds besides tensors and RNGs."""

    step: int = 0
    tokens: int = 0
    wall_time: float = 0.0
    train_time: float = 0.0  # in training steps only (no validation, no saving)
    best_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False
    # [step, loss] of every validation so far: which evaluations' checkpoints can still serve
    validation_losses: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Built:
    """What one training run works on."""

    model: Any  # the peft model (adapter + frozen base), or the causal LM itself (method full)
    method: Method
    loss_model: torch.nn.Module  # what DDP/FSDP wraps and the loop calls
    bare_loss_model: torch.nn.Module  # the same without a DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.nn.Parameter]
    train_set: list[TokenizedExample]
    val_set: list[TokenizedExample]
    train_stats: TokenizeStats
    total_steps: int
    flops_per_token: float
    dtype: torch.dtype
    pad_id: int
    state: TrainState = field(default_factory=TrainState)


def total_steps(config: ExperimentConfig, n_train: int) -> int:
    tc = config.training
    if tc.max_steps is not None:
        return tc.max_steps
    assert tc.epochs is not None
    return max(1, math.ceil(tc.epochs * n_train / tc.batch_size))


def fused_adamw(device_type: str, sharded: bool) -> bool:
    """Fused AdamW (one kernel for every LoRA tensor) on one GPU or DDP, where the default
    multi-tensor AdamW launches dozens of small kernels per step while the GPU waits on the host.
    Not under FSDP, whose parameters are DTensor shards."""
    return device_type == "cuda" and not sharded


def make_optimizer(tc: Any, params: list[torch.nn.Parameter], fused: bool) -> torch.optim.Optimizer:
    """``training.optimizer``: torch's AdamW, or bitsandbytes' 8-bit AdamW (moments in a byte)."""
    if tc.optimizer == "adamw_8bit":
        try:
            from bitsandbytes.optim import AdamW8bit
        except ImportError as err:
            raise TunebenchError(
                "training.optimizer adamw_8bit needs bitsandbytes (pip install bitsandbytes)"
            ) from err
        return AdamW8bit(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(
        params, lr=tc.learning_rate, weight_decay=tc.weight_decay, fused=True if fused else None
    )


def prepared_or_empty(run: RunDir, split: str) -> list[Any]:
    path = run.prepared(split)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return []
    return load_prepared(run, split)


def build(config: ExperimentConfig, run: RunDir, acc: Any, resume: bool, say: Any) -> Built:
    """Model, optimizer, schedule and data for ``config`` (``acc``: the accelerate
    Accelerator); restored from the latest checkpoint when ``resume`` finds one."""
    from transformers import get_scheduler

    tc = config.training
    device, main = acc.device, acc.is_main_process
    sharded = tc.fsdp and acc.num_processes > 1
    if not run.stage_done("prepare"):
        raise TunebenchError(f"{run.root}: the prepare stage has not run (`tunebench prepare CONFIG`)")
    base, tokenizer, eos_id, pad_id = load_base(config, device)
    if tc.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    method = training_method(tc.method)
    model = method.prepare(base, config)
    # the compute dtype the config asks for, not the first parameter's: a k-bit base keeps its
    # embeddings and norms in float32 (peft's preparation) but computes in bfloat16
    dtype = resolve_dtype(config.model.dtype, device)
    tokenize = dict(
        tokenizer=tokenizer,
        eos_id=eos_id,
        suffix=get_task(config.task).completion_suffix,
        max_length=tc.max_length,
        loss_on=tc.loss_on,
    )
    train_set, train_stats = tokenize_examples(load_prepared(run, "train"), **tokenize)
    val = prepared_or_empty(run, "validation")
    val_set, _ = tokenize_examples(val, split="validation", **tokenize) if val else ([], None)
    if train_stats.truncated and main:
        say(
            f"{train_stats.truncated} of {train_stats.examples} training prompts were cut from "
            f"the left to fit training.max_length {tc.max_length}"
        )
    fused_loss = liger_loss_fn() if tc.liger and device.type == "cuda" else None
    if tc.compile:
        compile_layers(causal_lm(model), eager_rounding=tc.compile_eager_rounding)
    resume_from = restore_weights(method, model, run, resume, main, say)  # before FSDP shards it
    acc.wait_for_everyone()
    loss_model = LossModel(model, fused_loss)
    if sharded:
        fsdp.shard(loss_model, list(causal_lm(model).get_decoder().layers), dtype)
    params = [p for p in loss_model.parameters() if p.requires_grad]  # FSDP: the local shards
    optimizer = make_optimizer(tc, params, fused=fused_adamw(device.type, sharded))
    steps = total_steps(config, len(train_set))
    scheduler = get_scheduler(
        tc.lr_scheduler, optimizer, num_warmup_steps=tc.warmup_steps, num_training_steps=steps
    )
    # The optimizer stays a plain torch one: accelerate's wrapper steps only when its
    # process-wide GradientState says gradients are in sync, state that another library's loop
    # in the same process (a transformers.Trainer stopped mid-accumulation) can leave False,
    # and then no update would ever happen. The loop syncs by itself.
    wrapped = loss_model if sharded else acc.prepare(loss_model)  # FSDP: sharded already
    bare = wrapped if sharded else acc.unwrap_model(wrapped)
    state = TrainState()
    if resume_from is not None:
        restored = ckpt.load_checkpoint(resume_from, bare, optimizer, scheduler)
        state = TrainState(**restored["state"])
        ckpt.set_rng_state(restored["rng"])
    context = sum(len(ex) for ex in train_set) / len(train_set)
    labeled = train_stats.labeled_tokens / max(1, train_stats.tokens)
    return Built(
        model=model,
        method=method,
        loss_model=wrapped,
        bare_loss_model=bare,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        train_set=train_set,
        val_set=val_set,
        train_stats=train_stats,
        total_steps=steps,
        flops_per_token=model_flops_per_token(model, context, labeled),
        dtype=dtype,
        pad_id=pad_id,
        state=state,
    )


def restore_weights(
    method: Method, model: Any, run: RunDir, resume: bool, main: bool, say: Any
) -> Path | None:
    """Load the trained weights of the latest checkpoint (resume; its log rows after that step
    are dropped) or clear a previous attempt. Returns the checkpoint resumed from."""
    root = run.checkpoints_dir
    latest = ckpt.latest_checkpoint(root) if resume else None
    if latest is not None:
        if not (latest / method.folder).is_dir():
            raise TunebenchError(
                f"{latest}: holds no {method.folder}/ (trained with another training.method?); "
                "rerun with --no-resume to start over"
            )
        method.restore(model, latest / method.folder)
        step = ckpt.load_state(latest)["step"]
        if main:
            say(f"resuming from {latest} (step {step})")
            rows = list(iter_jsonl(run.metrics_log)) if run.metrics_log.is_file() else []
            write_jsonl(run.metrics_log, [r for r in rows if r.get("step", 0) <= step])
    elif main:
        shutil.rmtree(root, ignore_errors=True)
        run.metrics_log.unlink(missing_ok=True)
    return latest


def compile_layers(model: torch.nn.Module, eager_rounding: bool = True) -> None:
    """torch.compile each decoder layer in place (``nn.Module.compile``: parameter names, and
    thus saved adapters, are unchanged).

    Per layer, not the whole decoder: the layers share one forward function and, with their
    parameters as graph inputs, one compiled graph, so compile time does not grow with depth.
    ``dynamic``: packed micro-batches change their token count every step. ``eager_rounding``:
    inductor rounds bf16 intermediates where eager does (its ``emulate_precision_casts``), so
    the compiled loss curve follows eager's; passed as these layers' own options, which
    inductor also applies to the backward it compiles later, so nothing else compiled in the
    process (a static-cache decode step, say) is affected.
    """
    options: dict[str, Any] = {"emulate_precision_casts": eager_rounding}
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True, options=options)
