"""``provider: base``: the base model as it is, zero-shot or k-shot (``generation.few_shot``),
in the task's plain prompt or in the model's chat format (``generation.prompt_format: chat``).
Nothing is trained; predictions and their GPU time are priced like a LoRA run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.cost import self_hosted_cost
from tunebench.providers.registry import Provider
from tunebench.rundir import RunDir


class BaseProvider(Provider):
    name = "base"
    multi_process = frozenset({"predict"})
    can_serve = True
    ensemble_member = True

    def predict(self, config: ExperimentConfig, run: RunDir, split: str) -> Path:
        from tunebench.inference.predict import predict_local

        task, examples = self.task_and_examples(config, run, split)
        return predict_local(config, run, split, task, examples, few_shot=True)

    def cost(self, config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
        return self_hosted_cost(config, run, trained=False)


PROVIDER = BaseProvider()
