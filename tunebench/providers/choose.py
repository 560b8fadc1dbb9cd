"""Choose the run's adapter (or full model) by the task metric on the validation split, not by
its loss.

With ``training.select_checkpoint_by: validation_metric`` the loop keeps the
``checkpoints_to_compare`` checkpoints with the lowest validation loss. Afterwards each of them
predicts the validation split exactly as the final model will (same generation settings, the
same stage code), the task's scorer rates it, and the best :meth:`Task.headline_metric` wins;
ties go to the lower validation loss. The chosen adapter replaces ``RUN/adapter``, the scores go
to ``RUN/checkpoint_choice.json`` (predictions and metrics of every candidate under
``RUN/checkpoint_choice/step-N/``), and the manifest records the ``choose`` stage. A rerun reads
back every candidate already scored from the same checkpoint files and resumes an interrupted
one's predictions.
"""

from __future__ import annotations

import filecmp
import gc
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import atomic_write, iter_jsonl, read_json, write_json
from tunebench.rundir import TRAINED_FOLDER, RunDir
from tunebench.training import checkpoint as ckpt

STAGE = "choose"
RECORD = "checkpoint_choice.json"  # in the run directory


def trained_folder(config: ExperimentConfig) -> str:
    """``adapter`` (LoRA) or ``model`` (full fine-tuning): the folder each candidate predicts with."""
    return TRAINED_FOLDER[config.training.method]  # type: ignore[union-attr]


def candidate_dir(run: RunDir, step: int) -> RunDir:
    """Where checkpoint ``step`` predicts and scores the validation split while being compared."""
    return RunDir(run.root / "checkpoint_choice" / f"step-{step}")


def lowest_validation_losses(
    metrics_log: Path, count: int, steps: set[int] | None = None
) -> list[tuple[int, float]]:
    """(step, validation loss) of the ``count`` lowest validation losses logged in
    ``metrics.jsonl`` (among ``steps`` when given), lowest first, the earlier step among equals.
    The loop keeps these checkpoints; the choice scores them."""
    losses: dict[int, float] = {}
    if metrics_log.is_file():
        for row in iter_jsonl(metrics_log):
            loss, step = row.get("loss"), row.get("step")
            if row.get("split") == "validation" and loss is not None and (steps is None or step in steps):
                losses[int(step)] = float(loss)
    return sorted(losses.items(), key=lambda item: (item[1], item[0]))[:count]


def candidate_steps(run: RunDir, count: int) -> list[tuple[int, float]]:
    """(step, validation loss) of the ``count`` lowest-loss checkpoints still on disk."""
    on_disk = {step for step, _ in ckpt.list_checkpoints(run.checkpoints_dir)}
    return lowest_validation_losses(run.metrics_log, count, on_disk)


def pick(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The best metric; among equals the lower validation loss, then the earlier step."""
    if not candidates:
        raise TunebenchError("no checkpoint to choose from")

    def key(c: dict[str, Any]) -> tuple[float, float, int]:
        value = c["value"] if c["value"] is not None and math.isfinite(c["value"]) else -math.inf
        return (-value, c["validation_loss"], c["step"])

    return min(candidates, key=key)


def adapter_identity(folder: Path) -> list[list[Any]]:
    """(name, size, mtime) of an adapter's files: a re-saved or retrained checkpoint differs."""
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir()) if f.is_file()]


def score_checkpoint(config: ExperimentConfig, run: RunDir, step: int) -> dict[str, Any]:
    """Predict and score the validation split with checkpoint ``step``'s adapter.

    The work happens in a run directory of its own (``checkpoint_choice/step-N``: the
    checkpoint's adapter, the validation split), so the prediction stage runs unchanged and
    resumes after a crash. A candidate scored before is read back, as long as it was scored
    from the same checkpoint files; otherwise (retrained, re-saved) its folder starts over.
    """
    from tunebench.evaluation import evaluate
    from tunebench.inference.predict import predict_local
    from tunebench.tasks import get_task
    from tunebench.tasks.base import load_prepared

    task = get_task(config.task)
    folder = trained_folder(config)
    source = run.checkpoints_dir / f"step-{step}" / folder
    scratch = candidate_dir(run, step)
    origin = {folder: adapter_identity(source)}
    marker = scratch.root / "source.json"
    if not marker.is_file() or read_json(marker) != json.loads(json.dumps(origin)):
        shutil.rmtree(scratch.root, ignore_errors=True)
        scratch.write_config(config)
        ckpt.publish_adapter(source, scratch.root / folder)
        scratch.prepared("validation").parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.prepared("validation"), scratch.prepared("validation"))
        write_json(marker, origin)
    metrics_path = scratch.eval_dir("validation") / "metrics.json"
    if scratch.stage_done("evaluate:validation") and metrics_path.is_file():
        metrics = read_json(metrics_path)
    else:
        examples = load_prepared(scratch, "validation")
        try:
            path = predict_local(
                config,
                scratch,
                "validation",
                task,
                examples,
                adapter=scratch.root / folder,
                single_process=True,
            )
        finally:
            free_memory()
        metrics = evaluate(config.task.name, path, scratch.eval_dir("validation"), task.scorer_options())
        scratch.record_stage("evaluate:validation")
    name, value = task.headline_metric(metrics)
    return {"step": step, "metric": name, "value": value}


def prediction_seconds(run: RunDir, step: int) -> float:
    """Model loading + generation time of candidate ``step``'s validation predictions, as its own
    manifest measured them: the GPU time the choice cost, the same however often it is read back."""
    stage = candidate_dir(run, step).manifest().get("stages", {}).get("predict:validation", {})
    return float(stage.get("wall_time_s") or 0.0) + float(stage.get("load_time_s") or 0.0)


def free_memory() -> None:
    """Drop what the previous model left behind (cycles hold it until a collection)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def choose_checkpoint(config: ExperimentConfig, run: RunDir) -> dict[str, Any] | None:
    """Choose (or re-choose: scored candidates are read back, not predicted again) and publish
    the adapter when the config asks for it; the record, or None."""
    if config.training.select_checkpoint_by != "validation_metric":
        return None
    if not run.prepared("validation").is_file() or not run.prepared("validation").read_text().strip():
        raise TunebenchError(
            "training.select_checkpoint_by validation_metric needs a validation split "
            "(task.validation: held_out or study)"
        )
    steps = candidate_steps(run, config.training.checkpoints_to_compare)
    if not steps:
        raise TunebenchError(f"{run.checkpoints_dir}: no checkpoint with a validation loss to choose from")
    free_memory()  # the trained model and its optimizer, before a generator loads
    started = time.perf_counter()
    candidates = [{**score_checkpoint(config, run, step), "validation_loss": loss} for step, loss in steps]
    wall = time.perf_counter() - started  # this call: loading, predicting, scoring (≈0 read back)
    chosen = pick(candidates)
    # every time: a rerun of `tunebench train` on a finished run republishes the best-loss one
    folder = trained_folder(config)
    ckpt.publish_adapter(run.checkpoints_dir / f"step-{chosen['step']}" / folder, run.root / folder)
    record = {"chosen_step": chosen["step"], "metric": chosen["metric"], "candidates": candidates}
    write_json(run.root / RECORD, record)
    if run.train_summary.is_file():
        summary = read_json(run.train_summary)
        summary.update(chosen_step=chosen["step"], chosen_by=f"validation {chosen['metric']}")
        write_json(run.train_summary, summary)
    run.record_stage(
        STAGE,
        chosen_step=chosen["step"],
        metric=chosen["metric"],
        value=chosen["value"],
        wall_time_s=round(wall, 3),
        gpu_time_s=round(sum(prediction_seconds(run, step) for step, _ in steps), 3),
    )
    return record


def reuse_chosen_predictions(config: ExperimentConfig, run: RunDir, split: str) -> bool:
    """Take the chosen candidate's validation predictions as the run's own (True if taken).

    The chosen checkpoint already predicted the validation split with the same config, the same
    prepared examples and the very adapter now published, so predicting it again would only
    repeat the work (with execution-guided voting, most of a minute per SQL cell). The manifest
    stage keeps the candidate's timings and says where the rows came from.
    """
    if split != "validation" or not (run.root / RECORD).is_file():
        return False
    step = read_json(run.root / RECORD)["chosen_step"]
    scratch = candidate_dir(run, step)
    stage = scratch.manifest().get("stages", {}).get("predict:validation")
    if stage is None or not scratch.predictions("validation").is_file():
        return False
    from tunebench.rundir import comparable

    same = (
        comparable(scratch.load_config()) == comparable(config)  # operational keys may differ
        and _same_file(scratch.prepared("validation"), run.prepared("validation"))
        and _same_folder(scratch.root / trained_folder(config), run.root / trained_folder(config))
    )
    if not same:
        return False
    target = run.predictions("validation")
    with scratch.predictions("validation").open("rb") as source, atomic_write(target, "wb") as out:
        shutil.copyfileobj(source, out)
    from tunebench.inference.resume import unfinished_files

    for leftover in unfinished_files(target):  # of an earlier, interrupted prediction of the split
        leftover.unlink(missing_ok=True)
    info = {k: v for k, v in stage.items() if k != "finished"}
    run.record_stage("predict:validation", **info, reused_from=f"checkpoint_choice/step-{step}")
    return True


def _same_folder(a: Path, b: Path) -> bool:
    """Same file names and bytes (an adapter: its weights and its config)."""
    if not (a.is_dir() and b.is_dir()):
        return False
    names = sorted(f.name for f in a.iterdir() if f.is_file())
    if names != sorted(f.name for f in b.iterdir() if f.is_file()):
        return False
    return all(_same_file(a / name, b / name) for name in names)


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
