"""Packed-row attention through PyTorch's var-len flash kernel (``torch.nn.attention.varlen``).

Why: a packed row of 16k tokens holding ~80 examples needs a block-diagonal causal mask. With
``sdpa`` transformers materialises that mask (16k x 16k) and SDPA falls back from the flash
kernel to the memory-efficient one, computing attention across the whole row; attention then
costs ~O(row²) instead of O(Σ example²). The var-len kernel takes the example boundaries
(``cu_seqlens``) instead of a mask and attends only within each example, at flash-attention speed,
with no padding anywhere. It needs CUDA and bf16/fp16; ``attn_implementation: varlen`` selects it.

Registered as a transformers attention function (``AttentionInterface``); since it is absent
from the mask registry, transformers skips building any mask. The example boundaries travel
from the collator to every layer as the standard flash-attention kwargs ``cu_seq_lens_q/k`` and
``max_length_q/k``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

NAME = "tunebench_varlen"


def available() -> bool:
    """True when this torch has the var-len kernel and a GPU to run it on."""
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def register() -> str:
    """Register the attention function with transformers; returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    return NAME


def boundaries(lengths: list[int], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Flash-attention kwargs for one packed row of examples of ``lengths`` tokens."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    cu = torch.tensor(offsets, dtype=torch.int32).to(device, non_blocking=True)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


@functools.cache
def _kernel_options() -> tuple[dict[str, Any], bool]:
    """Causal flag and GQA support differ between torch releases (2.9-2.11: ``is_causal``)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return causal, "enable_gqa" in params


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """(batch=1, heads, tokens, dim) inputs -> (1, tokens, heads, dim), like transformers' sdpa."""
    from torch.nn.attention.varlen import varlen_attn

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        raise RuntimeError("varlen attention needs packed rows (training.packing: true)")
    causal, gqa = _kernel_options()
    dtype = query.dtype
    kernel_dtype = flash_dtype(dtype)
    # (tokens, heads, dim) in a dtype the flash kernel takes: a k-bit base's projections return
    # float32 (bitsandbytes' matmuls stay outside autocast), the kernel only runs fp16/bf16
    q, k, v = (t[0].transpose(0, 1).to(kernel_dtype) for t in (query, key, value))
    extra: dict[str, Any] = {}
    if k.shape[1] != q.shape[1]:
        if gqa:
            extra["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    out = varlen_attn(
        q, k, v, cu, cu, kwargs["max_length_q"], kwargs["max_length_q"], scale=scaling, **causal, **extra
    )
    return out.to(dtype).unsqueeze(0), None


def flash_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 as they are; anything else -> the CUDA autocast dtype, else bfloat16."""
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return torch.bfloat16
