"""One experiment end to end: prepare -> train -> predict -> evaluate -> cost.

Each step is a plain function over a :class:`RunDir`; :func:`run_experiment` calls them in
order and skips the ones the manifest records as finished, so an interrupted run resumes
at the stage it stopped in (and training itself resumes from its last checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.data.prepare import prepare
from tunebench.errors import TunebenchError
from tunebench.rundir import RunDir
from tunebench.tasks import get_task

#: Settings that change how a run executes, not what it computes: a rerun may change them.
OPERATIONAL_KEYS = {
    "runs_dir": None,
    "generation": {"batch_size", "cache_implementation"},
    "training": {"num_workers", "fsdp"},  # how, not what: FSDP and DDP give the same run
    "openai": {"yes", "poll_interval_s", "max_concurrency"},
    "tracking": None,  # where a run is logged to, not what it computes
}


def comparable(config: ExperimentConfig) -> dict[str, Any]:
    """The config without :data:`OPERATIONAL_KEYS`, for deciding whether a run is the same run."""
    data = config.model_dump()
    for section, keys in OPERATIONAL_KEYS.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data.get(section, {}).pop(key, None)
    return data


def config_differences(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (nested mappings walked)."""
    out = []
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key), after.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            out += config_differences(old, new, dotted + ".")
        elif old != new:
            out.append(f"{dotted}: {old!r} in the run, {new!r} now")
    return out


def differences_from_run(run: RunDir, config: ExperimentConfig) -> list[str]:
    """How ``config`` differs from the config the run directory holds (operational keys aside)."""
    return config_differences(comparable(run.load_config()), comparable(config))


#: how to get past a refused run directory, for one experiment and for a study's cell (whose
#: name and runs_dir the study sets, so --set name would not help)
WAY_OUT = {
    "experiment": "give every stage the same --set options, or start a new run with "
    "`--set name=NEW_NAME`, or delete the folder",
    "study": "change the study's name or runs_dir in its YAML to start new cells, or delete this "
    "cell's folder to run it again",
}


def open_run(config: ExperimentConfig, kind: str = "experiment") -> RunDir:
    """Create (or reopen) the run directory; a different config for the same name is refused
    (``kind``: experiment or study, for the advice)."""
    run = RunDir(config.run_dir)
    if run.config_path.is_file():
        changed = differences_from_run(run, config)
        if changed:
            shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise TunebenchError(
                f"{run.root} holds a run with a different config ({shown}). A run directory keeps "
                f"one config for all its stages: {WAY_OUT[kind]}"
            )
    else:
        run.write_config(config)
    return run


def planned_stages(config: ExperimentConfig) -> list[str]:
    """The manifest stages a finished run of ``config`` records, in pipeline order (``base``
    and ``endpoint`` have no training stage)."""
    stages = ["prepare"]
    if config.provider in ("local", "openai", "ensemble"):
        stages.append("train")
    for split in config.eval_splits:
        stages += [f"predict:{split}", f"evaluate:{split}"]
    return [*stages, "cost"]


def plan(config: ExperimentConfig) -> dict[str, Any]:
    """What ``tunebench run`` would do with ``config``, without doing any of it: ``status`` is
    new, partly done, done, or refused (its run directory holds another config; ``detail``
    names the keys), and ``to_run`` lists the stages still to run."""
    run = RunDir(config.run_dir)
    stages = planned_stages(config)
    if not run.config_path.is_file():
        return {"run_dir": str(run.root), "status": "new", "to_run": stages, "detail": ""}
    changed = differences_from_run(run, config)
    if changed:
        more = f"; and {len(changed) - 1} more" if len(changed) > 1 else ""
        return {"run_dir": str(run.root), "status": "refused", "to_run": [], "detail": changed[0] + more}
    to_run = [stage for stage in stages if not run.stage_done(stage)]
    status = "done" if not to_run else "partly done"
    return {"run_dir": str(run.root), "status": status, "to_run": to_run, "detail": ""}


def ensure_prepared(config: ExperimentConfig, run: RunDir) -> None:
    """Run the prepare stage unless the manifest records it as finished."""
    if not run.stage_done("prepare"):
        prepare(config, run)


def train_stage(
    config: ExperimentConfig, run: RunDir, resume: bool = True, yes: bool = False
) -> dict[str, Any]:
    """Fine-tune according to the provider (nothing to do for ``base`` and ``endpoint``; an
    ensemble records its members' training as its own)."""
    if config.provider == "local":
        from tunebench.training import train
        from tunebench.training.choose import choose_checkpoint

        summary = train(config, run, resume=resume)
        if os.environ.get("RANK", "0") == "0":  # once, after every process has finished training
            choose_checkpoint(config, run)
        return summary
    if config.provider == "openai":
        from tunebench.providers.openai import train_openai

        return train_openai(config, run, yes=yes)
    if config.provider == "ensemble":
        from tunebench.inference.ensemble import train_ensemble

        return train_ensemble(config, run)
    return {}


def predict_stage(config: ExperimentConfig, run: RunDir, split: str) -> None:
    from tunebench.inference import predict

    predict(config, run, split)


def evaluate_stage(config: ExperimentConfig, run: RunDir, split: str, **options: Any) -> dict[str, Any]:
    """Score ``predictions/<split>.jsonl`` into ``eval/<split>/``."""
    from tunebench.evaluation import evaluate

    task = get_task(config.task)
    merged = {**task.scorer_options(), **options}
    metrics = evaluate(config.task.name, run.predictions(split), run.eval_dir(split), merged)
    run.record_stage(f"evaluate:{split}")
    return metrics


def _reused_from_choice(config: ExperimentConfig, run: RunDir, split: str) -> bool:
    """The chosen checkpoint's validation predictions stand in for predicting them again."""
    if config.provider != "local" or config.training.select_checkpoint_by != "validation_metric":
        return False
    from tunebench.training.choose import reuse_chosen_predictions

    return reuse_chosen_predictions(config, run, split)


def launched_stage(config: ExperimentConfig, gpus: int, args: list[str], what: str) -> None:
    """``tunebench COMMAND <config> ARGS`` on ``gpus`` processes (one per GPU); an error if any
    of them failed.

    The children get this process's config, not the run directory's ``config.yaml``: that file
    keeps the first run's operational keys (``training.fsdp``, batch sizes, ``runs_dir``), and a
    rerun that changed them (say, resuming with FSDP after running out of memory) must use the
    new values. ``runs_dir`` is made absolute so the children find this very run directory.
    """
    import tempfile

    from tunebench.config import dump_config
    from tunebench.training.distributed import launch

    pinned = config.model_copy(update={"runs_dir": str(Path(config.runs_dir).resolve())})
    with tempfile.TemporaryDirectory(prefix="tunebench-launch-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(dump_config(pinned), encoding="utf-8")
        command, *rest = args
        status = launch(gpus, ["tunebench", command, str(path), *rest])
    if status != 0:
        raise TunebenchError(f"{what} on {gpus} processes failed (exit status {status}); rerun to resume")


def run_experiment(
    config: ExperimentConfig, yes: bool = False, gpus: int = 1, kind: str = "experiment"
) -> RunDir:
    """Every stage of one experiment, skipping finished ones.

    ``gpus`` > 1: training (provider local) and predictions (local, base) run on that many
    processes, each stage launched as ``tunebench train|predict ... --gpus N`` would be; scoring
    and cost stay in this process.
    """
    from tunebench.tracking import check_installed, track_run

    check_installed(config.tracking.report_to)  # a missing extra fails now, not after training
    run = open_run(config, kind)
    ensure_prepared(config, run)
    if config.provider == "ensemble":  # a member trained or predicted again: vote again
        from tunebench.inference.ensemble import forget_stale

        forget_stale(config, run)
    if not run.stage_done("train"):
        if gpus > 1 and config.provider == "local":
            launched_stage(config, gpus, ["train"], "training")
        else:
            train_stage(config, run, resume=True, yes=yes)
    elif config.provider == "local":  # a choice interrupted after training resumes here
        from tunebench.training.choose import choose_checkpoint

        choose_checkpoint(config, run)
    for split in config.eval_splits:
        if not run.stage_done(f"predict:{split}") and not _reused_from_choice(config, run, split):
            if gpus > 1 and config.provider in ("local", "base"):
                launched_stage(config, gpus, ["predict", "--split", split], f"predictions for {split}")
            else:
                predict_stage(config, run, split)
        if not run.stage_done(f"evaluate:{split}"):
            evaluate_stage(config, run, split)
    if not run.stage_done("cost"):
        from tunebench.cost import write_cost

        write_cost(config, run)
    if kind == "experiment":  # a study logs its cells itself, as children of the study's run
        track_run(run.root, **config.tracking.model_dump())
    return run
