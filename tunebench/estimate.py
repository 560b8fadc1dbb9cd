"""``tunebench estimate``: what each cell of an experiment or a study will need and cost, from
its config and data alone (no weights, nothing trained, nothing written).

Local cells: parameters, trainable parameters (LoRA's, or all with ``training.method: full``),
peak memory by part (:func:`tunebench.sizing.full_memory_parts` for full fine-tuning) and whether
it fits the card, training tokens (the prepared train split x the steps the config asks for: an upper bound
when early stopping ends sooner), tokens/s, time and $ from :mod:`tunebench.sizing`, and a rough
prediction time. OpenAI cells: the same estimate as ``tunebench openai estimate``.

Token counts come from the model's tokenizer when it is on disk (a local folder, or a preset
already converted in the cache); otherwise from characters at :data:`CHARS_PER_TOKEN`, and each
row says which.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunebench import sizing
from tunebench.config import (
    ExperimentConfig,
    LoraConfig,
    TrainingConfig,
    load_experiment,
    load_yaml,
    looks_like_study,
)
from tunebench.errors import TunebenchError
from tunebench.prices import GpuCard, GpuPrice, gpu_card

#: Characters per token of the prepared examples (prompt + target) when no tokenizer is on disk:
#: Qwen2.5's tokenizer gave 4.51 (SQL) and 4.58 (ViGGO) characters a token: the train splits'
#: mean characters per example over the committed H100 runs' tokens per example (train_tokens /
#: steps / batch, less the 2 special tokens). Llama's 32k vocabulary splits finer, so counts for
#: Code Llama from characters are likely low.
CHARS_PER_TOKEN = 4.5
DEFAULT_GPU = "H100"
#: Decoding reads the weights once per generated token of a batch; about this share of peak
#: bandwidth is reached (a rough figure, not calibrated).
DECODE_BANDWIDTH_SHARE = 0.6
#: The figures of a cell with no model of ours to size (a server, a vote): unknown, and still
#: present, so every ``--json`` object has the same keys.
UNSIZED: dict[str, Any] = dict.fromkeys(
    [
        "gpu",
        "params",
        "trainable_params",
        "peak_memory_gib",
        "fits",
        "train_tokens",
        "train_tokens_per_s",
        "train_seconds",
        "train_usd",
        "predict_seconds",
        "predict_usd",
    ]
)


def load_cells(path: Path, overrides: dict[str, Any] | None = None) -> list[tuple[str, ExperimentConfig]]:
    """(cell name, config) of every cell of a study, or the one experiment."""
    data = load_yaml(path)
    if looks_like_study(data):
        from tunebench.config.study import expand, load_study

        return [(cell.config.name, cell.config) for cell in expand(load_study(path), overrides, str(path))]
    cfg = load_experiment(path, overrides)
    return [(cfg.name, cfg)]


def estimate(
    path: Path, gpu: str | None = None, overrides: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per cell (see the module doc)."""
    card = gpu_card(gpu) if gpu else None
    data_cache: dict[str, Any] = {}
    return [
        estimate_cell(name, cfg, card, data_cache, str(path)) for name, cfg in load_cells(path, overrides)
    ]


def estimate_cell(
    name: str, cfg: ExperimentConfig, card: GpuCard | None, data_cache: dict[str, Any], source: str = "config"
) -> dict[str, Any]:
    row: dict[str, Any] = {"cell": name, "provider": cfg.provider, "model": cfg.model_label}
    if "openai" in cfg.own_sections:  # a fine-tuning API: its own estimate
        return {**row, **openai_row(cfg, data_cache)}
    if "model" not in cfg.own_sections:  # no model of ours to size (a server, a vote)
        return {**row, **UNSIZED, "note": f"provider {cfg.provider}: nothing to size"}
    card = card or cost_card(cfg, f"{source}: cell {name}")
    return {**row, **local_row(cfg, card, data_cache)}


def cost_card(cfg: ExperimentConfig, where: str) -> GpuCard:
    """The card cost.gpu_type names (H100 when unset); an unknown one says how to choose."""
    try:
        return gpu_card(cfg.cost.gpu_type or DEFAULT_GPU)
    except TunebenchError as exc:
        raise TunebenchError(f"{where}: cost.gpu_type: {exc}; or pass --gpu NAME") from None


def training_of(cfg: ExperimentConfig) -> TrainingConfig:
    """The run's training settings; a run that trains nothing is sized with the defaults."""
    return getattr(cfg, "training", None) or TrainingConfig()


def lora_of(cfg: ExperimentConfig) -> LoraConfig:
    return getattr(cfg, "lora", None) or LoraConfig()


def splits_for(cfg: ExperimentConfig, data_cache: dict[str, Any]) -> dict[str, Any]:
    """The task's splits with the config's caps (cached per task section: cells share data)."""
    from tunebench.tasks import get_task

    key = cfg.task.model_dump_json()
    if key not in data_cache:
        data_cache[key] = get_task(cfg.task).splits()
    return data_cache[key]


def example_tokens(cfg: ExperimentConfig, examples: list[Any]) -> tuple[list[int], list[int], str]:
    """(total tokens, target tokens) per example and how they were counted."""
    tokenizer = local_tokenizer(cfg)
    if tokenizer is not None:
        prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
        targets = tokenizer([ex.completion for ex in examples], add_special_tokens=False)["input_ids"]
        totals = [
            min(training_of(cfg).max_length, len(p) + len(t) + 2)
            for p, t in zip(prompts, targets, strict=True)
        ]
        return totals, [len(t) + 1 for t in targets], "tokenizer"
    totals = [
        min(training_of(cfg).max_length, round((len(ex.prompt) + len(ex.completion)) / CHARS_PER_TOKEN) + 2)
        for ex in examples
    ]
    targets = [round(len(ex.completion) / CHARS_PER_TOKEN) + 1 for ex in examples]
    return totals, targets, f"characters / {CHARS_PER_TOKEN}"


def local_tokenizer(cfg: ExperimentConfig) -> Any | None:
    """The model's tokenizer when it is on disk already (nothing is downloaded or converted)."""
    from tunebench.models import PRESETS, cache_root, load_tokenizer

    name = cfg.model.name
    folder = cache_root(cfg.model.cache_dir) / name if name.lower() in PRESETS else Path(name).expanduser()
    if not (folder / "tokenizer_config.json").is_file():
        return None
    return load_tokenizer(str(folder))


def training_steps(cfg: ExperimentConfig, n_train: int) -> int:
    """Optimizer steps the loop runs: max_steps, else epochs over the train split."""
    tc = training_of(cfg)
    if tc.max_steps is not None:
        return tc.max_steps
    return max(1, math.ceil((tc.epochs or 1.0) * n_train / tc.batch_size))


def local_row(cfg: ExperimentConfig, card: GpuCard, data_cache: dict[str, Any]) -> dict[str, Any]:
    arch = sizing.resolve_architecture(cfg.model.name)
    splits = splits_for(cfg, data_cache)
    counts = sizing.parameter_counts(arch)
    train = splits["train"]
    totals, targets, counted = example_tokens(cfg, train) if train else ([1], [1], "no examples")
    mean = sum(totals) / len(totals)
    tc = training_of(cfg)
    labeled = sum(targets) / sum(totals) if tc.loss_on == "completion" else 1.0
    step_tokens = tc.batch_size * mean
    if tc.packing:
        # the packer gives an example longer than the budget a micro-batch of its own: never
        # more micro-batches than examples
        micro_batches = max(1, min(tc.batch_size, math.ceil(step_tokens / tc.tokens_per_micro_batch)))
    else:
        micro_batches = max(1, math.ceil(tc.batch_size / tc.micro_batch_size))
    setup = sizing.Setup(
        r=lora_of(cfg).r,
        targets=lora_of(cfg).target_modules
        if isinstance(lora_of(cfg).target_modules, str)
        else tuple(lora_of(cfg).target_modules),
        quantization=cfg.model.quantization,
        tokens_per_micro_batch=max(1, round(step_tokens / micro_batches)),
        micro_batches_per_step=micro_batches,
        context=mean,
        labeled_fraction=labeled,
        gradient_checkpointing=tc.gradient_checkpointing,
        fused_loss=tc.liger,
        compile=tc.compile,
        optimizer=tc.optimizer,
    )
    price = hourly_price(cfg, card)
    per_hour = price.price_per_hour if price else None
    row: dict[str, Any] = {
        "gpu": card.key,
        "projection": card.key not in sizing.MEASURED_CARDS,
        "params": counts["total"],
        "quantization": cfg.model.quantization,
        "tokens_counted_by": counted,
        "price_per_hour": per_hour,
        "price_date": price.date if price else None,
    }
    full = tc.method == "full" and "training" in cfg.own_sections
    memory_of = sizing.full_memory_parts if full else sizing.memory_parts
    memory = memory_of(arch, setup)
    without_ckpt = memory_of(arch, _with(setup, gradient_checkpointing=False))
    with_ckpt = memory_of(arch, _with(setup, gradient_checkpointing=True))
    if "training" in cfg.own_sections:
        speed = sizing.throughput(arch, setup, card)
        lora_trainable = sizing.lora_parameters(arch, setup.r, setup.targets)
        if full:  # the LoRA speed model at full fine-tuning's FLOPs (see full_training_speed)
            speed = full_training_speed(arch, setup, speed, lora_trainable)
            row["speed_note"] = "LoRA speed model scaled to full fine-tuning's FLOPs per token"
        steps = training_steps(cfg, len(train))
        train_tokens = round(steps * step_tokens)
        seconds = train_tokens / speed["tokens_per_s"]
        row.update(
            method=tc.method,
            trainable_params=counts["total"] if full else lora_trainable,
            peak_memory_gib=round(memory["total"], 2),
            memory_parts_gib={k: round(v, 3) for k, v in memory.items()},
            peak_memory_without_checkpointing_gib=round(without_ckpt["total"], 2),
            peak_memory_with_checkpointing_gib=round(with_ckpt["total"], 2),
            fits=memory["total"] <= card.memory_gib,
            tokens_per_micro_batch=setup.tokens_per_micro_batch,
            train_steps=steps,
            train_tokens=train_tokens,
            train_tokens_upper_bound=tc.early_stopping_patience is not None,
            train_tokens_per_s=round(speed["tokens_per_s"], 1),
            mfu=round(speed["mfu"], 4),
            train_seconds=round(seconds, 1),
            train_usd=round(seconds / 3600 * per_hour, 4) if per_hour is not None else None,
            checkpoint_disk_gib=round(
                sizing.checkpoint_disk_bytes(tc, counts["total"] if full else lora_trainable) / sizing.GIB, 2
            ),
        )
    else:
        inference_weights = sizing.weight_bytes(arch, cfg.model.quantization) / sizing.GIB
        row.update(
            trainable_params=0,
            peak_memory_gib=round(inference_weights + sizing.CUDA_CONTEXT_GIB, 2),
            fits=inference_weights + sizing.CUDA_CONTEXT_GIB <= card.memory_gib,
            train_tokens=0,
            train_tokens_per_s=None,
            train_seconds=0.0,
            train_usd=0.0,
        )
    row.update(predict_row(cfg, arch, card, splits, per_hour))
    return row


def hourly_price(cfg: ExperimentConfig, card: GpuCard) -> GpuPrice | None:
    """cost.gpu_price_per_hour where it prices this card (cost.gpu_type unset, or naming this card
    by key, alias or device name as a run records it), else the dated table's price."""
    cost = cfg.cost
    if cost.gpu_price_per_hour and (cost.gpu_type is None or names_card(cost.gpu_type, card)):
        return card.price({card.key: cost.gpu_price_per_hour})
    return card.price()


def names_card(name: str, card: GpuCard) -> bool:
    try:
        return gpu_card(name) == card
    except TunebenchError:
        return False


def full_training_speed(
    arch: sizing.Architecture, setup: sizing.Setup, lora_speed: dict[str, Any], lora_trainable: int
) -> dict[str, Any]:
    """Tokens/s of full fine-tuning: the LoRA estimate slowed by the ratio of FLOPs per token
    (weight gradients of every matmul: 6N instead of 4N, the output head included), at the same
    MFU. Not calibrated on full-fine-tuning runs; the optimizer step over every weight is left
    out, so it is an optimistic figure for short steps."""
    lora = sizing.flops_per_token(arch, lora_trainable, setup.context, setup.labeled_fraction)
    counts = sizing.parameter_counts(arch)
    body = counts["linear"] + counts["other"]
    full = sizing.flops_per_token(arch, 0, setup.context, setup.labeled_fraction) + 2.0 * (
        body + arch.vocab * arch.hidden * setup.labeled_fraction
    )
    return {**lora_speed, "tokens_per_s": lora_speed["tokens_per_s"] * lora / full}


def _with(setup: sizing.Setup, **changes: Any) -> sizing.Setup:
    from dataclasses import replace

    return replace(setup, **changes)


def predict_row(
    cfg: ExperimentConfig,
    arch: sizing.Architecture,
    card: GpuCard,
    splits: dict[str, Any],
    per_hour: float | None,
) -> dict[str, Any]:
    """A rough upper bound on prediction time: every batch decodes max_new_tokens steps, each
    the slower of the host's launches (the training host time per layer) and the GPU's pass
    (the weights read once, or the batch's FLOPs)."""
    cal = sizing.calibration()
    gen = cfg.generation
    n = sum(len(splits[s]) for s in cfg.eval_splits) * gen.num_candidates
    if n == 0:
        return {"predict_examples": 0, "predict_seconds": 0.0, "predict_usd": 0.0}
    batch = min(gen.batch_size, n)
    batches = math.ceil(n / gen.batch_size)
    weights = sizing.weight_bytes(arch, cfg.model.quantization)
    flops = 2.0 * sizing.parameter_counts(arch)["linear"] * batch
    gpu = max(
        weights / (card.bandwidth_gbs * 1e9 * DECODE_BANDWIDTH_SHARE), flops / (card.bf16_tflops * 1e12 * 0.3)
    )
    host = arch.layers * cal.host_layer_s
    seconds = batches * gen.max_new_tokens * max(host, gpu)
    return {
        "predict_examples": n,
        "predict_seconds": round(seconds, 1),
        "predict_usd": round(seconds / 3600 * per_hour, 4) if per_hour is not None else None,
    }


def openai_row(cfg: ExperimentConfig, data_cache: dict[str, Any]) -> dict[str, Any]:
    """``tunebench openai estimate``'s figures for this cell (its export rows, in memory)."""
    from tunebench.providers.openai import estimate_for
    from tunebench.providers.openai_export import export_rows
    from tunebench.tasks import get_task

    splits = splits_for(cfg, data_cache)
    task = get_task(cfg.task)
    files = {s: {"rows": export_rows(task, splits[s])} for s in ("train", "validation")}
    est = estimate_for(cfg, files)
    return {
        "gpu": None,
        "params": None,
        "trainable_params": None,
        "peak_memory_gib": None,
        "fits": None,
        "train_tokens": est.billed_tokens,
        "tokens_counted_by": est.token_count,
        "train_tokens_per_s": None,
        "train_seconds": None,
        "train_usd": est.cost_usd,
        "openai_estimate": est.as_dict(),
        "predict_seconds": None,
        "predict_usd": None,
    }


def check_gpu(name: str | None) -> None:
    """An unknown --gpu is a one-line error naming the known cards."""
    if name is not None:
        try:
            gpu_card(name)
        except TunebenchError:
            raise TunebenchError(f"--gpu {name}: unknown card (known: {sizing.known_cards()})") from None
