"""Grouped-query sdpa for padded generation equals transformers' sdpa (CPU, fp32)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests import test_inference_support as support
from tunebench.config import ModelConfig
from tunebench.io import read_jsonl
from tunebench.models import attention, attention_implementation, load_model
from tunebench.pipeline import predict_stage as predict

lively_model_dir = support.lively_model_dir


class SdpaShapes(TorchFunctionMode):
    """Records the query shape of every ``scaled_dot_product_attention`` call (torch's own
    function; observing it shows whether the folded path ran without touching tunebench)."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.queries.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@contextmanager
def sdpa_shapes() -> Iterator[SdpaShapes]:
    with SdpaShapes() as mode:
        yield mode


def padded_causal_mask(pad: list[int], queries: int, keys: int) -> torch.Tensor:
    """(B, 1, T, K) bool: left padding ``pad[b]`` and causal, queries at the last T positions."""
    k = torch.arange(keys)
    q = torch.arange(keys - queries, keys)
    causal = k[None, :] <= q[:, None]
    rows = [causal & (k >= p)[None, :] for p in pad]
    return torch.stack(rows)[:, None]


@pytest.mark.parametrize("queries", [1, 5])  # a decode step, and a prefill chunk
def test_grouped_sdpa_equals_sdpa_with_a_padding_mask(queries: int) -> None:
    torch.manual_seed(0)
    batch, heads, kv_heads, keys, dim = 3, 6, 2, 9, 16
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    q = torch.randn(batch, heads, queries, dim)
    k, v = torch.randn(batch, kv_heads, keys, dim), torch.randn(batch, kv_heads, keys, dim)
    mask = padded_causal_mask([0, 2, 4], queries, keys)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    with sdpa_shapes() as seen:
        got, _ = attention.grouped_sdpa_forward(module, q, k, v, mask, scaling=dim**-0.5)
    assert seen.queries == [(batch, kv_heads, 3 * queries, dim)]  # folded: no per-head K/V copies
    assert got.shape == expected.shape == (batch, queries, heads, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the fold pairs each query head with its own key/value head: swapping groups changes it
    swapped = torch.cat([q[:, 3:], q[:, :3]], dim=1)
    other, _ = attention.grouped_sdpa_forward(module, swapped, k, v, mask, scaling=dim**-0.5)
    assert not torch.allclose(other[:, :, 3:], expected[:, :, :3])


def test_a_single_mask_row_broadcasts_over_every_query() -> None:
    torch.manual_seed(1)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=False, training=False)
    q = torch.randn(2, 6, 4, 8)
    k, v = torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    padding = torch.arange(7)[None, None, None, :] >= torch.tensor([0, 3])[:, None, None, None]
    expected, _ = sdpa_attention_forward(module, q, k, v, padding)
    got, _ = attention.grouped_sdpa_forward(module, q, k, v, padding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_fold_and_unfold_are_inverse_layouts() -> None:
    q = torch.arange(2 * 6 * 3 * 4, dtype=torch.float32).reshape(2, 6, 3, 4)
    folded = attention.fold_groups(q, kv_heads=2)
    assert folded.shape == (2, 2, 9, 4)
    assert torch.equal(folded[1, 1, 2 * 3 + 1], q[1, 1 * 3 + 2, 1])  # head j*G+g, t -> row g*T+t
    assert torch.equal(attention.unfold_groups(folded, heads=6), q.transpose(1, 2))


def test_model_loads_with_grouped_attention_and_auto_stays_sdpa_on_cpu(lively_model_dir: Path) -> None:
    model, _ = load_model(
        ModelConfig(name=str(lively_model_dir), attn_implementation="sdpa_grouped"), device="cpu"
    )
    assert model.config._attn_implementation == attention.NAME
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the path is exercised
    auto, _ = load_model(ModelConfig(name=str(lively_model_dir)), device="cpu")
    assert auto.config._attn_implementation == "sdpa"
    # on a GPU, auto means grouped attention for generation and var-len (or sdpa) for training
    cuda = torch.device("cuda")
    assert attention_implementation("auto", cuda, for_training=False) == attention.NAME
    assert attention_implementation("auto", cuda, for_training=True) != attention.NAME


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_padded_batches_predict_the_same_with_grouped_attention(
    tmp_path: Path, lively_model_dir: Path, cache: str
) -> None:
    rows, folded = {}, {}
    for attn in ("sdpa", "sdpa_grouped"):
        config, run = support.make_run(
            tmp_path, lively_model_dir, name=f"{attn}-{cache}", provider="base", batch_size=6,
            cache_implementation=cache,
        )  # fmt: skip
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"attn_implementation": attn})}
        )
        with sdpa_shapes() as seen:
            rows[attn] = read_jsonl(predict(config, run, "test"))
        folded[attn] = sum(shape[1] == 2 for shape in seen.queries)  # the tiny model: 4 heads, 2 kv
    assert folded["sdpa"] == 0 and folded["sdpa_grouped"] > 0  # prefill and decode steps folded
    assert rows["sdpa_grouped"] == rows["sdpa"]
    widths = {r["prompt_tokens"] for r in rows["sdpa"]}
    assert len(widths) > 1 and len({r["raw"] for r in rows["sdpa"]}) > 6  # padded, varied
