"""Read a finished run directory (or a study's folder) into what a tracker logs.

Everything comes from the run directory's files, so a run can be logged after the fact, on
another machine, or again: ``config.yaml`` (parameters), ``metrics.jsonl`` (the per-step
curve), ``eval/<split>/metrics.json`` (final metrics and their CIs), ``train_summary.json`` and
``cost.json`` (totals), and the files themselves as artifacts. The config is read as plain YAML,
not validated, so runs written by older versions of tunebench are read as they are.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunebench.errors import TunebenchError
from tunebench.io import iter_jsonl, read_json, read_text

Scalar = str | int | float | bool | None

#: per-step fields that are bookkeeping, not curves (``tokens``/``train_time`` give tokens/s)
NOT_CURVES = {"step", "split", "interpolated", "skipped", "wall_time", "train_time"}
#: progress fields a validation row repeats from the training row of the same step
PROGRESS = {"epoch", "tokens", "lr"}


@dataclass
class TrackedRun:
    """One run as trackers see it: every value already read from the run directory's files."""

    name: str
    root: Path
    kind: str  # experiment, cell or study
    params: dict[str, Scalar] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    #: (file, folder among the tracker's artifacts: ``""`` at the top, ``predictions``, ...)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    description: str | None = None
    #: when the run started and its last stage finished (epoch ms, from ``manifest.json``)
    started_ms: int | None = None
    finished_ms: int | None = None

    @property
    def last_step(self) -> int:
        return self.steps[-1][0] if self.steps else 0


def artifacts_under(base: Path, files: list[Path], prefix: str = "") -> list[tuple[Path, str]]:
    """``files`` with their artifact folders: their folders relative to ``base``, under ``prefix``."""
    out = []
    for path in files:
        folder = path.relative_to(base).parent.as_posix()
        folder = "" if folder == "." else folder
        out.append((path, "/".join(part for part in (prefix, folder) if part)))
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Scalar]:
    """Nested mappings as dotted keys; lists and other values become JSON text or stay scalars."""
    if isinstance(data, dict):
        out: dict[str, Scalar] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if data is None or isinstance(data, str | int | float | bool):
        return {key: data}
    return {key: json.dumps(data, sort_keys=True, default=str)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise TunebenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TunebenchError(f"{path}: expected a mapping of config sections")
    return data


def curve(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """Per-step metrics from ``metrics.jsonl`` rows, one entry per step in step order, named
    ``<split>/<field>``: every numeric field of a row (a validation row without the progress
    fields its training row has), plus ``train/tokens_per_s`` (tokens over training time so far,
    as the progress bar shows it) and ``train/skipped_steps`` (non-finite updates so far). A step
    logged twice (a resumed run) keeps its last row."""
    by_step: dict[int, dict[str, float]] = {}
    skipped = 0
    for row in sorted(rows, key=lambda r: (r.get("step") or 0, r.get("split") != "train")):
        step, split = row.get("step"), row.get("split") or "train"
        if not isinstance(step, int):
            continue
        values = by_step.setdefault(step, {})
        for key, raw in row.items():
            value = _number(raw)
            if key in NOT_CURVES or value is None or (split != "train" and key in PROGRESS):
                continue
            values[f"{split}/{key}"] = value
        if split == "train":
            skipped += bool(row.get("skipped"))
            values["train/skipped_steps"] = float(skipped)
            seconds = _number(row.get("train_time")) or _number(row.get("wall_time"))
            tokens = _number(row.get("tokens"))
            if seconds and tokens is not None and not row.get("interpolated"):
                values["train/tokens_per_s"] = tokens / seconds
    return [(step, values) for step, values in sorted(by_step.items()) if values]


def final_metrics(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """``<split>/<metric>`` for every number of a split's ``metrics.json``, a CI pair as
    ``<metric>_ci95_low`` and ``_ci95_high`` (nested tallies stay in the file, an artifact)."""
    out: dict[str, float] = {}
    for key, raw in metrics.items():
        value = _number(raw)
        if value is not None:
            out[f"{split}/{key}"] = value
        elif isinstance(raw, list | tuple) and len(raw) == 2 and key.endswith("_ci95"):
            low, high = (_number(v) for v in raw)
            if low is not None and high is not None:
                out[f"{split}/{key}_low"], out[f"{split}/{key}_high"] = low, high
    return out


def cost_metrics(cost: dict[str, Any]) -> dict[str, float]:
    """Training and prediction cost in $ and GPU-hours from ``cost.json`` (``cost/...``); an
    OpenAI run (its figures under ``openai``) has dollars and no GPU-hours, a CPU run without a
    CPU price GPU-hours and no dollars."""
    out: dict[str, float] = {}
    cost = {**cost, **(cost.get("openai") or {})}
    training = cost.get("training") or {}
    for key, name in (("cost_usd", "training_usd"), ("gpu_hours", "training_gpu_hours")):
        if (value := _number(training.get(key))) is not None:
            out[f"cost/{name}"] = value
    if "cost/training_usd" not in out and (value := _number(cost.get("training_cost_usd"))) is not None:
        out["cost/training_usd"] = value
    for split, info in (cost.get("inference") or {}).items():
        if (usd := _number(info.get("cost_usd"))) is not None:
            out[f"cost/{split}_prediction_usd"] = usd
        wall, gpus = _number(info.get("wall_time_s")), _number(info.get("gpu_count"))
        if wall is not None and gpus:
            out[f"cost/{split}_prediction_gpu_hours"] = round(wall * gpus / 3600, 6)
    dollars = [v for k, v in out.items() if k.endswith("_usd")]
    if dollars:
        out["cost/total_usd"] = round(sum(dollars), 6)
    return out


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``train_summary.json`` as ``training/<key>`` (steps, best validation loss,
    tokens/s, peak memory, MFU, ...)."""
    return {f"training/{k}": v for k, raw in summary.items() if (v := _number(raw)) is not None}


def _epoch_ms(stamp: Any) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(str(stamp)).timestamp() * 1000) if stamp else None
    except ValueError:
        return None


def read_run_times(manifest: dict[str, Any]) -> tuple[int | None, int | None]:
    """When a run was created and when its last stage finished (epoch ms; None if unknown)."""
    finished = [_epoch_ms(stage.get("finished")) for stage in (manifest.get("stages") or {}).values()]
    return _epoch_ms(manifest.get("created")), max((f for f in finished if f is not None), default=None)


def _model_name(config: dict[str, Any], summary: dict[str, Any]) -> Scalar:
    if config.get("provider") == "openai":
        return summary.get("fine_tuned_model") or (config.get("openai") or {}).get("model")
    return (config.get("model") or {}).get("name")


def read_run(root: Path, kind: str = "experiment", labels: dict[str, str] | None = None) -> TrackedRun:
    """A finished run directory as a :class:`TrackedRun` (``labels``: a study cell's system, task
    and the like, kept as tags)."""
    root = Path(root)
    config_path = root / "config.yaml"
    if not config_path.is_file():
        raise TunebenchError(f"{root}: not a run directory (no config.yaml)")
    config = _read_yaml(config_path)
    manifest = read_json(root / "manifest.json") if (root / "manifest.json").is_file() else {}
    summary = read_json(root / "train_summary.json") if (root / "train_summary.json").is_file() else {}
    cost = read_json(root / "cost.json") if (root / "cost.json").is_file() else {}
    commit = (manifest.get("environment") or {}).get("git_commit")
    params: dict[str, Scalar] = {
        **flatten(config),
        "model": _model_name(config, summary),
        "provider": config.get("provider", "local"),
        "git_commit": commit,
    }
    tags = {
        "provider": str(params["provider"]),
        "model": str(params["model"]),
        "task": str((config.get("task") or {}).get("name", "")),
        "kind": kind,
        **(labels or {}),
    }
    metrics_log = root / "metrics.jsonl"
    run = TrackedRun(
        name=str(config.get("name") or root.name),
        root=root,
        kind=kind,
        params=params,
        tags=tags,
        steps=curve(list(iter_jsonl(metrics_log))) if metrics_log.is_file() else [],
    )
    run.started_ms, run.finished_ms = read_run_times(manifest)
    for metrics_file in sorted(root.glob("eval/*/metrics.json")):
        run.final.update(final_metrics(metrics_file.parent.name, read_json(metrics_file)))
    run.final.update(summary_metrics(summary))
    run.final.update(cost_metrics(cost))
    files = ["config.yaml", "manifest.json", "metrics.jsonl", "train_summary.json", "cost.json"]
    found = [root / f for f in files if (root / f).is_file()]
    found += sorted(root.glob("eval/*/metrics.json")) + sorted(root.glob("predictions/*.jsonl"))
    run.artifacts = artifacts_under(root, found)
    return run


def study_cells(study_dir: Path) -> list[dict[str, Any]]:
    """The cells ``study.json`` lists (name, system, task, provider, description)."""
    index = Path(study_dir) / "study.json"
    if not index.is_file():
        raise TunebenchError(f"{study_dir}: not a study's runs folder (no study.json)")
    return list(read_json(index).get("cells") or [])


def read_study(study_dir: Path, report_dir: Path | None = None) -> TrackedRun:
    """The study itself, the parent of its cells' runs: its name, description and cell count as
    parameters, ``study.json`` and the report folder's files as artifacts."""
    study_dir = Path(study_dir)
    index = read_json(study_dir / "study.json") if (study_dir / "study.json").is_file() else {}
    cells = index.get("cells") or []
    name = str(index.get("name") or study_dir.name)
    run = TrackedRun(
        name=name,
        root=study_dir,
        kind="study",
        params={
            "study": name,
            "cells": len(cells),
            "systems": ", ".join(sorted({str(c.get("system")) for c in cells})),
            "tasks": ", ".join(sorted({str(c.get("task")) for c in cells})),
        },
        tags={"kind": "study", "study": name},
        description=(index.get("description") or "").strip() or None,
    )
    manifests = [study_dir / str(c.get("name")) / "manifest.json" for c in cells]
    times = [read_run_times(read_json(m)) for m in manifests if m.is_file()]
    run.started_ms = min((t[0] for t in times if t[0] is not None), default=None)
    run.finished_ms = max((t[1] for t in times if t[1] is not None), default=None)
    if (study_dir / "study.json").is_file():
        run.artifacts.append((study_dir / "study.json", ""))
    report = Path(report_dir) if report_dir else study_dir / "report"
    if report.is_dir():
        files = [p for p in sorted(report.rglob("*")) if p.is_file()]
        run.artifacts += artifacts_under(report, files, prefix="report")
    return run
