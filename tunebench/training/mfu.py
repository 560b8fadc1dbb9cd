"""Model FLOPs utilisation (MFU) for LoRA training, nanoGPT-style.

Source of the formula: the PaLM paper (Chowdhery et al. 2022, appendix B) as used by
nanoGPT's ``estimate_mfu``: training FLOPs per token = 6·N + 12·L·d·T, where 6N counts the
forward (2N) and backward (4N: input-gradients 2N + weight-gradients 2N) matmuls over the
N parameters and 12·L·d·T the attention scores and weighted sum (forward 4·L·d·T, backward
8·L·d·T) over a context of T tokens.

For LoRA the frozen weights get no weight-gradient, so they cost forward + input-gradient
backward = 4·N_frozen, while the (few) trainable parameters cost the full 6·N_trainable.
With padding-free packing attention never crosses examples, so T is the mean example
length, not the packed row length. The output projection (lm_head, V·d weights) is counted
separately, only for the share of tokens whose logits are computed: with completion-only loss
tunebench computes logits at labeled positions only; the embedding lookup costs no matmul. MFU counts real tokens only (never padding) and does
not count recomputation (gradient checkpointing), so it is model FLOPs, not hardware FLOPs.
"""

from __future__ import annotations

import math

# Peak dense bf16 tensor-core FLOP/s (no sparsity), from the vendors' datasheets.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "A40": 149.7e12,
    "L40S": 362e12,
}


def flops_per_token(
    n_frozen: int,
    n_trainable: int,
    n_layers: int = 0,
    d_model: int = 0,
    context: float = 0.0,
    lm_head_params: int = 0,
    lm_head_fraction: float = 1.0,
    lm_head_trained: bool = False,
) -> float:
    """Training FLOPs per token: 4·N_frozen + 6·N_trainable + 12·L·d·T + 4·V·d·f.

    ``n_frozen`` and ``n_trainable`` exclude the embedding and lm_head matrices;
    ``lm_head_params`` (V·d) is charged for the fraction ``lm_head_fraction`` of tokens whose
    logits are computed, 6·V·d·f when it trains (full fine-tuning: weight gradients too).
    """
    return (
        4.0 * n_frozen
        + 6.0 * n_trainable
        + 12.0 * n_layers * d_model * context
        + (6.0 if lm_head_trained else 4.0) * lm_head_params * lm_head_fraction
    )


def gpu_key(name: str | None) -> str | None:
    """Map ``torch.cuda.get_device_name()`` to a key of :data:`PEAK_BF16_FLOPS` (None: unknown)."""
    if not name:
        return None
    n = name.upper()
    if "H200" in n:
        return "H200"
    if "H100" in n:
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"  # "H100 80GB HBM3" is the SXM part
    for key in ("A100", "A40", "L40S"):
        if key in n:
            return key
    return None


def peak_flops(name: str | None) -> float | None:
    key = gpu_key(name)
    return PEAK_BF16_FLOPS.get(key) if key else None


def mfu(tokens_per_s: float, per_token: float, gpu_name: str | None, n_gpus: int = 1) -> float | None:
    """Achieved / peak FLOP/s over all GPUs; None on CPU or an unknown GPU."""
    peak = peak_flops(gpu_name)
    if peak is None or tokens_per_s <= 0:
        return None
    return tokens_per_s * per_token / (peak * max(1, n_gpus))


def count_params(model: object) -> tuple[int, int]:
    """(frozen, trainable) parameter counts of a (peft) model, as the matmuls see them."""
    frozen = trainable = 0
    for p in model.parameters():  # type: ignore[attr-defined]
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += logical_numel(p)
    return frozen, trainable


def logical_numel(param: object) -> int:
    """Elements of the weight a layer computes with: a bitsandbytes 4-bit weight is stored as
    packed bytes (two values per byte, so ``numel`` is half), its quant_state keeps the shape."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return math.prod(int(dim) for dim in shape) if shape is not None else param.numel()  # type: ignore[attr-defined]


def model_flops_per_token(model: object, context: float, lm_head_fraction: float = 1.0) -> float:
    """:func:`flops_per_token` for a (peft-wrapped) transformers causal LM."""
    frozen, trainable = count_params(model)
    embed = model.get_input_embeddings().weight  # type: ignore[attr-defined]
    head = model.get_output_embeddings().weight  # type: ignore[attr-defined]
    tied = embed.data_ptr() == head.data_ptr()
    # Parameters outside the transformer body: the embedding (a lookup) and the lm_head, out of
    # whichever count holds them (trainable with full fine-tuning)
    outside = embed.numel() + (0 if tied else head.numel())
    if embed.requires_grad:
        trainable -= outside
    else:
        frozen -= outside
    config = model.config  # type: ignore[attr-defined]
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    width = int(getattr(config, "hidden_size", 0) or 0)
    return flops_per_token(
        frozen, trainable, layers, width, context, head.numel(), lm_head_fraction, head.requires_grad
    )
