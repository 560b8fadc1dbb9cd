"""``provider: local``: fine-tune the base model here (a LoRA adapter, or every weight with
``training.method: full``), then predict with what was trained.

Training runs :func:`tunebench.training.train` (on one process or several, one per GPU); this
module records what it returns (``train_summary.json``, ``adapter/`` or ``model/``, the
manifest's ``train`` stage), then chooses the checkpoint by the task metric when the config
asks for it (:mod:`.choose`). The run can be served and exported (the adapter merged into the
base, or the fully trained model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.cost import self_hosted_cost
from tunebench.io import write_json
from tunebench.providers import choose
from tunebench.providers.registry import Provider
from tunebench.rundir import RunDir
from tunebench.training import checkpoint as ckpt


def main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def trained_dir(config: ExperimentConfig, run: RunDir) -> Path:
    """The run's ``adapter/`` (LoRA) or ``model/`` (full fine-tuning)."""
    return run.trained_dir(config.training.method)  # type: ignore[union-attr]


def record_training(config: ExperimentConfig, run: RunDir, summary: dict[str, Any]) -> None:
    """Publish the best checkpoint's adapter (or model) in the run, write
    ``train_summary.json`` and record the ``train`` stage."""
    target = trained_dir(config, run)
    best = run.checkpoints_dir / f"step-{summary['best_step']}"
    ckpt.publish_adapter(best / target.name, target)
    write_json(run.train_summary, summary)
    run.record_stage(
        "train",
        steps=summary["steps"],
        best_step=summary["best_step"],
        best_validation_loss=summary["best_validation_loss"],
        wall_time_s=summary["wall_time_s"],
        tokens_per_s=summary["tokens_per_s"],
        gpu_type=summary["gpu_type"],
        gpu_count=summary["gpu_count"],
    )


class LocalProvider(Provider):
    name = "local"
    trains = True
    multi_process = frozenset({"train", "predict"})
    can_serve = True
    can_export = True
    ensemble_member = True

    def train(
        self, config: ExperimentConfig, run: RunDir, resume: bool = True, yes: bool = False
    ) -> dict[str, Any]:
        from tunebench.training import train

        summary = train(config, run, resume=resume)
        if main_process():  # once, after every process has finished training
            record_training(config, run, summary)
            choose.choose_checkpoint(config, run)
        return summary

    def after_training(self, config: ExperimentConfig, run: RunDir) -> None:
        choose.choose_checkpoint(config, run)  # a choice interrupted after training resumes here

    def predict(self, config: ExperimentConfig, run: RunDir, split: str) -> Path:
        from tunebench.inference.predict import predict_local

        task, examples = self.task_and_examples(config, run, split)
        return predict_local(config, run, split, task, examples, adapter=trained_dir(config, run))

    def reuse_predictions(self, config: ExperimentConfig, run: RunDir, split: str) -> bool:
        if config.training.select_checkpoint_by != "validation_metric":
            return False
        return choose.reuse_chosen_predictions(config, run, split)

    def cost(self, config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
        return self_hosted_cost(config, run, trained=True)

    def export(self, config: ExperimentConfig, run: RunDir, out: Path | None, dtype: str) -> Path:
        from tunebench.providers.export import export_merged

        return export_merged(config, run, out, dtype)


PROVIDER = LocalProvider()
