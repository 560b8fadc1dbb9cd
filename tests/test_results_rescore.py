"""The committed GPU results re-score to exactly the committed metrics (issue: anyone can check them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.evaluation import evaluate
from tunebench.io import read_json
from tunebench.rundir import RunDir
from tunebench.tasks import get_task

RESULTS = Path(__file__).resolve().parents[1] / "results"
# every committed study: results/<study>/runs/<cell>/
CELLS = sorted(
    str(p.parent.parent.parent.relative_to(RESULTS)) for p in RESULTS.glob("*/runs/*/eval/test/metrics.json")
)


def test_every_committed_study_is_checked() -> None:
    assert {c.split("/")[0] for c in CELLS} >= {"qwen15-study", "qwen15-levers"}


@pytest.mark.parametrize("cell", CELLS)
def test_committed_predictions_rescore_to_committed_metrics(
    cell: str, tmp_path: Path, data_dir: Path
) -> None:
    """Both splits: the test numbers, and the validation numbers the checkpoint and study rules
    compared (each cell's own validation predictions are committed whole)."""
    run = RunDir(RESULTS / cell)
    config = run.load_config()
    config = config.model_copy(update={"task": config.task.model_copy(update={"data_dir": str(data_dir)})})
    options = {**get_task(config.task).scorer_options(), "suite_cache_dir": ""}
    for split in config.eval_splits:
        fresh = evaluate(config.task.name, run.predictions(split), tmp_path / split, options)
        committed = read_json(run.eval_dir(split) / "metrics.json")
        for key in ("predictions", "task", "seconds", "options", "rescored"):  # where and how fast, not what
            fresh.pop(key, None)
            committed.pop(key, None)
        assert fresh == committed, split


def test_the_unfinished_cells_partial_test_predictions_rescore(tmp_path: Path, data_dir: Path) -> None:
    """results/<study>/incomplete/: a cell whose machine was lost mid-prediction keeps its
    finished rows and their scores; those re-score exactly too."""
    partial = sorted(RESULTS.glob("*/incomplete/*/predictions/test.partial.jsonl"))
    assert partial, "the lever study's unfinished SQL cell is committed"
    for path in partial:
        cell = path.parent.parent
        run = RunDir(cell)
        config = run.load_config()
        task = config.task.model_copy(update={"data_dir": str(data_dir)})
        options = {**get_task(task).scorer_options(), "suite_cache_dir": ""}
        fresh = evaluate(task.name, path, tmp_path / cell.name, options)
        committed = read_json(cell / "eval" / "test_partial_metrics.json")
        for key in ("predictions", "task", "seconds", "options"):
            fresh.pop(key, None)
            committed.pop(key, None)
        assert fresh == committed
