"""Run directories for report/cost tests, built from the real data and scored by the real scorers.

Three systems per task on the first N test examples of the real datasets:

* ``oracle`` (provider ``local``): predicts the gold itself;
* ``perturbed`` (provider ``base``): the gold on even rows, a broken copy on odd rows (SQL: a
  syntax error, a wrong table or a wrong literal; ViGGO: a wrong function, a dropped or an
  altered attribute), so the scorers see every failure kind;
* ``gpt`` (provider ``openai``): the gold except every third row.

A custom task (the real ViGGO test CSV read as the user's own file: ``ref`` -> ``mr``) has
``oracle`` and ``sloppy`` (gold on every fifth row; the others empty, truncated, over-long or
upper-cased, in turn) and ``halfway`` (the first half of the gold on odd rows); ``unbroken``
(odd rows: the gold without spaces, eight times over) is there for layout tests.

Predictions go through :func:`tunebench.pipeline.evaluate_stage` (the real scorers). Wall times,
throughputs and token counts in the manifests and summaries are fixture inputs (not
measurements): the tests check that reports and cost files reproduce them faithfully.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunebench.config import validate_experiment
from tunebench.data.paths import local_data_dir
from tunebench.io import append_jsonl, write_json, write_jsonl
from tunebench.pipeline import evaluate_stage, open_run
from tunebench.rundir import RunDir
from tunebench.tasks import get_task


def break_sql(gold: str, i: int) -> str:
    kind = i % 3
    if kind == 0:
        return gold.replace("SELECT", "SELEC", 1).replace("select", "selec", 1)
    if kind == 1:
        return re.sub(r"(?i)\bFROM\s+(\w+)", "FROM no_such_table", gold, count=1)
    return gold + " LIMIT 0" if "limit" not in gold.lower() else gold.replace("LIMIT", "LIMIT 0 +", 1)


def break_viggo(gold: str, i: int) -> str:
    kind = i % 3
    if kind == 0:
        return "request" + gold[gold.index("(") :] if not gold.startswith("request(") else "inform" + gold[7:]
    if kind == 1:  # drop the last attribute
        head, _, _ = gold.rstrip(")").rpartition(", ")
        return head + ")" if head else gold.replace("]", "x]", 1)
    return gold.replace("]", " edition]", 1)


SYSTEMS = {"oracle": "local", "perturbed": "base", "gpt": "openai"}


def prediction(system: str, task: str, gold: str, i: int) -> str:
    if system == "oracle" or (system == "perturbed" and i % 2 == 0) or (system == "gpt" and i % 3):
        return gold
    return break_sql(gold, i) if task == "sql" else break_viggo(gold, i)


def make_run(
    root: Path, system: str, task: str, n: int, skip_ids: int = 0, extra: dict[str, Any] | None = None
) -> RunDir:
    """One scored run directory ``<root>/<system>-<task>``."""
    provider = SYSTEMS.get(system, "local")
    data: dict[str, Any] = {
        "name": f"{system}-{task}",
        "runs_dir": str(root),
        "provider": provider,
        "task": {"name": task, "max_eval_examples": n + skip_ids},
        **({"training": {"max_steps": 3}} if provider == "local" else {}),
        **(extra or {}),
    }
    cfg = validate_experiment(data)
    run = open_run(cfg)
    examples = get_task(cfg.task).splits()["test"][skip_ids:]
    rows = []
    for i, ex in enumerate(examples):
        pred = prediction(system, task, ex.completion, i)
        rows.append(
            {"id": ex.id, "prompt": ex.prompt, "prediction": pred, "gold": ex.completion, **ex.fields,
             "raw": pred + "\n", "prompt_tokens": 100 + i, "completion_tokens": 20 + i % 5, "finish_reason": "stop"}
        )  # fmt: skip
    write_jsonl(run.predictions("test"), rows)
    info: dict[str, Any] = {
        "wall_time_s": 2.0 * len(rows),
        "n": len(rows),
        "predictions_per_s": 0.5,
        "gpu_type": "NVIDIA A40" if system == "oracle" else "cpu",
        "gpu_count": 1,
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
    }
    run.record_stage("predict:test", **info)
    if cfg.provider in ("local", "openai"):
        write_curve(run, openai=cfg.provider == "openai")
        write_json(run.train_summary, summary(cfg.provider))
        run.record_stage("train")
    evaluate_stage(cfg, run, "test", suite_size=2, workers=1)
    return run


def write_curve(run: RunDir, openai: bool) -> None:
    for step in range(1, 7):
        epoch = step / 6
        append_jsonl(run.metrics_log, {"step": step, "split": "train", "loss": 2.0 / step, "epoch": epoch,
                                       "tokens": 1000 * step, "wall_time": 10.0 * step, "lr": None if openai else 3e-4})  # fmt: skip
        if step % 2 == 0:
            append_jsonl(run.metrics_log, {"step": step, "split": "validation", "loss": 2.2 / step, "epoch": epoch,
                                           "tokens": 1000 * step, "wall_time": 10.0 * step, "lr": None})  # fmt: skip


def summary(provider: str) -> dict[str, Any]:
    if provider == "openai":
        return {"provider": "openai", "model": "gpt-3.5-turbo-0125", "steps": 6, "epochs": 1.0, "train_tokens": 6000,
                "wall_time_s": 1800.0, "gpu_type": None, "gpu_count": None, "peak_memory_gb": None,
                "best_validation_loss": 0.7333, "best_step": 6, "tokens_per_s": None, "skipped_steps": 0,
                "job_id": "ftjob-fixture", "fine_tuned_model": "ft:gpt-3.5-turbo-0125:org::fixture",
                "trained_tokens": 250_000}  # fmt: skip
    return {"provider": "local", "model": "qwen2.5-coder-1.5b", "steps": 6, "epochs": 1.0, "train_tokens": 6000,
            "wall_time_s": 3600.0, "gpu_type": "NVIDIA A40", "gpu_count": 1, "peak_memory_gb": 10.5,
            "best_validation_loss": 0.3667, "best_step": 6, "tokens_per_s": 1.67, "skipped_steps": 0}  # fmt: skip


def make_study_runs(root: Path, n: int = 12) -> Path:
    """Every system x both tasks under ``root``, each with cost.json; returns ``root``."""
    from tunebench.pipeline import write_cost

    for task in ("sql", "viggo"):
        for system in SYSTEMS:
            run = make_run(root, system, task, n)
            write_cost(run.load_config(), run)
    return root


CUSTOM_SYSTEMS = ("oracle", "sloppy", "halfway")


def custom_prediction(system: str, gold: str, i: int) -> str:
    """``sloppy`` cycles through every kind of wrong text answer; ``halfway`` truncates odd rows."""
    if system == "sloppy":
        return [gold, "", gold[: len(gold) // 2], " ".join([gold] * 3), gold.upper()][i % 5]
    if system == "halfway" and i % 2:
        return gold[: len(gold) // 2]
    if system == "unbroken" and i % 2:  # one long word: a table must wrap it, not widen
        return "".join(gold.split()) * 8
    return gold


def make_custom_run(root: Path, system: str, n: int, metrics: list[str] | None = None) -> RunDir:
    """One scored custom-task run ``<root>/<system>-custom`` (provider base: nothing trained)."""
    data_root = local_data_dir(None)
    assert data_root is not None, "set TUNEBENCH_DATA_DIR to the data folder"
    csv = str(data_root / "viggo" / "test.csv")
    task = {"name": "custom", "train_file": csv, "test_file": csv, "prompt_template": "{ref}\n",
            "target_field": "mr", "max_eval_examples": n}  # fmt: skip
    if metrics:
        task["metrics"] = metrics
    cfg = validate_experiment(
        {"name": f"{system}-custom", "runs_dir": str(root), "provider": "base", "task": task}
    )
    run = open_run(cfg)
    rows = [
        {"id": ex.id, "prompt": ex.prompt, "prediction": custom_prediction(system, ex.completion, i),
         "gold": ex.completion, **ex.fields, "prompt_tokens": 50, "completion_tokens": 10}
        for i, ex in enumerate(get_task(cfg.task).splits()["test"])
    ]  # fmt: skip
    write_jsonl(run.predictions("test"), rows)
    run.record_stage("predict:test", wall_time_s=1.0 * n, n=n, predictions_per_s=1.0, gpu_type="cpu")
    evaluate_stage(cfg, run, "test")
    return run


def make_custom_runs(
    root: Path, n: int = 20, systems: tuple[str, ...] = CUSTOM_SYSTEMS, metrics: list[str] | None = None
) -> Path:
    for system in systems:
        make_custom_run(root, system, n, metrics)
    return root
