"""Running a study: every cell through the pipeline (finished stages skipped, an interrupted
cell resumed where it stopped), ensembles last, one process's subset with ``--cells``.
The study's schema and its expansion into cells live in :mod:`tunebench.config.study`; the
report is written once every cell has finished.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunebench.config.study import Cell, StudyConfig, expand, load_study
from tunebench.errors import TunebenchError
from tunebench.io import write_json
from tunebench.providers import get_provider
from tunebench.rundir import RunDir


def study_index(study: StudyConfig, cells: list[Cell]) -> dict[str, Any]:
    """What the report needs to find the cells again (written as <runs_dir>/study.json)."""
    return {
        "name": study.name,
        "description": study.description,
        "cells": [
            {
                "name": c.name,
                "system": c.system,
                "base_system": c.base_system,
                "task": c.task,
                "provider": c.config.provider,
                "description": c.description,
            }
            for c in cells
        ],
    }


def select_cells(cells: list[Cell], patterns: Sequence[str] | None) -> list[Cell]:
    """The cells whose name matches any shell-style pattern (all cells without patterns).

    A pattern that matches no cell is an error naming the cells there are: a typo must not
    quietly run nothing.
    """
    if not patterns:
        return cells
    names = [c.name for c in cells]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):  # the selection's own rule
            raise TunebenchError(
                f"--cells {pattern!r} matches no cell; the study's cells: {', '.join(names)}"
            )
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def run_order(cells: list[Cell]) -> list[Cell]:
    """The cells in study order, ensembles last: they vote over other cells' predictions."""
    return sorted(cells, key=lambda c: get_provider(c.config.provider).needs_other_runs)


def run_study(
    path: str | Path,
    yes: bool = False,
    overrides: dict[str, Any] | None = None,
    cells: Sequence[str] | None = None,
    gpus: int = 1,
) -> Path | None:
    """Run the study's cells (resuming finished work), then write the report; returns its folder.

    ``cells`` (shell-style patterns on cell names) runs a subset, e.g. one task per GPU in
    parallel processes; the report is then written only once every cell of the study has
    finished (its ``cost`` stage done), and ``None`` is returned otherwise. A failing cell does
    not stop the others; the failures are raised together at the end (rerun the same command to
    retry them: finished cells are skipped). ``gpus``: each cell trains and predicts on that many
    processes.
    """
    from rich.console import Console

    from tunebench.pipeline import run_experiment
    from tunebench.report import write_report

    console = Console(stderr=True)
    study = load_study(path)
    every_cell = expand(study, overrides, str(path))
    chosen = select_cells(every_cell, cells)
    runs_dir = study.resolved_runs_dir()
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_json(runs_dir / "study.json", study_index(study, every_cell))
    failures: list[str] = []
    chosen = run_order(chosen)
    for number, cell in enumerate(chosen, start=1):
        console.print(f"[{number}/{len(chosen)}] {cell.name} ({cell.config.provider})")
        try:
            run_experiment(cell.config, yes=yes, gpus=gpus, kind="study")
        except TunebenchError as exc:
            console.print(f"[bold red]failed:[/] {cell.name}: {exc}", highlight=False)
            failures.append(f"{cell.name}: {exc}")
    if failures:
        raise TunebenchError(f"{len(failures)} of {len(chosen)} cells failed: " + "; ".join(failures))
    # finished = its last stage done: another process may still be running a cell it has opened
    missing = [c.name for c in every_cell if not RunDir(c.config.run_dir).stage_done("cost")]
    if missing:
        console.print(
            f"report not written: {len(missing)} cells not finished yet ({', '.join(missing)}); run them, "
            f"or drop their systems from {path} and run `tunebench report {path}` for the finished ones",
            highlight=False,
            soft_wrap=True,
        )
        return None
    report = write_report(path)
    from tunebench.tracking import track_study

    cell_dirs = [c.config.run_dir for c in every_cell]
    track_study(runs_dir, cell_dirs, report_dir=report, **every_cell[0].config.tracking.model_dump())
    return report
