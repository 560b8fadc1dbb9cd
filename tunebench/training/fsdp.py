"""FSDP2 for LoRA (``training.fsdp: true`` with several processes).

DDP keeps a full copy of the frozen base on every GPU; FSDP2 (``torch.distributed.fsdp.fully_shard``)
keeps 1/N of every parameter per process and all-gathers one decoder layer at a time, so a model
N times larger than one GPU's memory can be LoRA-tuned. Each decoder layer is one FSDP unit; the
root unit is the :class:`~tunebench.training.lora.LossModel` (its forward is what the loop calls),
holding the embeddings, the final norm and the (tied) output head.

Two rules follow from sharding, and the loop keeps both:

* every process runs the same number of forward passes (each one all-gathers), so a process with
  fewer micro-batches in a step runs extra passes whose loss is multiplied by zero;
* saving gathers full tensors, which is a collective: every process calls :func:`full_adapter_state`
  and the optimizer's state through ``torch.distributed.checkpoint``; the main process writes them.

Tested on CPU with 2 gloo processes against 1 process (tests/test_training_run.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def shard(loss_model: nn.Module, decoder_layers: list[nn.Module], dtype: torch.dtype) -> None:
    """``fully_shard`` every decoder layer, then the root; in place.

    With a bf16 base the LoRA weights (float32) are all-gathered and computed in bf16 and their
    gradients reduced in float32: one dtype per all-gather, the usual FSDP mixed precision.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(loss_model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if dtype in (torch.bfloat16, torch.float16):
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(loss_model, mesh=mesh, mp_policy=policy)


def full_tensor(value: Any) -> Any:
    """A DTensor's full value (collective), anything else as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def full_adapter_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights, gathered in full on every process (collective), keyed as peft saves them."""
    return {
        key: full_tensor(value).detach().cpu()
        for key, value in peft_model.state_dict().items()
        if "lora_" in key
    }


def set_gradient_sync(loss_model: nn.Module, enabled: bool) -> None:
    """Reduce-scatter gradients in this backward (the step's last micro-batch) or keep them local."""
    loss_model.set_requires_gradient_sync(enabled)  # type: ignore[operator]
