"""LoRA fine-tuning engine: ``train(config, run, resume=True) -> train_summary``.

Modules: :mod:`.data` (tokenize, label by position, pack, micro-batches), :mod:`.lora` (base
model, peft adapter, labeled-positions-only loss), :mod:`.loop` (the loop), :mod:`.checkpoint`
(atomic resumable state), :mod:`.mfu` (model FLOPs utilisation), :mod:`.distributed`
(``tunebench train --gpus N``), :mod:`.fsdp` (sharded training), :mod:`.export` (the adapter
merged into the base model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunebench.config import ExperimentConfig
    from tunebench.rundir import RunDir


def train(config: ExperimentConfig, run: RunDir, resume: bool = True) -> dict[str, Any]:
    """Fine-tune according to ``config`` into ``run`` (see :func:`tunebench.training.loop.train`)."""
    from tunebench.training.loop import train as _train

    return _train(config, run, resume=resume)


__all__ = ["train"]
