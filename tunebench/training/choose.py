"""Choose the run's adapter by the task metric on the validation split, not by its loss.

With ``training.select_checkpoint_by: validation_metric`` the loop keeps the
``checkpoints_to_compare`` checkpoints with the lowest validation loss. Afterwards each of them
predicts the validation split exactly as the final model will (same generation settings, the
same stage code), the task's scorer rates it, and the best :meth:`Task.headline_metric` wins;
ties go to the lower validation loss. The chosen adapter replaces ``RUN/adapter``, the scores go
to ``RUN/checkpoint_choice.json`` (predictions and metrics of every candidate under
``RUN/checkpoint_choice/step-N/``), and the manifest records the ``choose`` stage, so a rerun
skips it and an interrupted one resumes its predictions.
"""

from __future__ import annotations

import gc
import math
import shutil
from typing import Any

import torch

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import iter_jsonl, read_json, write_json
from tunebench.rundir import RunDir
from tunebench.training import checkpoint as ckpt

STAGE = "choose"


def candidate_steps(run: RunDir, count: int) -> list[tuple[int, float]]:
    """(step, validation loss) of the ``count`` lowest-loss checkpoints still on disk."""
    on_disk = {step for step, _ in ckpt.list_checkpoints(run.checkpoints_dir)}
    losses: dict[int, float] = {}
    if run.metrics_log.is_file():
        for row in iter_jsonl(run.metrics_log):
            loss = row.get("loss")
            if row.get("split") == "validation" and row.get("step") in on_disk and loss is not None:
                losses[int(row["step"])] = float(loss)
    return sorted(losses.items(), key=lambda item: (item[1], item[0]))[:count]


def pick(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The best metric; among equals the lower validation loss, then the earlier step."""
    if not candidates:
        raise TunebenchError("no checkpoint to choose from")

    def key(c: dict[str, Any]) -> tuple[float, float, int]:
        value = c["value"] if c["value"] is not None and math.isfinite(c["value"]) else -math.inf
        return (-value, c["validation_loss"], c["step"])

    return min(candidates, key=key)


def score_checkpoint(config: ExperimentConfig, run: RunDir, step: int) -> dict[str, Any]:
    """Predict and score the validation split with checkpoint ``step``'s adapter."""
    from tunebench.data.prepare import load_prepared
    from tunebench.evaluation import evaluate
    from tunebench.inference.predict import predict_local
    from tunebench.tasks import get_task

    task = get_task(config.task)
    # a run directory of its own: the checkpoint's adapter and the validation split, so the
    # prediction stage runs unchanged (and resumes, keyed by the adapter's files)
    scratch = RunDir(run.root / "checkpoint_choice" / f"step-{step}")
    if not scratch.config_path.is_file():
        scratch.write_config(config)
    if not scratch.adapter_dir.is_dir():
        ckpt.publish_adapter(run.checkpoints_dir / f"step-{step}" / "adapter", scratch.adapter_dir)
    target = scratch.prepared("validation")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.prepared("validation"), target)
    examples = load_prepared(scratch, "validation")
    try:
        path = predict_local(config, scratch, "validation", task, examples, single_process=True)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    metrics = evaluate(config.task.name, path, scratch.eval_dir("validation"), task.scorer_options())
    name, value = task.headline_metric(metrics)
    return {"step": step, "metric": name, "value": value}


def choose_checkpoint(config: ExperimentConfig, run: RunDir) -> dict[str, Any] | None:
    """Run the choice if the config asks for it and it has not run yet; its record (or None)."""
    if config.provider != "local" or config.training.select_checkpoint_by != "validation_metric":
        return None
    record_path = run.root / "checkpoint_choice.json"
    trained = run.manifest().get("stages", {}).get("train", {}).get("finished")
    if record_path.is_file():
        record = read_json(record_path)
        if run.stage_done(STAGE) and record.get("train_finished") == trained:
            return record
        shutil.rmtree(run.root / "checkpoint_choice", ignore_errors=True)  # of an earlier training
    if not run.prepared("validation").is_file() or not run.prepared("validation").read_text().strip():
        raise TunebenchError(
            "training.select_checkpoint_by validation_metric needs a validation split "
            "(task.validation: held_out or study)"
        )
    steps = candidate_steps(run, config.training.checkpoints_to_compare)
    if not steps:
        raise TunebenchError(f"{run.checkpoints_dir}: no checkpoint with a validation loss to choose from")
    candidates = [{**score_checkpoint(config, run, step), "validation_loss": loss} for step, loss in steps]
    chosen = pick(candidates)
    ckpt.publish_adapter(run.checkpoints_dir / f"step-{chosen['step']}" / "adapter", run.adapter_dir)
    record = {
        "chosen_step": chosen["step"],
        "metric": chosen["metric"],
        "candidates": candidates,
        "train_finished": trained,
    }
    write_json(record_path, record)
    if run.train_summary.is_file():
        summary = read_json(run.train_summary)
        summary.update(chosen_step=chosen["step"], chosen_by=f"validation {chosen['metric']}")
        write_json(run.train_summary, summary)
    run.record_stage(STAGE, chosen_step=chosen["step"], metric=chosen["metric"], value=chosen["value"])
    return record
