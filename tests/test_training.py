"""Training engine units on the tiny real model: labels, start checks, packing, loss, NaN hazard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import ENDOFTEXT, IM_END
from tunebench.config import LoraConfig, validate_experiment
from tunebench.errors import TunebenchError
from tunebench.tasks import get_task
from tunebench.training.data import (
    IGNORE,
    TokenizedExample,
    check_examples,
    collate_packed,
    collate_padded,
    plan_packed,
    rank_share,
    step_example_indices,
    tokenize_example,
    tokenize_examples,
)
from tunebench.training.distributed import launch_command, strip_gpus
from tunebench.training.lora import LossModel, apply_lora, labeled_loss_sum, load_base
from tunebench.training.mfu import flops_per_token, gpu_key, mfu


def make_config(tiny_model_dir: Path, data_dir: Path, **model: object) -> Any:
    return validate_experiment(
        {"name": "unit", "model": {"name": str(tiny_model_dir), **model}, "task": {"data_dir": str(data_dir)}}
    )


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path, data_dir: Path):  # (model, tokenizer, eos, pad)
    return load_base(make_config(tiny_model_dir, data_dir), torch.device("cpu"))


@pytest.fixture(scope="module")
def sql_examples(data_dir: Path):
    return get_task(make_config(Path("."), data_dir).task).splits()["train"][:12]


# --- labels -----------------------------------------------------------------------------------
def test_labels_cover_completion_suffix_and_im_end_only(base, sql_examples) -> None:
    _, tokenizer, eos, pad = base
    im_end, endoftext = tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    assert eos == im_end and pad == endoftext  # the training EOS is not the tokenizer's EOS
    ex = sql_examples[0]
    tok = tokenize_example(ex.id, ex.prompt, ex.completion, tokenizer, eos, "\n", 512)
    prompt_ids = tokenizer(ex.prompt)["input_ids"]
    target_ids = tokenizer(ex.completion + "\n", add_special_tokens=False)["input_ids"]
    assert tok.input_ids == prompt_ids + target_ids + [im_end]
    assert tok.labels == [IGNORE] * len(prompt_ids) + target_ids + [im_end]
    assert tokenizer.decode(tok.labels[len(prompt_ids) : -1]) == ex.completion + "\n"
    # next-token targets: the last prompt position predicts the first target token
    assert tok.targets[len(prompt_ids) - 1] == target_ids[0]
    assert tok.targets[-2] == im_end and tok.targets[-1] == IGNORE


def test_pad_equal_to_eos_never_hides_labels(base, sql_examples) -> None:
    """Padded batches label by position: a target that *contains* the pad id keeps it labeled."""
    _, _, eos, pad = base
    ex = TokenizedExample("x", [5, 6, pad, pad, eos], [IGNORE, IGNORE, pad, pad, eos])
    short = TokenizedExample("y", [5, eos], [IGNORE, eos])
    batch = collate_padded([ex, short], pad)
    assert batch["targets"][0].tolist() == [IGNORE, pad, pad, eos, IGNORE]
    assert batch["targets"][1].tolist() == [eos] + [IGNORE] * 4  # padding itself never labeled
    assert batch["input_ids"][1].tolist() == [5, eos, pad, pad, pad]
    # the labeled positions, flat and found on the host (the loss selects them with no GPU sync)
    assert batch["labeled_at"].tolist() == [1, 2, 3, 5]
    packed = collate_packed([ex, short])
    assert packed["labeled_at"].tolist() == [1, 2, 3, 5]  # one row: the same flat positions


def test_full_sequence_loss_labels_the_prompt_too(base, sql_examples) -> None:
    _, tokenizer, eos, _ = base
    ex = sql_examples[1]
    tok = tokenize_example(ex.id, ex.prompt, ex.completion, tokenizer, eos, "\n", 512, loss_on="full")
    assert tok.labels == tok.input_ids


def test_prompt_truncated_from_the_left_never_the_target(base, sql_examples) -> None:
    _, tokenizer, eos, _ = base
    ex = sql_examples[2]
    full = tokenize_example(ex.id, ex.prompt, ex.completion, tokenizer, eos, "\n", 4096)
    n_target = sum(1 for t in full.labels if t != IGNORE)
    cut = tokenize_example(ex.id, ex.prompt, ex.completion, tokenizer, eos, "\n", n_target + 5)
    assert cut.truncated and len(cut) == n_target + 5
    assert cut.input_ids == full.input_ids[-(n_target + 5) :]  # the end of the prompt is kept
    with pytest.raises(TunebenchError, match=rf"{ex.id}: target alone is {n_target} tokens"):
        tokenize_example(ex.id, ex.prompt, ex.completion, tokenizer, eos, "\n", n_target)
    _, stats = tokenize_examples([ex, ex], tokenizer, eos, "\n", n_target + 5)
    assert stats.truncated == 2


def test_start_check_fails_on_unlabeled_or_eos_less_examples(base) -> None:
    _, _, eos, _ = base
    with pytest.raises(TunebenchError, match="example a: no labeled tokens"):
        check_examples([TokenizedExample("a", [1, 2, 3], [IGNORE] * 3)], eos)
    with pytest.raises(TunebenchError, match=f"example b: the EOS token \\(id {eos}\\) is not labeled"):
        check_examples([TokenizedExample("b", [1, 2, 3], [IGNORE, 2, 3])], eos)
    with pytest.raises(TunebenchError, match="train split is empty"):
        check_examples([], eos)


# --- data order and micro-batches -------------------------------------------------------------
def test_data_order_is_a_pure_function_of_seed_and_step() -> None:
    steps = [step_example_indices(10, 4, s, seed=1) for s in range(5)]
    assert steps[0] == step_example_indices(10, 4, 0, seed=1)
    first_epoch = steps[0] + steps[1] + steps[2][:2]
    assert sorted(first_epoch) == list(range(10))  # each example once per epoch
    assert steps[0] != step_example_indices(10, 4, 0, seed=2)
    shares = [rank_share(steps[0], r, 3) for r in range(3)]
    assert sorted(i for share in shares for i in share) == sorted(steps[0])


def test_packing_respects_the_token_budget() -> None:
    lengths = [300, 120, 50, 400, 90, 700]
    bins = plan_packed(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(6))
    for b in bins:
        assert sum(lengths[i] for i in b) <= 512 or len(b) == 1  # an over-long example is alone


# --- packed == padded -------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_padded(tiny_model_dir, data_dir, sql_examples, attn) -> None:
    cfg = make_config(tiny_model_dir, data_dir, attn_implementation=attn)
    model, tokenizer, eos, pad = load_base(cfg, torch.device("cpu"))
    model = apply_lora(model, LoraConfig(dropout=0.0), seed=0)
    for name, p in model.named_parameters():  # B starts at 0: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    module = LossModel(model)
    examples, _ = tokenize_examples(sql_examples[:5], tokenizer, eos, "\n", 512)
    results = []
    # the last: labeled positions found from the targets on the device (callers without them)
    found_on_device = {k: v for k, v in collate_packed(examples).items() if k != "labeled_at"}
    for batch in (collate_packed(examples), collate_padded(examples, pad), found_on_device):
        model.zero_grad()
        loss = module(**batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (packed, g_packed), *others = results
    for other, g_other in others:  # padded rows, and a packed row filled up for CUDA graphs
        assert torch.allclose(packed, other, rtol=1e-5), (packed, other)
        for name in g_packed:
            assert torch.allclose(g_packed[name], g_other[name], rtol=1e-4, atol=1e-6), name
    # and no attention across examples: example 2 packed after example 1 == example 2 alone
    alone = module(**collate_packed(examples[1:2]))
    pair = module(**collate_packed(examples[:2])) - module(**collate_packed(examples[:1]))
    assert torch.allclose(alone, pair, rtol=1e-5)


def test_chunked_loss_equals_one_shot() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    one = labeled_loss_sum(hidden, weight, targets, chunk=1000)
    g1 = torch.autograd.grad(one, (hidden, weight))
    chunked = labeled_loss_sum(hidden, weight, targets, chunk=8)
    g2 = torch.autograd.grad(chunked, (hidden, weight))
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert torch.allclose(one, expected) and torch.allclose(chunked, expected, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g2, strict=True))


def test_target_modules_that_match_nothing_are_named(tiny_model_dir, data_dir) -> None:
    model, *_ = load_base(make_config(tiny_model_dir, data_dir), torch.device("cpu"))
    with pytest.raises(TunebenchError, match=r"q_prj, mlp_up match no module.*q_proj"):
        apply_lora(model, LoraConfig(target_modules=["q_prj", "v_proj", "mlp_up"]), seed=0)


def test_lora_init_is_seeded(tiny_model_dir, data_dir) -> None:
    def adapter(seed: int, target: object = "all-linear", dora: bool = False) -> dict[str, torch.Tensor]:
        model, *_ = load_base(make_config(tiny_model_dir, data_dir), torch.device("cpu"))
        peft = apply_lora(model, LoraConfig(target_modules=target, use_dora=dora), seed=seed)
        return {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}

    a, b, c = adapter(1), adapter(1), adapter(2)
    assert any("mlp" in n for n in a)  # all-linear reaches the MLP
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert any("lora_magnitude" in n for n in adapter(1, ["q_proj"], dora=True))


# --- the bf16 + padded SDPA hazard ----------------------------------------------------------
def test_fully_masked_attention_row_is_nan_prone() -> None:
    """Left padding gives query rows that may attend to nothing. A plain softmax over such a row
    (an all -inf additive mask) is NaN, and so is its gradient; torch's SDPA maps the row to 0 on
    CPU, but CUDA kernels have had NaN cases here. Packed rows never have such a row."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 8, requires_grad=True) for _ in range(3))
    keep = torch.ones(4, 4, dtype=torch.bool).tril() & torch.tensor([False, False, True, True])  # left pad 2
    bias = torch.zeros(4, 4).masked_fill(~keep, float("-inf"))
    naive = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + bias, dim=-1) @ v
    assert torch.isnan(naive[0, 0, :2]).all() and not torch.isnan(naive[0, 0, 2:]).any()
    naive.sum().backward()
    assert torch.isnan(q.grad).any()
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert torch.isfinite(sdpa).all() and (sdpa[0, 0, :2] == 0).all()
    # packed: a block-diagonal causal mask always keeps the diagonal -> no empty row
    pos = collate_packed(
        [TokenizedExample("a", [1] * 3, [IGNORE] * 3), TokenizedExample("b", [1] * 2, [1] * 2)]
    )["position_ids"][0]
    seq = torch.cumsum(pos == 0, 0)
    packed_mask = (seq[:, None] == seq[None, :]) & torch.ones(5, 5, dtype=torch.bool).tril()
    assert packed_mask.any(-1).all()


# --- MFU and launcher -----------------------------------------------------------------------
def test_mfu_formula_and_gpu_table() -> None:
    assert flops_per_token(100, 10) == 4 * 100 + 6 * 10
    assert flops_per_token(0, 0, n_layers=2, d_model=8, context=10) == 12 * 2 * 8 * 10
    assert flops_per_token(0, 0, lm_head_params=50, lm_head_fraction=0.2) == pytest.approx(40.0)
    assert gpu_key("NVIDIA H100 80GB HBM3") == "H100 SXM" and gpu_key("NVIDIA H200") == "H200"
    assert gpu_key("NVIDIA A40") == "A40" and gpu_key("Some GPU") is None
    assert mfu(1000.0, 989e6, "NVIDIA H100 80GB HBM3") == pytest.approx(1e-3)
    assert mfu(1000.0, 989e6, "NVIDIA H100 80GB HBM3", n_gpus=2) == pytest.approx(5e-4)
    assert mfu(1000.0, 1e9, None) is None


def test_launch_command_strips_gpus_and_relaunches_tunebench() -> None:
    argv = ["tunebench", "train", "cfg.yaml", "--gpus", "2", "--set", "training.max_steps=3", "--gpus=2"]
    assert strip_gpus(argv[1:]) == ["train", "cfg.yaml", "--set", "training.max_steps=3"]
    gpu = launch_command(4, ["train", "cfg.yaml"], cuda=True)
    assert gpu[1:3] == ["-m", "accelerate.commands.launch"] and "4" in gpu
    assert gpu[-4:] == ["-m", "tunebench", "train", "cfg.yaml"]
    cpu = launch_command(2, ["train", "cfg.yaml"], cuda=False)
    assert "torch.distributed.run" in cpu and "--nproc_per_node" in cpu
