"""The var-len attention function's own logic on the CPU (dtype handling, GQA, causal packing).

PyTorch's var-len kernel exists for CUDA only; these tests give its operator
(``torch_attn::_varlen_attn``) a plain CPU implementation (per-example causal sdpa, the
reference semantics) so tunebench's wrapper runs unchanged around it. The kernel itself is
checked against sdpa on GPUs by tests/test_varlen_gpu.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tunebench.models import varlen

varlen_module = pytest.importorskip("torch.nn.attention.varlen")
KERNEL_DTYPES: list[torch.dtype] = []


def _reference(query, key, value, cu_q, cu_k, max_q, max_k, is_causal=False, scale=None, *rest, **kw):
    """Per-example sdpa over the packed rows; records the dtype the kernel was given."""
    KERNEL_DTYPES.append(query.dtype)
    gqa = bool(kw.get("enable_gqa", rest[1] if len(rest) > 1 else False))
    bounds = cu_q.tolist()
    outs = []
    for a, b in itertools.pairwise(bounds):
        q, k, v = (t[a:b].transpose(0, 1)[None] for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )
        outs.append(out[0].transpose(0, 1))
    lse = torch.zeros(query.shape[1], query.shape[0])
    return torch.cat(outs), lse, torch.zeros(2, dtype=torch.uint64)


@pytest.fixture(scope="module", autouse=True)
def cpu_kernel() -> None:
    try:
        torch.library.register_kernel("torch_attn::_varlen_attn", "cpu", _reference)
    except Exception as exc:  # another torch release: no such operator to give a CPU body
        pytest.skip(f"torch_attn::_varlen_attn not registrable here: {exc}")


def packed(lengths: list[int], heads: int, kv_heads: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    n = sum(lengths)
    return (
        torch.randn(1, heads, n, 16, dtype=dtype),
        torch.randn(1, kv_heads, n, 16, dtype=dtype),
        torch.randn(1, kv_heads, n, 16, dtype=dtype),
    )


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (6, 2)])
def test_packed_examples_attend_causally_within_themselves(heads: int, kv_heads: int) -> None:
    lengths = [5, 9, 3]
    q, k, v = packed(lengths, heads, kv_heads, torch.bfloat16)
    out, _ = varlen.varlen_attention_forward(torch.nn.Module(), q, k, v, None, **varlen.boundaries(lengths))
    assert out.shape == (1, sum(lengths), heads, 16) and out.dtype == torch.bfloat16
    start = 0
    for n in lengths:
        s = slice(start, start + n)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, s].float(),
            k[:, :, s].float(),
            v[:, :, s].float(),
            is_causal=True,
            enable_gqa=heads != kv_heads,
        )
        torch.testing.assert_close(out[0, s].float(), ref[0].transpose(0, 1), rtol=2e-2, atol=2e-2)
        start += n


def test_float32_projections_go_to_the_kernel_in_bf16_and_come_back_float32() -> None:
    """A k-bit base (bitsandbytes) hands attention float32 projections, and the flash kernel
    runs only fp16/bf16 (on an H100 this failed: 'FlashAttention only support fp16 and bf16')."""
    lengths = [4, 7]
    q, k, v = packed(lengths, 4, 2, torch.float32)
    KERNEL_DTYPES.clear()
    out, _ = varlen.varlen_attention_forward(torch.nn.Module(), q, k, v, None, **varlen.boundaries(lengths))
    assert KERNEL_DTYPES.copy() == [torch.bfloat16]  # what the kernel was given
    assert out.dtype == torch.float32  # what the layer gets back
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    same, _ = varlen.varlen_attention_forward(
        torch.nn.Module(), q16, k16, v16, None, **varlen.boundaries(lengths)
    )
    torch.testing.assert_close(out, same.float())


def test_rows_that_are_not_packed_are_refused() -> None:
    q, k, v = packed([3], 2, 2, torch.bfloat16)
    with pytest.raises(RuntimeError, match="packed rows"):
        varlen.varlen_attention_forward(torch.nn.Module(), q, k, v, None)
