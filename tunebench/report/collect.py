"""Gather what a report needs from run directories, and refuse inputs that cannot be compared.

The source is a study YAML (its cells name the run directories, and its ensembles' members from
elsewhere join as rows of their own), one run directory, or a folder of run directories (its ``study.json``, written by ``tunebench run STUDY.yaml``, gives the system and
task labels; without one they are derived from each run's config). Refused, with one line
naming the run: a study cell without a run directory, a run without predictions or scores for
a split, and two systems of one task evaluated on different examples or golds. In a folder
without ``study.json`` (a loose set of runs) an unfinished run is skipped with a warning instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl, read_text
from tunebench.rundir import RunDir
from tunebench.tasks import Task, get_task


@dataclass
class RunInfo:
    """One run directory, loaded."""

    name: str
    system: str
    task: str
    provider: str
    description: str | None
    run: RunDir
    config: ExperimentConfig
    manifest: dict[str, Any]
    summary: dict[str, Any] | None
    cost: dict[str, Any] | None
    curve: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_example: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def task_name(self) -> str:
        return self.config.task.name

    @cached_property
    def task_def(self) -> Task:
        """The run's task: what its metrics and verdicts mean, and how its errors break down."""
        return get_task(self.config.task)


@dataclass
class StudyData:
    """Everything the report shows, in display order."""

    title: str
    description: str | None
    source: Path
    study_text: str | None
    runs: list[RunInfo]
    alpha: float = 0.05
    reference: bool = True
    wrong_examples: int = 5
    default_out: Path | None = None

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.runs))

    @property
    def systems(self) -> list[str]:
        return list(dict.fromkeys(r.system for r in self.runs))

    def runs_of(self, task: str) -> list[RunInfo]:
        return [r for r in self.runs if r.task == task]

    def splits_of(self, task: str) -> list[str]:
        """Splits every run of the task was evaluated on (test first)."""
        runs = self.runs_of(task)
        common = set(runs[0].metrics)
        for r in runs[1:]:
            common &= set(r.metrics)
        return sorted(common, key=lambda s: (s != "test", s))


def collect(source: str | Path) -> StudyData:
    """Load a study YAML's cells or a folder of run directories, checked for comparability."""
    path = Path(source)
    if path.is_file():
        data = _from_study(path)
    elif path.is_dir() and RunDir(path).config_path.is_file():
        data = _from_run(path)
    elif path.is_dir():
        data = _from_folder(path)
    else:
        raise TunebenchError(f"{path}: no such study file or folder of run directories")
    for task in data.tasks:
        check_same_examples(data.runs_of(task), task)
    return data


def _from_study(path: Path) -> StudyData:
    from tunebench.config.study import expand, load_study

    study = load_study(path)
    runs = []
    for cell in expand(study, source=str(path)):
        run = RunDir(cell.config.run_dir)
        if not run.config_path.is_file():
            raise TunebenchError(
                f"{path}: cell '{cell.name}' has no run directory at {run.root} "
                f"(run `tunebench run {path}` first, or drop the system from {path} to report without it)"
            )
        runs.append(load_run(run, cell.system, cell.task, cell.description))
    runs = [*outside_members(runs), *runs]
    return StudyData(
        title=study.name,
        description=study.description,
        source=path,
        study_text=read_text(path),
        runs=runs,
        alpha=study.significance.alpha,
        reference=study.reference,
        wrong_examples=study.wrong_examples,
        default_out=study.resolved_report_dir(),
    )


def _from_run(folder: Path) -> StudyData:
    """One run directory: a report of its one system (and of the members it voted over)."""
    run = RunDir(folder)
    config = run.load_config()
    runs = [load_run(run, system_label(config), config.task.name, None)]
    return StudyData(
        title=config.name,
        description=None,
        source=folder,
        study_text=None,
        runs=[*outside_members(runs), *runs],
        default_out=folder / "report",
    )


def _from_folder(folder: Path) -> StudyData:
    index_path = folder / "study.json"
    if index_path.is_file():
        index = read_json(index_path)
        runs = []
        for cell in index.get("cells", []):
            run = RunDir(folder / cell["name"])
            if not run.config_path.is_file():
                raise TunebenchError(
                    f"{index_path}: cell '{cell['name']}' has no run directory at {run.root}"
                )
            runs.append(load_run(run, cell["system"], cell["task"], cell.get("description")))
        title, description = index.get("name", folder.name), index.get("description")
    else:
        runs = []
        found = sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file())
        for sub in found:
            run = RunDir(sub)
            config = run.load_config()
            unfinished = [
                split
                for split in config.eval_splits
                if not (run.predictions(split).is_file() and (run.eval_dir(split) / "metrics.json").is_file())
            ]
            if unfinished:  # a loose folder of runs: report the finished ones
                warn(f"skipped {sub}: {', '.join(unfinished)} not predicted and scored yet (unfinished run)")
                continue
            runs.append(load_run(run, system_label(config), config.task.name, None))
        if found and not runs:
            raise TunebenchError(
                f"{folder}: {len(found)} run directories, none finished (predicted and scored)"
            )
        # a study's runs live in <study>/runs: name the report after the study, not "runs"
        where = folder.resolve()  # "runs", "./runs" and "x/../runs" name the same folder
        title = where.parent.name if where.name == "runs" and where.parent.name else where.name
        description = None
    if not runs:
        raise TunebenchError(f"{folder}: no run directories (folders with config.yaml) found")
    runs = [*outside_members(runs), *runs]
    return StudyData(
        title=title,
        description=description,
        source=folder,
        study_text=None,
        runs=runs,
        default_out=folder / "report",
    )


def warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"warning: {message}", highlight=False)


def system_label(config: ExperimentConfig) -> str:
    """A run's system label without a study index: its name less the ``-<task>`` a study appends."""
    suffix = f"-{config.task.name}"
    return config.name[: -len(suffix)] if config.name.endswith(suffix) else config.name


def outside_members(runs: list[RunInfo]) -> list[RunInfo]:
    """Members of the study's ensembles that are not cells of the study, as rows of their own:
    an ensemble is read beside what it voted over."""
    from tunebench.providers import get_provider
    from tunebench.providers.ensemble import member_dirs

    inside = {r.run.root.resolve() for r in runs}
    extra: list[RunInfo] = []
    for info in runs:
        if not get_provider(info.provider).needs_other_runs:
            continue
        for member in member_dirs(info.config):
            if member.root.resolve() in inside or not member.config_path.is_file():
                continue  # a study cell already, or not reachable from here (the ensemble's row stands)
            inside.add(member.root.resolve())
            system = system_label(member.load_config())
            taken = {r.system for r in [*runs, *extra] if r.task == info.task}
            if system in taken:  # a study system of the same name: keep the rows apart
                system = f"{system} (member)"
            if system in taken:
                system = str(member.root)
            extra.append(load_run(member, system, info.task, f"ensemble member, from {member.root}"))
    return extra


def load_run(run: RunDir, system: str, task: str, description: str | None) -> RunInfo:
    """Read one run's config, manifest, summary, cost, loss curve, predictions and scores."""
    config = run.load_config()
    info = RunInfo(
        name=config.name,
        system=system,
        task=task,
        provider=config.provider,
        description=description,
        run=run,
        config=config,
        manifest=read_json(run.manifest_path) if run.manifest_path.is_file() else {},
        summary=read_json(run.train_summary) if run.train_summary.is_file() else None,
        cost=read_json(run.cost_path) if run.cost_path.is_file() else None,
        curve=read_jsonl(run.metrics_log, allow_empty=True) if run.metrics_log.is_file() else [],
    )
    for split in config.eval_splits:
        predictions = run.predictions(split)
        if not predictions.is_file():
            raise TunebenchError(
                f"system '{system}' has no predictions for task '{task}' split '{split}' ({predictions} missing)"
            )
        metrics_path = run.eval_dir(split) / "metrics.json"
        if not metrics_path.is_file():
            raise TunebenchError(
                f"system '{system}', task '{task}': predictions for '{split}' are not scored "
                f"({metrics_path} missing; run `tunebench run` again)"
            )
        info.predictions[split] = with_prompts(
            run, split, read_jsonl(predictions, required=("id", "prediction", "gold"))
        )
        info.metrics[split] = read_json(metrics_path)
        info.per_example[split] = per_example(info, split)
    return info


def with_prompts(run: RunDir, split: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prediction rows with the prompt each answered, from the run's prepared split where a
    provider's rows leave it out (the report shows it when a task names no input field)."""
    prepared = run.prepared(split)
    if all("prompt" in r for r in rows) or not prepared.is_file():
        return rows
    prompts = {r["id"]: r.get("prompt") for r in read_jsonl(prepared, required=("id",))}
    return [r if "prompt" in r else {**r, "prompt": prompts.get(r["id"])} for r in rows]


# What a re-score may change in metrics.json without changing a verdict: where and how fast.
INCIDENTAL_METRIC_KEYS = ("predictions", "task", "seconds", "options", "rescored")
# Recorded scorer options that name folders of the machine that scored (not settings).
MACHINE_PATHS = ("db_dir", "suite_cache_dir")


def per_example(info: RunInfo, split: str) -> list[dict[str, Any]]:
    """``eval/<split>/per_example.jsonl``, or, where it is missing, a fresh re-score.

    Why: committed studies keep predictions and metrics but not the per-example verdicts (they
    are large and follow from the predictions), so a report written from a clean checkout, or a
    study rerun that adds one cell beside committed ones, re-scores those runs. The re-score is
    written to a temporary folder, never over the committed files, and must reproduce the
    committed metrics: a mismatch is refused, not reported.
    """
    path = info.run.eval_dir(split) / "per_example.jsonl"
    if path.is_file():
        return read_jsonl(path, required=("id",))
    import json
    import tempfile

    from tunebench.evaluation import evaluate

    committed = info.metrics[split]
    with tempfile.TemporaryDirectory(prefix="tunebench-rescore-") as tmp:
        fresh = evaluate(
            info.config.task.name, info.run.predictions(split), tmp, rescore_options(info, split)
        )
        rows = read_jsonl(Path(tmp) / "per_example.jsonl", required=("id",))
    fresh = json.loads(json.dumps(fresh))  # as metrics.json holds it (lists, string keys)
    # the committed keys only: a metric a newer scorer adds is no reason to refuse an old run
    changed = sorted(k for k in committed if k not in INCIDENTAL_METRIC_KEYS and fresh.get(k) != committed[k])
    if changed:
        raise TunebenchError(
            f"system '{info.system}', task '{info.task}', split '{split}': {path} is missing and "
            f"re-scoring the predictions does not reproduce {path.parent / 'metrics.json'} "
            f"(differs in {', '.join(changed[:5])}); run `tunebench evaluate` on them again"
        )
    return rows


def rescore_options(info: RunInfo, split: str) -> dict[str, Any]:
    """The scorer settings the committed metrics recorded, with this machine's folders."""
    local = info.task_def.scorer_options()
    recorded = info.metrics[split].get("options")
    if not isinstance(recorded, dict):  # a scorer that records none: this task's defaults
        return local
    options = {k: v for k, v in recorded.items() if k not in MACHINE_PATHS}
    if recorded.get("db_dir"):  # scored on real databases: they are needed again
        if not local.get("db_dir"):
            raise TunebenchError(
                f"system '{info.system}', task '{info.task}', split '{split}': "
                f"{info.run.eval_dir(split) / 'per_example.jsonl'} is missing, and re-scoring the "
                "predictions needs the databases they were scored on, which this machine lacks "
                "(set TUNEBENCH_DATA_DIR, or task.data_dir, to the data folder)"
            )
        options["db_dir"] = local["db_dir"]
    return options


def check_same_examples(runs: list[RunInfo], task: str) -> None:
    """Every system of a task must be scored on the same ids with the same golds, in any order.

    The validation split is compared among systems with the same ``task.validation`` setting
    only: a system that validates on the test set (the original study's setting) has, by design,
    another validation split; its test split is still held to the same examples.
    """
    first = runs[0]
    for split in first.predictions:
        reference = {r["id"]: r["gold"] for r in first.predictions[split]}
        for other in runs[1:]:
            if split not in other.predictions:
                continue
            if split == "validation" and other.config.task.validation != first.config.task.validation:
                continue
            theirs = {r["id"]: r["gold"] for r in other.predictions[split]}
            where = f"task '{task}' split '{split}': systems '{first.system}' and '{other.system}'"
            if set(theirs) != set(reference):
                only = sorted(set(reference) ^ set(theirs))
                raise TunebenchError(
                    f"{where} were evaluated on different examples ({len(reference)} vs {len(theirs)} ids; "
                    f"e.g. '{only[0]}' is in one only): refusing to compare them"
                )
            for id_, gold in reference.items():
                if theirs[id_] != gold:
                    raise TunebenchError(
                        f"{where} have different golds for example '{id_}': refusing to compare them"
                    )
