"""What a run trains (``training.method``): a LoRA adapter, or every weight of the model.

The loop does not know which: :func:`.build.build` asks the method which parameters train and
how a checkpoint's weights are restored, and :meth:`.loop.Trainer.save` asks it what to write.

* ``lora``: a peft adapter over the frozen base; checkpoints and the run hold ``adapter/``.
* ``full``: every parameter trains, no peft wrapper. On a GPU the weights are float32 (the master
  copy that AdamW updates) and compute runs under bf16 autocast, with float32 AdamW moments:
  16 bytes a parameter (weights 4, gradients 4, two moments 8) plus activations. bf16 weights
  would halve the weights but an AdamW step of ~1e-5 relative size is below bf16's 8-bit
  mantissa for most weights and is lost in rounding; keeping float32 masters avoids that with
  no extra machinery (no Kahan sums), the simplest stable choice. ``training.optimizer:
  adamw_8bit`` keeps the float32 masters but stores the moments in a byte each (10 bytes a
  parameter instead of 16). On
  CPU everything is float32. Checkpoints and the run hold ``model/model.safetensors``
  (:mod:`tunebench.models.weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunebench.config import ExperimentConfig
from tunebench.models import weights
from tunebench.rundir import TRAINED_FOLDER
from tunebench.training import fsdp
from tunebench.training.lora import apply_lora, causal_lm, seed_everything


class LoraMethod:
    """A LoRA adapter over the frozen base (peft)."""

    name = "lora"
    folder = TRAINED_FOLDER["lora"]

    def prepare(self, base: nn.Module, config: ExperimentConfig) -> nn.Module:
        return apply_lora(base, config.lora, config.training.seed)

    def restore(self, model: nn.Module, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))

    def gathered_state(self, model: nn.Module, sharded: bool) -> dict[str, torch.Tensor] | None:
        """Under FSDP the adapter gathered whole (a collective); else None (peft reads it)."""
        return fsdp.full_adapter_state(model) if sharded else None

    def write(self, model: Any, state: dict[str, torch.Tensor] | None, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True, state_dict=state)


class FullMethod:
    """Every weight of the model trains (float32 masters)."""

    name = "full"
    folder = TRAINED_FOLDER["full"]

    def prepare(self, base: nn.Module, config: ExperimentConfig) -> nn.Module:
        seed_everything(config.training.seed)  # dropout, as a LoRA run seeds before its init
        base.float()  # the master copy; compute dtype comes from autocast (loop.Trainer.autocast)
        for param in base.parameters():
            param.requires_grad_(True)
        return base

    def restore(self, model: nn.Module, folder: Path) -> None:
        weights.load_weights(causal_lm(model), folder)

    def gathered_state(self, model: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
        """Every parameter in full on CPU (under FSDP gathered: a collective, every process)."""
        named = causal_lm(model).named_parameters()
        return {name: fsdp.full_tensor(p).detach().to("cpu", copy=True) for name, p in named}

    def write(self, model: Any, state: dict[str, torch.Tensor] | None, folder: Path) -> None:
        assert state is not None
        weights.save_weights(state, folder)


Method = LoraMethod | FullMethod


def training_method(name: str) -> Method:
    return FullMethod() if name == "full" else LoraMethod()
