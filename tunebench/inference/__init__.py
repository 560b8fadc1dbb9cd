"""Inference: predictions for a split (local LoRA, base model, or an OpenAI-compatible endpoint)
and an OpenAI-compatible server for a fine-tuned run (:mod:`tunebench.inference.serve`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from tunebench.config import ExperimentConfig
    from tunebench.rundir import RunDir

__all__ = ["predict"]


def predict(config: ExperimentConfig, run: RunDir, split: str) -> Path:
    """Write ``run.predictions(split)`` (resumable) and record stage ``predict:<split>``."""
    from tunebench.inference.predict import predict as _predict

    return _predict(config, run, split)
