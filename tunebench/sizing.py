"""How big, how much memory and how fast a LoRA run is, from the model's shape alone.

Pure arithmetic over an :class:`Architecture` (hidden size, layers, heads, ...) and a
:class:`Setup` (LoRA rank and targets, quantization, tokens per micro-batch, gradient
checkpointing): no weights are needed, so ``tunebench estimate`` answers "will it fit, how long,
how much" before anything is downloaded.

- **Parameters** count every weight of a Llama/Qwen2-style decoder; LoRA adds ``r x (in + out)``
  per adapted linear layer.
- **Memory** is split into parts: the weights at bf16 / 8-bit (bitsandbytes LLM.int8: 1 byte per
  linear weight plus a float32 scale per row; embeddings and norms are cast to float32 by peft's
  k-bit preparation) / 4-bit (NF4: half a byte, plus double-quantised absmax constants); the
  adapter with its AdamW state (float32 weights, gradients and two moments: 16 bytes a
  parameter); the activations the backward pass keeps (a per-layer count of saved tensors,
  scaled by factors fitted to measurements); the logits of the loss (unless a fused loss is
  used); and the CUDA context plus allocator slack, which ``max_memory_allocated`` does not see.
- **Speed** follows a two-resource model of one micro-batch: the host launches every layer's
  kernels (a fixed time per layer and per LoRA module, much less when compiled) while the GPU
  runs the FLOPs at an efficiency that grows with the hidden size, plus, for 8-/4-bit weights,
  the dequantisation traffic over memory bandwidth. The slower of the two sets the pace.
  Its constants are fitted (least squares on log throughput) to the measured points of
  ``calibration.json``; FLOPs count as the training loop's MFU does (forward 2N, input
  gradients 2N, weight gradients only for the adapter, attention over the mean example).
- **Another card** scales the GPU part by peak FLOP/s and the dequantisation part by memory
  bandwidth; the host part is assumed equal. Numbers for a card without measurements are
  projections and are labelled so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tunebench.config import TrainingConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_json
from tunebench.prices import CARDS, GpuCard, gpu_card

GIB = 2**30
CALIBRATION_PATH = Path(__file__).with_name("calibration.json")
#: The cards the committed measurements ran on; estimates for any other card are projections.
MEASURED_CARDS = ("H100",)
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    """A Llama/Qwen2-style decoder's shape."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    head_dim: int | None = None

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_size

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q = self.heads * self.head_size
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, self.kv_width),
            "v_proj": (self.hidden, self.kv_width),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        # the presets (their GGUF metadata, as transformers converts it)
        Architecture("smollm2-135m", 576, 30, 9, 3, 1536, 49152, True),
        Architecture("qwen2.5-coder-0.5b", 896, 24, 14, 2, 4864, 151936, True, qkv_bias=True),
        Architecture("qwen2.5-coder-1.5b", 1536, 28, 12, 2, 8960, 151936, True, qkv_bias=True),
        # the study's model family (Code Llama's config.json on the Hugging Face hub)
        Architecture("codellama-7b", 4096, 32, 32, 32, 11008, 32016, False),
        Architecture("codellama-13b", 5120, 40, 40, 40, 13824, 32016, False),
        Architecture("codellama-34b", 8192, 48, 64, 8, 22016, 32016, False),
    )
}


def architecture_from_config(path: str | Path) -> Architecture:
    """The shape in a transformers ``config.json`` (a file, or the folder holding it)."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "config.json"
    cfg = read_json(file)
    if not isinstance(cfg, dict):
        raise TunebenchError(f"{file}: expected a JSON object (a transformers config.json)")

    def size(key: str, default: Any = None) -> int:
        value = cfg.get(key, default)
        if value is None:
            raise TunebenchError(f"{file}: {key}: missing (not a decoder config sizing understands)")
        # a JSON true is an int to Python, and 64.5 layers or "64" is no shape a model has
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TunebenchError(f"{file}: {key} must be a positive integer (got {value!r})")
        return value

    heads = size("num_attention_heads")
    return Architecture(
        name=str(path),
        hidden=size("hidden_size"),
        layers=size("num_hidden_layers"),
        heads=heads,
        kv_heads=size("num_key_value_heads", heads),  # transformers' default: one per attention head
        intermediate=size("intermediate_size"),
        vocab=size("vocab_size"),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
        head_dim=size("head_dim") if cfg.get("head_dim") is not None else None,
    )


def resolve_architecture(model: str) -> Architecture:
    """A known shape by name (presets, ``codellama-*``), else a local folder's ``config.json``."""
    known = ARCHITECTURES.get(model.lower())
    if known is not None:
        return known
    path = Path(model).expanduser()
    if (path.is_dir() and (path / "config.json").is_file()) or (
        path.name == "config.json" and path.is_file()
    ):
        return architecture_from_config(path)
    raise TunebenchError(
        f"model '{model}': no architecture known (known: {', '.join(ARCHITECTURES)}); give a local "
        "folder with the model's config.json"
    )


# --- parameters and FLOPs --------------------------------------------------------------------
def parameter_counts(arch: Architecture) -> dict[str, int]:
    """Weights by kind: ``linear`` (the decoder's projections), ``embedding``, ``lm_head`` (0 when
    tied), ``other`` (norms and biases), and ``total``."""
    linear = arch.layers * sum(i * o for i, o in arch.linear_shapes().values())
    bias = arch.layers * (arch.heads * arch.head_size + 2 * arch.kv_width) if arch.qkv_bias else 0
    norms = arch.layers * 2 * arch.hidden + arch.hidden
    embedding = arch.vocab * arch.hidden
    head = 0 if arch.tied_embeddings else embedding
    other = bias + norms
    return {
        "linear": linear,
        "embedding": embedding,
        "lm_head": head,
        "other": other,
        "total": linear + embedding + head + other,
    }


def lora_modules(targets: Sequence[str] | str) -> list[str]:
    """The decoder's linear layers a LoRA target list adapts (``all-linear``: all seven)."""
    if isinstance(targets, str):
        if targets != "all-linear":
            raise TunebenchError(f"lora.target_modules: '{targets}' is not a list nor 'all-linear'")
        return [*ATTENTION_TARGETS, *MLP_TARGETS]
    known = (*ATTENTION_TARGETS, *MLP_TARGETS)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise TunebenchError(
            f"lora.target_modules: sizing knows only {', '.join(known)} (not {', '.join(unknown)})"
        )
    return [t for t in known if t in targets]


def lora_parameters(arch: Architecture, r: int, targets: Sequence[str] | str) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted layer."""
    shapes = arch.linear_shapes()
    return arch.layers * sum(r * sum(shapes[m]) for m in lora_modules(targets))


def flops_per_token(
    arch: Architecture, trainable: int, context: float, labeled_fraction: float = 1.0
) -> float:
    """Model FLOPs of training per token, as the training loop counts them for MFU:
    4 x frozen body weights (forward + input gradients) + 6 x trainable + 12 x L x d x context
    (attention over the mean example, packing keeps examples apart) + 4 x V x d for the share of
    tokens whose logits are computed."""
    counts = parameter_counts(arch)
    frozen_body = counts["linear"] + counts["other"]
    return (
        4.0 * frozen_body
        + 6.0 * trainable
        + 12.0 * arch.layers * arch.hidden * context
        + 4.0 * arch.vocab * arch.hidden * labeled_fraction
    )


# --- the run being sized ------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """One training configuration, in the terms sizing needs."""

    r: int = 8
    targets: tuple[str, ...] | str = ATTENTION_TARGETS
    quantization: str = "none"
    tokens_per_micro_batch: int = 16384
    """Real tokens in one forward pass (after packing)."""
    micro_batches_per_step: int = 1
    context: float = 512.0
    """Mean example length in tokens (attention never crosses examples)."""
    labeled_fraction: float = 1.0
    """Share of tokens with a loss (completion-only loss: the target's share)."""
    gradient_checkpointing: bool = False
    fused_loss: bool = True
    """A fused linear + cross-entropy kernel (liger) that never holds the logits; False is the
    plain loss over the full vocabulary (logits, their float32 copy and gradient)."""
    compile: bool = False
    optimizer: str = "adamw"
    """``adamw``: float32 moments (8 bytes a trained parameter); ``adamw_8bit``: one byte each."""
    kbit_prepared: bool = True
    """8-/4-bit only: peft's k-bit preparation ran (tunebench's training path). It keeps the
    embeddings, norms and lm_head in float32, so the residual stream and norm outputs the
    backward pass saves are float32 too. Without it (a model built all in bf16 and then
    quantized, as benchmarks/bench_scale.py does) they stay bf16."""

    def __post_init__(self) -> None:
        if self.quantization not in ("none", "8bit", "4bit"):
            raise TunebenchError(f"quantization '{self.quantization}': choose none, 8bit or 4bit")


#: Saved bytes per token of one decoder layer, eager bf16, before the fitted scale: per hidden
#: unit (norm inputs and outputs in float32 and bf16, attention inputs, outputs and rotary
#: copies; k and v count here at full width, because transformers' sdpa path repeats grouped KV
#: heads to all heads before attention), per MLP unit (gate, up, activation, product), and per
#: input feature of each LoRA-adapted layer (dropout mask + the bf16 copy lora_A keeps).
SAVED_BYTES = {"hidden": 30.0, "intermediate": 8.0, "lora_input": 3.0}
#: bitsandbytes' LLM.int8 matmul keeps its own copy of each 8-bit linear layer's input for the
#: backward pass: bytes per input feature of every quantized linear (all seven, not only the
#: LoRA-adapted ones). Measured on Code Llama 7B and 13B shapes without k-bit preparation (the
#: 8-bit run used 3.5 bytes per such feature and token more than its 4-bit twin, in both sizes).
#: The one prepared 8-bit run (Qwen2.5 1.5B) kept no more than its 4-bit twin, its float32
#: inputs already saved for the norms, so the term applies to unprepared runs only.
INT8_SAVED_BYTES = 3.5
#: Logits of one labeled position of the unfused loss (bf16 logits, float32 copy, gradient).
LOSS_BYTES_PER_LOGIT = 12.0
#: The unfused loss computes its logits in chunks of this many positions (training/lora.py).
LOSS_CHUNK = 4096
CUDA_CONTEXT_GIB = 0.6
ALLOCATOR_SLACK = 0.05
#: Bytes a dequantised weight costs per pass: 4-bit reads 0.5 + writes 2 + reads 2 bytes,
#: 8-bit reads 1 + writes 2 + reads 2 (its int8 matmul path is charged in the efficiency).
DEQUANT_BYTES = {"none": 0.0, "8bit": 5.0, "4bit": 4.5}


def nominal_layer_bytes(arch: Architecture, setup: Setup) -> float:
    """Saved activation bytes per token of one layer before calibration (see SAVED_BYTES)."""
    shapes = arch.linear_shapes()
    lora_in = sum(shapes[m][0] for m in lora_modules(setup.targets))
    return (
        SAVED_BYTES["hidden"] * arch.hidden
        + SAVED_BYTES["intermediate"] * arch.intermediate
        + SAVED_BYTES["lora_input"] * lora_in
    )


def weight_bytes(arch: Architecture, quantization: str, prepared: bool = True) -> float:
    """Bytes of the frozen weights at the chosen quantization. Only the decoder's linear layers
    are quantized, and bitsandbytes stores them packed (no bf16 copy is kept: 4-bit dequantises
    one layer's weight at a time inside the matmul, and the scratch copy is freed right after).
    Embeddings, lm_head and norms stay unquantized: float32 after peft's k-bit preparation
    (``prepared``), else bf16."""
    counts = parameter_counts(arch)
    rest = counts["embedding"] + counts["lm_head"] + counts["other"]
    if quantization == "none":
        return 2.0 * (counts["linear"] + rest)
    if quantization == "8bit":
        rows = arch.layers * sum(o for _, o in arch.linear_shapes().values())
        linear = counts["linear"] * 1.0 + rows * 4.0  # int8 weights + a float32 scale per row
    else:
        # NF4: 4 bits a weight; absmax of each 64-block as int8 (double quantisation) + a float32
        # constant per 256 blocks
        linear = counts["linear"] * (0.5 + 1 / 64 + 4 / (64 * 256))
    return linear + (4.0 if prepared else 2.0) * rest


@dataclass(frozen=True)
class Calibration:
    """Constants fitted to measured points (see :func:`fit`)."""

    activation_scale: float = 0.75
    compile_activation: float = 0.75
    kbit_activation: float = 1.45
    """Activation factor of a k-bit run after peft's preparation (float32 residual stream and
    norm outputs); an unprepared k-bit run keeps bf16 activations like a bf16 run."""
    host_layer_s: float = 5e-3
    host_step_s: float = 0.03
    host_module_s: float = 1e-3
    compile_host: float = 0.3
    efficiency_max: float = 0.5
    compile_efficiency: float = 1.5
    int8_efficiency: float = 0.3
    """Share of the bf16 matmul efficiency LLM.int8 layers reach: each 8-bit matmul also
    quantizes its input row by row, looks for outlier columns and rescales its output, work
    that grows with tokens x features like the matmul itself (fitted: about 2/3 on H100)."""
    efficiency_half_hidden: float = 2048.0
    """Hidden size at which the GPU reaches half its top efficiency (a prior until points of
    several sizes are measured; not fitted)."""
    points: int = 0


def moment_bytes(optimizer: str) -> float:
    """Bytes of AdamW's two moments per trained parameter (``training.optimizer``)."""
    return 2.0 if optimizer == "adamw_8bit" else 8.0


def checkpoint_disk_bytes(training: TrainingConfig, trainable: int) -> float:
    """Peak disk a run's checkpoints and trained weights take (float32, 4 bytes a trained
    parameter): the latest checkpoint with its optimizer state, twice while a new one is written
    before the old one is pruned; the other kept checkpoints (the choice's candidates, or the
    best one) with weights only; and the published ``adapter/`` or ``model/``."""
    weights = 4.0 * trainable
    moments = moment_bytes(training.optimizer) * trainable
    return 2 * (weights + moments) + training.checkpoints_kept * weights + weights


def memory_parts(arch: Architecture, setup: Setup, cal: Calibration | None = None) -> dict[str, float]:
    """Peak GPU memory in GiB by part; ``allocated`` is what ``torch.cuda.max_memory_allocated``
    measures, ``total`` adds the CUDA context and allocator slack (what must fit the card).

    - ``weights``: :func:`weight_bytes` (packed 8-/4-bit linears, the rest bf16 or float32);
    - ``adapter_optimizer``: LoRA weights and gradients (float32) and AdamW's two moments
      (:func:`moment_bytes`);
    - ``activations``: what the backward pass keeps per token and layer (SAVED_BYTES x the
      fitted scale; x ``kbit_activation`` after k-bit preparation); with checkpointing, each
      layer's input plus one layer being recomputed;
    - ``int8_inputs``: without k-bit preparation, the inputs LLM.int8 keeps (INT8_SAVED_BYTES);
    - ``loss``: the fused kernel's float32 chunk, or the plain loss's logits over the whole
      vocabulary for up to LOSS_CHUNK positions (bf16 logits, float32 copy, gradient)."""
    cal = cal or calibration()
    kbit = setup.quantization != "none"
    prepared = kbit and setup.kbit_prepared
    weights = weight_bytes(arch, setup.quantization, setup.kbit_prepared)
    adapter = (8.0 + moment_bytes(setup.optimizer)) * lora_parameters(arch, setup.r, setup.targets)
    scale = cal.activation_scale
    scale *= cal.compile_activation if setup.compile else 1.0
    scale *= cal.kbit_activation if prepared else 1.0
    per_layer = nominal_layer_bytes(arch, setup) * scale
    int8_layer = 0.0
    if setup.quantization == "8bit" and not setup.kbit_prepared:
        int8_layer = INT8_SAVED_BYTES * sum(i for i, _ in arch.linear_shapes().values())
    tokens = setup.tokens_per_micro_batch
    if setup.gradient_checkpointing:
        # each layer keeps its input (float32 residual stream with k-bit); one layer is
        # recomputed at a time during backward
        stored = arch.layers * arch.hidden * (4.0 if prepared else 2.0)
        activations = tokens * (stored + per_layer)
        int8_inputs = tokens * int8_layer
    else:
        activations = tokens * arch.layers * per_layer
        int8_inputs = tokens * arch.layers * int8_layer
    labeled = tokens * setup.labeled_fraction
    if setup.fused_loss:
        loss = labeled * arch.hidden * 8.0  # the fused kernel's float32 chunk of logits/gradients
    else:
        loss = min(labeled, LOSS_CHUNK) * arch.vocab * LOSS_BYTES_PER_LOGIT
    parts = {
        "weights": weights / GIB,
        "adapter_optimizer": adapter / GIB,
        "activations": activations / GIB,
        "int8_inputs": int8_inputs / GIB,
        "loss": loss / GIB,
    }
    allocated = sum(parts.values())
    parts["allocated"] = allocated
    parts["overhead"] = CUDA_CONTEXT_GIB + ALLOCATOR_SLACK * allocated
    parts["total"] = allocated + parts["overhead"]
    return parts


def full_memory_parts(arch: Architecture, setup: Setup, cal: Calibration | None = None) -> dict[str, float]:
    """:func:`memory_parts` of full fine-tuning (``training.method: full``): every weight trains.

    ``weights``: the float32 master copy (4 bytes a parameter); ``gradients_optimizer``: float32
    gradients and AdamW's two moments (12 bytes a parameter, 16 with the weights; 6 and 10 with
    ``adamw_8bit``);
    ``weight_casts``: the bf16 copies of the matmul weights (decoder linears and the output
    head) that autocast makes in the forward pass and keeps for the backward (2 bytes each).
    Activations and the loss are LoRA's with no adapted layer (same decoder, same tokens).
    """
    parts = memory_parts(arch, replace(setup, targets=(), quantization="none"), cal)
    counts = parameter_counts(arch)
    parts.pop("adapter_optimizer")
    parts.update(
        weights=4.0 * counts["total"] / GIB,
        gradients_optimizer=(4.0 + moment_bytes(setup.optimizer)) * counts["total"] / GIB,
        weight_casts=2.0 * (counts["linear"] + arch.vocab * arch.hidden) / GIB,
    )
    for derived in ("allocated", "overhead", "total"):
        parts.pop(derived)
    allocated = sum(parts.values())
    parts["allocated"] = allocated
    parts["overhead"] = CUDA_CONTEXT_GIB + ALLOCATOR_SLACK * allocated
    parts["total"] = allocated + parts["overhead"]
    return parts


# --- throughput -----------------------------------------------------------------------------
def efficiency(arch: Architecture, setup: Setup, cal: Calibration) -> float:
    """Share of peak FLOP/s the GPU sustains on this model's training matmuls."""
    e = cal.efficiency_max * arch.hidden / (arch.hidden + cal.efficiency_half_hidden)
    if setup.compile:
        e *= cal.compile_efficiency
    if setup.quantization == "8bit":
        e *= cal.int8_efficiency
    return min(e, 0.95)


def micro_batch_seconds(
    arch: Architecture, setup: Setup, card: GpuCard, cal: Calibration
) -> dict[str, float]:
    """Host and GPU seconds of one micro-batch and the resulting time (a smooth maximum: the
    slower side sets the pace, the other hides behind it)."""
    modules = len(lora_modules(setup.targets))
    host = arch.layers * (cal.host_layer_s + cal.host_module_s * modules)
    host *= cal.compile_host if setup.compile else 1.0
    trainable = lora_parameters(arch, setup.r, setup.targets)
    model_flops = flops_per_token(arch, trainable, setup.context, setup.labeled_fraction)
    hardware_flops = model_flops
    passes = 2.0
    if setup.gradient_checkpointing:
        hardware_flops += 2.0 * parameter_counts(arch)["linear"]  # the recomputed forward
        host *= 1.5
        passes = 3.0
    tokens = setup.tokens_per_micro_batch
    gpu = tokens * hardware_flops / (card.bf16_tflops * 1e12 * efficiency(arch, setup, cal))
    dequant = passes * parameter_counts(arch)["linear"] * DEQUANT_BYTES[setup.quantization]
    gpu += dequant / (card.bandwidth_gbs * 1e9)
    p = 4.0
    return {"host_s": host, "gpu_s": gpu, "seconds": (host**p + gpu**p) ** (1 / p), "flops": model_flops}


def throughput(
    arch: Architecture, setup: Setup, card: GpuCard, cal: Calibration | None = None
) -> dict[str, Any]:
    """Training tokens/s on ``card``, the MFU it means (model FLOPs over peak), and whether the
    card is one the calibration measured on (else the figure is a projection)."""
    cal = cal or calibration()
    mb = micro_batch_seconds(arch, setup, card, cal)
    # the end of a step (gradient clipping, the optimizer, the one wait for the GPU) is host
    # work no micro-batch overlaps
    n = setup.micro_batches_per_step
    tps = n * setup.tokens_per_micro_batch / (n * mb["seconds"] + cal.host_step_s)
    return {
        "tokens_per_s": tps,
        "mfu": tps * mb["flops"] / (card.bf16_tflops * 1e12),
        "flops_per_token": mb["flops"],
        "bound": "host" if mb["host_s"] > mb["gpu_s"] else "gpu",
        "projection": card.key not in MEASURED_CARDS,
    }


# --- calibration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One measured training configuration (a row of calibration.json)."""

    source: str
    card: str
    model: str
    quantization: str
    tokens_per_micro_batch: float
    micro_batches_per_step: int
    context: float
    labeled_fraction: float
    r: int
    targets: tuple[str, ...] | str
    gradient_checkpointing: bool
    fused_loss: bool
    compile: bool
    tokens_per_s: float | None
    peak_memory_gib: float | None
    kbit_prepared: bool = True
    shared_gpu: bool = False
    relative_to: str | None = None
    """The source of a point measured beside this one in the same conditions: on a shared GPU
    the speed ratio of the two is what this point tells (8-bit vs bf16 measured back to back)."""
    memory_note: str | None = None
    speed_note: str | None = None
    """Why the recorded speed does not tell this configuration's speed (left out of the fit and
    the speed check), like ``memory_note`` for memory."""
    note: str | None = None
    architecture: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def arch(self) -> Architecture:
        if self.architecture:
            return Architecture(**self.architecture)
        return resolve_architecture(self.model)

    def setup(self) -> Setup:
        return Setup(
            r=self.r,
            targets=self.targets,
            quantization=self.quantization,
            tokens_per_micro_batch=round(self.tokens_per_micro_batch),
            micro_batches_per_step=self.micro_batches_per_step,
            context=self.context,
            labeled_fraction=self.labeled_fraction,
            gradient_checkpointing=self.gradient_checkpointing,
            fused_loss=self.fused_loss,
            compile=self.compile,
            kbit_prepared=self.kbit_prepared,
        )


def load_points(path: str | Path = CALIBRATION_PATH) -> list[Point]:
    data = read_json(path)
    rows = data.get("points") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise TunebenchError(f"{path}: expected {{'points': [...]}}")
    points = []
    names = set(Point.__dataclass_fields__)
    for i, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise TunebenchError(f"{path}: points[{i}]: unknown keys {', '.join(sorted(unknown))}")
        targets = row.get("targets")
        row = {**row, "targets": targets if isinstance(targets, str) else tuple(targets)}
        points.append(Point(**row))
    return points


_FITTED = (
    "host_layer_s",
    "host_step_s",
    "host_module_s",
    "compile_host",
    "efficiency_max",
    "compile_efficiency",
    "int8_efficiency",
)


def fit(points: Sequence[Point], prior: Calibration | None = None) -> Calibration:
    """Constants that best reproduce the measured points: activation scales by least squares on
    log memory (closed form), speed constants by Nelder-Mead on squared log throughput errors.
    A point measured on a shared GPU is a lower bound on speed: it counts only when the model
    predicts less. A weak pull toward the prior keeps constants without data where they were."""
    prior = prior or Calibration()
    cal = replace(prior, **fit_memory(points, prior), points=len(points))
    speed = [p for p in points if p.tokens_per_s and not p.speed_note]
    if not speed:
        return cal
    start = np.log([getattr(prior, k) for k in _FITTED])
    by_source = {p.source: p for p in points}

    def loss(theta: np.ndarray) -> float:
        trial = replace(cal, **dict(zip(_FITTED, np.exp(theta).tolist(), strict=True)))
        total = 0.01 * float(np.sum((theta - start) ** 2))
        for p in speed:
            err = speed_error(p, by_source, trial)
            if p.shared_gpu and not p.relative_to and err > 0:
                continue
            total += err * err + 50.0 * err**4  # the quartic term keeps the worst point near
        return total

    best = nelder_mead(loss, start)
    return replace(cal, **dict(zip(_FITTED, np.exp(best).tolist(), strict=True)))


def speed_error(p: Point, by_source: dict[str, Point], cal: Calibration) -> float:
    """log(estimated / measured) tokens/s; for a point measured relative to another, the log of
    the estimated speed ratio over the measured one."""
    predicted = throughput(p.arch(), p.setup(), gpu_card(p.card), cal)["tokens_per_s"]
    err = math.log(predicted / float(p.tokens_per_s or 1.0))
    if p.relative_to:
        base = by_source.get(p.relative_to)
        if base is None or not base.tokens_per_s:
            raise TunebenchError(f"calibration point {p.source}: relative_to {p.relative_to} is no point")
        base_speed = throughput(base.arch(), base.setup(), gpu_card(base.card), cal)["tokens_per_s"]
        err -= math.log(base_speed / float(base.tokens_per_s))
    return err


def fit_memory(points: Sequence[Point], prior: Calibration) -> dict[str, float]:
    """log(measured activations / nominal) = log scale + compile term + k-bit term, by least
    squares; a term without points keeps the prior."""
    rows, target = [], []
    for p in points:
        if p.peak_memory_gib is None or p.memory_note:
            continue
        unit = replace(prior, activation_scale=1.0, compile_activation=1.0, kbit_activation=1.0)
        parts = memory_parts(p.arch(), p.setup(), unit)
        rest = parts["allocated"] - parts["activations"]
        measured = p.peak_memory_gib - rest
        if measured <= 0:
            continue
        rows.append([1.0, float(p.compile), float(p.quantization != "none" and p.kbit_prepared)])
        target.append(math.log(measured / parts["activations"]))
    if not rows:
        return {}
    a, b = np.array(rows), np.array(target)
    defaults = np.log([prior.activation_scale, prior.compile_activation, prior.kbit_activation])
    present = a.any(axis=0)
    b = b - a[:, ~present] @ defaults[~present]
    solved, *_ = np.linalg.lstsq(a[:, present], b, rcond=None)
    values = defaults.copy()
    values[present] = solved
    return dict(
        zip(
            ("activation_scale", "compile_activation", "kbit_activation"),
            np.exp(values).tolist(),
            strict=True,
        )
    )


def nelder_mead(f: Any, x0: np.ndarray, steps: int = 1500, size: float = 0.5) -> np.ndarray:
    """Minimise ``f`` from ``x0`` with the Nelder-Mead simplex (deterministic; a few hundred
    evaluations suffice for the handful of constants here)."""
    n = len(x0)
    simplex = [x0] + [x0 + size * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(steps):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < 1e-10:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2.0 * (centroid - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex]
                values = [f(x) for x in simplex]
    return simplex[int(np.argmin(values))]


@lru_cache(maxsize=4)
def calibration(path: str = str(CALIBRATION_PATH)) -> Calibration:
    """The constants fitted to the committed measurements (once per process)."""
    return fit(load_points(path))


def calibration_report(path: str | Path = CALIBRATION_PATH) -> list[dict[str, Any]]:
    """Each committed point beside the estimate: measured and estimated tokens/s and peak
    memory, and their ratios."""
    cal = calibration(str(path))
    rows = []
    points = load_points(path)
    by_source = {p.source: p for p in points}
    for p in points:
        arch, setup, card = p.arch(), p.setup(), gpu_card(p.card)
        speed = throughput(arch, setup, card, cal)["tokens_per_s"]
        memory = memory_parts(arch, setup, cal)["allocated"]
        rows.append(
            {
                "source": p.source,
                "shared_gpu": p.shared_gpu,
                "speed_trusted": p.speed_note is None,
                "memory_trusted": p.memory_note is None,
                "tokens_per_s": p.tokens_per_s,
                "estimated_tokens_per_s": speed,
                "speed_ratio": speed / p.tokens_per_s if p.tokens_per_s else None,
                "relative_to": p.relative_to,
                "relative_speed_ratio": math.exp(speed_error(p, by_source, cal)) if p.relative_to else None,
                "peak_memory_gib": p.peak_memory_gib,
                "estimated_memory_gib": memory,
                "memory_ratio": memory / p.peak_memory_gib if p.peak_memory_gib else None,
            }
        )
    return rows


def known_cards() -> str:
    return ", ".join(CARDS)


def as_json(obj: Any) -> str:
    return json.dumps(asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj, indent=2)
