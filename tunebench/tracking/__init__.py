"""Log finished runs and studies to MLflow, Weights & Biases, TensorBoard or Trackio.

Tracking is a stage after the others: it reads the run directory's files
(:mod:`tunebench.tracking.replay`) and hands them to each tracker named in
``tracking.report_to`` through that library's own client. It is idempotent per run directory
(``tracking.json`` records each tracker's run id; a logged run is skipped), runs in the main
process only, and never fails a finished run: a tracker that errors or cannot be reached is
reported in one warning and left out, and the next ``tunebench run`` tries it again. Only a
tracker whose library is missing is an error (naming the extra that installs it), raised before
anything is logged.

    track_run(run_dir, ["mlflow"])                       # one experiment, one tracked run
    track_study(study_dir, cells, ["mlflow", "wandb"])   # a parent run, one child per cell
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tunebench.rundir import now
from tunebench.tracking.base import Destination, Tracker, missing_extra, read_records, write_record
from tunebench.tracking.replay import TrackedRun, read_run, read_study, study_cells

__all__ = ["check_installed", "track_run", "track_study"]


def _tracker_class(name: str) -> type[Tracker]:
    if name == "mlflow":
        from tunebench.tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker
    if name == "wandb":
        from tunebench.tracking.wandb_tracker import WandbTracker

        return WandbTracker
    if name == "tensorboard":
        from tunebench.tracking.tensorboard_tracker import TensorboardTracker

        return TensorboardTracker
    if name == "trackio":
        from tunebench.tracking.trackio_tracker import TrackioTracker

        return TrackioTracker
    from tunebench.errors import TunebenchError

    raise TunebenchError(
        f"tracking.report_to: unknown tracker '{name}' (mlflow, wandb, tensorboard, trackio)"
    )


def check_installed(report_to: Sequence[str]) -> None:
    """Raise the one-line error naming the extra for a tracker whose library is missing (call it
    before a long run, so the run does not end in it)."""
    import importlib.util

    def missing(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a parent package missing, or an import blocked
            return True

    for name in report_to:
        if any(missing(module) for module in _tracker_class(name).modules):
            raise missing_extra(name)


def is_main_process() -> bool:
    """Only the main process logs: one run per experiment however many processes trained it."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def _warn(message: str) -> None:
    Console(stderr=True).print(f"warning: {message}", highlight=False, soft_wrap=True)


class _Session:
    """The trackers of one call; a tracker that fails is warned about once and dropped."""

    def __init__(self, report_to: Sequence[str], where: Destination) -> None:
        self.trackers = [_tracker_class(name)(where) for name in dict.fromkeys(report_to)]

    def log(self, run: TrackedRun, parents: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Log ``run`` to every live tracker (under ``parents[tracker]``); returns the records."""
        records = {}
        for tracker in list(self.trackers):
            try:
                records[tracker.name] = log_once(tracker, run, (parents or {}).get(tracker.name))
            except Exception as exc:  # a tracker must never fail the run it reports on
                self.trackers.remove(tracker)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                _warn(
                    f"{tracker.name} could not log {run.name} ({first}); the run itself is complete. "
                    "Run the same command again to log it."
                )
        return records


def log_once(tracker: Tracker, run: TrackedRun, parent: dict[str, Any] | None) -> dict[str, Any]:
    """Log ``run`` unless ``tracking.json`` says this tracker already did, at this location."""
    previous = read_records(run.root).get(tracker.name)
    here = tracker.location()
    if previous and previous.get("location") == here:
        if previous.get("complete"):
            return previous
        tracker.discard(previous)
    record = {**tracker.start(run, parent), "location": here, "complete": False}
    write_record(run.root, tracker.name, record)
    tracker.log(run)
    tracker.finish()
    record.update(complete=True, logged=now())
    write_record(run.root, tracker.name, record)
    return record


def track_run(
    run_dir: str | Path,
    report_to: Sequence[str],
    *,
    project: str = "tunebench",
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Log one finished run directory to each tracker in ``report_to``; returns the records
    (tracker -> its run id and where), empty when there is nothing to do."""
    if not report_to or not is_main_process():
        return {}
    run_dir = Path(run_dir).resolve()
    check_installed(report_to)
    session = _Session(report_to, Destination(run_dir.parent, project, tracking_uri))
    return session.log(read_run(run_dir))


def track_study(
    study_dir: str | Path,
    cells: Sequence[str | Path] | None = None,
    report_to: Sequence[str] = (),
    *,
    report_dir: str | Path | None = None,
    project: str = "tunebench",
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Log a study as a parent run (its report as artifacts) with one child run per cell.

    ``study_dir``: the study's runs folder (with ``study.json``); ``cells``: the cells' run
    directories (default: every cell ``study.json`` lists). Returns the records: ``study`` and
    one per cell name.
    """
    if not report_to or not is_main_process():
        return {}
    study_dir = Path(study_dir).resolve()
    check_installed(report_to)
    listed = {c["name"]: c for c in study_cells(study_dir)}
    folders = [Path(c).resolve() for c in cells] if cells is not None else [study_dir / n for n in listed]
    session = _Session(report_to, Destination(study_dir, project, tracking_uri))
    parent = read_study(study_dir, Path(report_dir).resolve() if report_dir else None)
    parents = session.log(parent)
    out: dict[str, Any] = {"study": parents}
    for folder in folders:
        info = listed.get(folder.name, {})
        labels = {k: str(info[k]) for k in ("system", "task", "provider") if info.get(k) is not None}
        out[folder.name] = session.log(read_run(folder, "cell", {**labels, "study": parent.name}), parents)
    return out
