"""Base model loading, the LoRA adapter (peft), and the loss module the loop trains.

The loss module computes logits only where there is a label: hidden states at labeled
positions are gathered first, then projected by the lm_head (a 151k-token vocabulary makes
the full logits the largest tensor of a step; with completion-only loss most of them would
be thrown away). The projection + cross-entropy runs in chunks under activation
checkpointing, so even ``loss_on: full`` never holds all logits at once. On CUDA, liger-kernel's
fused linear cross-entropy replaces it when installed and ``training.liger`` is on.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from tunebench.config import ExperimentConfig, LoraConfig
from tunebench.errors import TunebenchError
from tunebench.models import varlen
from tunebench.training.data import labeled_positions

log = logging.getLogger("tunebench.training")

#: Selected positions per lm_head chunk: 4096 x 151k vocab x 4 bytes = 2.5 GB of fp32 logits.
LOSS_CHUNK = 4096


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and CUDA) RNGs: called right before LoRA init."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --- base model ---------------------------------------------------------------------------
def load_base(config: ExperimentConfig, device: torch.device) -> tuple[Any, Any, int, int]:
    """(model, tokenizer, training EOS id, pad id) through :mod:`tunebench.models`."""
    from tunebench import models

    model_cfg = config.model
    if not config.training.packing and model_cfg.attn_implementation == "auto":
        # var-len attention (auto's choice on CUDA) needs packed rows; padded batches use sdpa
        model_cfg = model_cfg.model_copy(update={"attn_implementation": "sdpa"})
    model, tokenizer = models.load_model(model_cfg, device=str(device), for_training=True)
    gen = getattr(model, "generation_config", None)
    return model, tokenizer, models.training_eos_id(tokenizer, gen), models.pad_token_id(tokenizer, gen)


# --- LoRA -----------------------------------------------------------------------------------
def check_target_modules(model: nn.Module, targets: list[str] | str) -> None:
    """Every listed target must match at least one module (peft's suffix rule), named if not."""
    if isinstance(targets, str):
        return  # "all-linear": peft resolves it to every linear layer but the output head
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise TunebenchError(
            f"lora.target_modules: {', '.join(missing)} match no module of the model "
            f"(its linear layers: {', '.join(linear)}; or use 'all-linear')"
        )


def apply_lora(model: nn.Module, lora: LoraConfig, seed: int) -> nn.Module:
    """Wrap ``model`` in a peft LoRA/DoRA adapter, initialised from ``seed``.

    Adapter weights stay float32 even when the base is bfloat16 (peft's
    ``autocast_adapter_dtype``): AdamW updates of 1e-4 relative size vanish in bf16's 8-bit
    mantissa; compute still runs in bf16 under autocast.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    check_target_modules(model, lora.target_modules)
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    seed_everything(seed)  # LoRA A matrices are drawn from torch's RNG: same seed, same init
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:  # peft's own check, e.g. a module type LoRA cannot wrap
        raise TunebenchError(f"lora.target_modules: {exc}") from None


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a peft model (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# --- loss -----------------------------------------------------------------------------------
def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def labeled_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = LOSS_CHUNK
) -> torch.Tensor:
    """Sum of token cross-entropies at the given positions; chunks are recomputed in backward
    so only one chunk of logits is alive at a time."""
    if hidden.shape[0] <= chunk:
        return _chunk_loss(hidden, weight, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        part = torch.utils.checkpoint.checkpoint(
            _chunk_loss,
            hidden[start : start + chunk],
            weight,
            targets[start : start + chunk],
            use_reentrant=False,
        )
        total = total + part
    return total


def liger_loss_fn() -> Any | None:
    """liger-kernel's fused linear cross-entropy (sum), or None when not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


class LossModel(nn.Module):
    """forward(batch) -> summed token loss over labeled positions (float32 scalar).

    Wrapping the loss in the module that DDP/FSDP sees keeps gradient synchronisation on the
    module's ``forward`` while the decoder and lm_head are called separately.
    """

    def __init__(self, model: nn.Module, fused_loss: Any | None = None) -> None:
        super().__init__()
        self.model = model
        self.fused_loss = fused_loss

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        seq_lens: list[int] | None = None,
        labeled_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``labeled_at``: flat indices of the labeled positions (the collator's, so no
        device sync is needed to find them); without it they are found from ``targets``."""
        lm = causal_lm(self.model)
        extra: dict[str, Any] = {}
        if seq_lens is not None and getattr(lm.config, "_attn_implementation", None) == varlen.NAME:
            extra = varlen.boundaries(seq_lens, input_ids.device)
        out = lm.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **extra,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if labeled_at is None:
            labeled_at = labeled_positions(targets)
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, labeled_at)
        labels = targets.reshape(-1).index_select(0, labeled_at)
        weight = lm.get_output_embeddings().weight
        if self.fused_loss is not None:
            return self.fused_loss(weight, selected, labels).float()
        return labeled_loss_sum(selected, weight, labels)
