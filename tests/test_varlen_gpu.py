"""Var-len flash attention for packed rows equals sdpa on the same packed row (CUDA only).

Runs on the lent GPU machine (`python -m pytest tests/test_varlen_gpu.py`); skipped on CPU,
where PyTorch has no var-len kernel.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_training import make_config
from tunebench.config import LoraConfig
from tunebench.models import varlen
from tunebench.tasks import get_task
from tunebench.training.data import collate_packed, tokenize_examples
from tunebench.training.lora import LossModel, apply_lora, load_base

pytestmark = pytest.mark.skipif(not varlen.available(), reason="needs CUDA and torch.nn.attention.varlen")


@pytest.fixture(scope="module")
def sql_examples(data_dir):
    return get_task("sql").splits()["train"][:8]


def packed_loss_and_grads(cfg, sql_examples, attn: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"attn_implementation": attn})})
    model, tokenizer, eos, _ = load_base(cfg, torch.device("cuda"))
    model = apply_lora(model, LoraConfig(dropout=0.0), seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator(p.device).manual_seed(1))
    examples, _ = tokenize_examples(sql_examples[:8], tokenizer, eos, "\n", 512)
    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in collate_packed(examples).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = LossModel(model)(**batch)
    loss.backward()
    return loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


def test_varlen_equals_sdpa_on_packed_rows(tiny_model_dir, data_dir, sql_examples) -> None:
    cfg = make_config(tiny_model_dir, data_dir)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "bfloat16"})})
    ref_loss, ref_grads = packed_loss_and_grads(cfg, sql_examples, "sdpa")
    loss, grads = packed_loss_and_grads(cfg, sql_examples, "varlen")
    assert torch.isfinite(loss)
    assert torch.allclose(loss, ref_loss, rtol=2e-2), (loss, ref_loss)
    for name, g in grads.items():
        rel = (g - ref_grads[name]).norm() / ref_grads[name].norm().clamp_min(1e-12)
        assert rel < 5e-2, (name, float(rel))


def test_float32_projections_reach_the_kernel_in_bf16_and_come_back_float32() -> None:
    """A k-bit base (bitsandbytes) hands attention float32 projections; the flash kernel takes
    only fp16/bf16 (this failed on an H100 before the cast: 'FlashAttention only support fp16
    and bf16 data type')."""
    torch.manual_seed(0)
    lengths = [5, 9, 3]
    q, k, v = (torch.randn(1, 4, sum(lengths), 16, device="cuda") for _ in range(3))
    module = torch.nn.Module()
    out, _ = varlen.varlen_attention_forward(module, q, k, v, None, **varlen.boundaries(lengths, "cuda"))
    assert out.dtype == torch.float32 and out.shape == (1, sum(lengths), 4, 16)
    start = 0
    for n in lengths:  # each packed example attends only within itself, causally
        s = slice(start, start + n)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, s], k[:, :, s], v[:, :, s], is_causal=True
        )
        torch.testing.assert_close(out[0, s], ref[0].transpose(0, 1), rtol=2e-2, atol=2e-2)
        start += n
