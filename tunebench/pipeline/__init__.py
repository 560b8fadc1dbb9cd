"""One experiment end to end: prepare -> train -> predict -> evaluate -> cost.

The run's provider (:mod:`tunebench.providers`) decides what training and predicting mean;
this module only orders the stages.

Each step is a plain function over a :class:`RunDir`; :func:`run_experiment` calls them in
order and skips the ones the manifest records as finished, so an interrupted run resumes
at the stage it stopped in (and training itself resumes from its last checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig, dump_config
from tunebench.errors import TunebenchError
from tunebench.evaluation import evaluate
from tunebench.io import write_json
from tunebench.pipeline.prepare import prepare
from tunebench.providers import provider_of
from tunebench.rundir import RunDir, differences_from_run, stale_stages
from tunebench.tasks import get_task
from tunebench.training.distributed import launch

#: how to get past a refused run directory, for one experiment and for a study's cell (whose
#: name and runs_dir the study sets, so --set name would not help)
WAY_OUT = {
    "experiment": "give every stage the same --set options, or start a new run with "
    "`--set name=NEW_NAME`, or delete the folder",
    "study": "change the study's name or runs_dir in its YAML to start new cells, or delete this "
    "cell's folder to run it again",
}


def check_config(config: ExperimentConfig) -> None:
    """What can be checked before any work, so a mistake fails now and binds no run directory:
    the model name, the task's data files, and the metrics (imported, not yet computed)."""
    from tunebench.evaluation.custom import resolve_metric
    from tunebench.models.presets import check_model_name

    if "model" in config.own_sections:
        check_model_name(config.model.name)
    task = config.task
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(task, key, None)
        if path and not Path(path).expanduser().is_file():
            raise TunebenchError(f"task.{key}: {Path(path).expanduser().resolve()}: no such file")
    options = get_task(task).scorer_options()
    for metric in options.get("metrics", ()):  # the metrics a task lets the user choose
        resolve_metric(metric, options)


def open_run(config: ExperimentConfig, kind: str = "experiment") -> RunDir:
    """Create (or reopen) the run directory (``kind``: experiment or study, for the advice).

    A changed config is taken where it leaves finished work valid: changed metrics score again,
    changed generation settings predict again, more steps or epochs continue training from the
    last checkpoint; a run with no finished stage takes any new config. A change that
    invalidates training (model, data, LoRA, learning rate...) is refused.
    """
    check_config(config)
    run = RunDir(config.run_dir)
    if not run.config_path.is_file():
        run.write_config(config)
        return run
    changed = differences_from_run(run, config)
    if not changed:
        return run
    stale = stale_stages(run, config)
    if stale is None:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise TunebenchError(
            f"{run.root} holds a run with a different config ({shown}), which would invalidate its "
            f"training. A run directory keeps one training: {WAY_OUT[kind]}"
        )
    run.forget_stages(stale)
    run.write_config(config)
    return run


def planned_stages(config: ExperimentConfig) -> list[str]:
    """The manifest stages a finished run of ``config`` records, in pipeline order (providers
    that train nothing have no train stage)."""
    stages = ["prepare"]
    if provider_of(config).trains:
        stages.append("train")
    for split in config.eval_splits:
        stages += [f"predict:{split}", f"evaluate:{split}"]
    return [*stages, "cost"]


def plan(config: ExperimentConfig) -> dict[str, Any]:
    """What ``tunebench run`` would do with ``config``, without doing any of it: ``status`` is
    new, partly done, done, or refused (its run directory holds a config whose training this
    one would invalidate; ``detail`` names the keys), and ``to_run`` lists the stages still to
    run (a changed config's stale stages included)."""
    run = RunDir(config.run_dir)
    stages = planned_stages(config)
    try:
        check_config(config)
    except TunebenchError as exc:
        return {"run_dir": str(run.root), "status": "invalid", "to_run": [], "detail": str(exc)}
    if not run.config_path.is_file():
        return {"run_dir": str(run.root), "status": "new", "to_run": stages, "detail": ""}
    stale = stale_stages(run, config)
    changed = differences_from_run(run, config)
    if stale is None:
        more = f"; and {len(changed) - 1} more" if len(changed) > 1 else ""
        return {"run_dir": str(run.root), "status": "refused", "to_run": [], "detail": changed[0] + more}

    def to_redo(stage: str) -> bool:
        return any(stage == s or (s.endswith(":") and stage.startswith(s)) for s in stale)

    to_run = [stage for stage in stages if not run.stage_done(stage) or to_redo(stage)]
    status = "done" if not to_run else "partly done"
    return {"run_dir": str(run.root), "status": status, "to_run": to_run, "detail": "; ".join(changed[:2])}


def ensure_prepared(config: ExperimentConfig, run: RunDir) -> None:
    """Run the prepare stage unless the manifest records it as finished."""
    if not run.stage_done("prepare"):
        prepare(config, run)


def train_stage(
    config: ExperimentConfig, run: RunDir, resume: bool = True, yes: bool = False
) -> dict[str, Any]:
    """Fine-tune as the provider does (nothing for providers that train nothing)."""
    return provider_of(config).train(config, run, resume=resume, yes=yes)


def predict_stage(config: ExperimentConfig, run: RunDir, split: str) -> Path:
    return provider_of(config).predict(config, run, split)


def evaluate_stage(config: ExperimentConfig, run: RunDir, split: str, **options: Any) -> dict[str, Any]:
    """Score ``predictions/<split>.jsonl`` into ``eval/<split>/``."""
    task = get_task(config.task)
    merged = {**task.scorer_options(), **options}
    metrics = evaluate(config.task.name, run.predictions(split), run.eval_dir(split), merged)
    run.record_stage(f"evaluate:{split}")
    return metrics


def compute_cost(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """The cost record of a finished run (what ``cost.json`` holds), priced by its provider."""
    header = {"provider": config.provider, "model": config.model_label, "task": config.task.name}
    return {**header, **provider_of(config).cost(config, run)}


def write_cost(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """Compute the run's cost, write ``cost.json`` and record the ``cost`` stage."""
    record = compute_cost(config, run)
    write_json(run.cost_path, record)
    run.record_stage("cost")
    return record


def launched_stage(config: ExperimentConfig, gpus: int, args: list[str], what: str) -> None:
    """``tunebench COMMAND <config> ARGS`` on ``gpus`` processes (one per GPU); an error if any
    of them failed.

    The children get this process's config, not the run directory's ``config.yaml``: that file
    keeps the first run's operational keys (``training.fsdp``, batch sizes, ``runs_dir``), and a
    rerun that changed them (say, resuming with FSDP after running out of memory) must use the
    new values. ``runs_dir`` is made absolute so the children find this very run directory.
    """
    import tempfile

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

    ``gpus`` > 1: the stages the provider can run on several processes (training, local
    predictions) run on that many, each launched as ``tunebench train|predict ... --gpus N``
    would be; scoring and cost stay in this process.
    """
    from tunebench.tracking import check_installed, track_run

    check_installed(config.tracking.report_to)  # a missing extra fails now, not after training
    provider = provider_of(config)
    run = open_run(config, kind)
    ensure_prepared(config, run)
    provider.before_stages(config, run)
    if not run.stage_done("train"):
        if gpus > 1 and "train" in provider.multi_process:
            launched_stage(config, gpus, ["train"], "training")
        else:
            train_stage(config, run, resume=True, yes=yes)
    else:
        provider.after_training(config, run)
    for split in config.eval_splits:
        if not run.stage_done(f"predict:{split}") and not provider.reuse_predictions(config, run, split):
            if gpus > 1 and "predict" in provider.multi_process:
                launched_stage(config, gpus, ["predict", "--split", split], f"predictions for {split}")
            else:
                predict_stage(config, run, split)
        if not run.stage_done(f"evaluate:{split}"):
            evaluate_stage(config, run, split)
    if not run.stage_done("cost"):
        write_cost(config, run)
    if kind == "experiment":  # a study logs its cells itself, as children of the study's run
        track_run(run.root, **config.tracking.model_dump())
    return run
