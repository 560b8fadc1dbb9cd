"""Prediction split across processes (torchrun, gloo on CPU): strided shards merged in order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import test_inference_support as support
from tunebench.inference import predict
from tunebench.inference.predict import FAULT_ENV, partial_paths
from tunebench.io import read_jsonl

lively_model_dir = support.lively_model_dir  # the shared fixture

REPO = Path(__file__).resolve().parents[1]


def launch(run_root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``tunebench predict --run-dir RUN --gpus 2``: torchrun with 2 gloo processes on CPU."""
    command = [sys.executable, "-m", "tunebench", "predict", "--run-dir", str(run_root), "--gpus", "2"]
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path, lively_model_dir: Path) -> None:
    _config, run = support.make_run(
        tmp_path, lively_model_dir, name="dist", provider="base", n=5, batch_size=1
    )
    final = run.predictions("test")
    ids = [ex["id"] for ex in read_jsonl(run.prepared("test"))]
    assert len(ids) == 5

    # rank 0 has 3 batches (examples 0, 2, 4) and stops after its 3rd; rank 1 runs out after its
    # 2nd (examples 1, 3) and stops there too: every row is in a partial file, none merged yet
    crashed = launch(run.root, **{FAULT_ENV: "3"})
    assert crashed.returncode != 0 and not final.exists()
    for rank in (0, 1):
        partial, _ = partial_paths(final.with_name(f"test.rank{rank}-of-2.jsonl"))
        assert sorted(r["id"] for r in read_jsonl(partial)) == sorted(ids[rank::2])

    # the rerun resumes every rank's rows and merges them in example order
    done = launch(run.root, **{FAULT_ENV: ""})
    assert done.returncode == 0, done.stderr[-3000:]
    merged = read_jsonl(final)
    assert [r["id"] for r in merged] == ids
    assert sorted(p.name for p in final.parent.iterdir()) == ["test.jsonl"]
    info = run.manifest()["stages"]["predict:test"]
    assert info["n"] == 5 and info["processes"] == 2 and info["resumed_rows"] == 5
    assert info["dtype"] == "float32"

    single_config, single_run = support.make_run(
        tmp_path, lively_model_dir, name="single", provider="base", n=5, batch_size=1
    )
    single = read_jsonl(predict(single_config, single_run, "test"))
    assert merged == single
    assert len({r["raw"] for r in single}) > 3  # varied generations: the comparison can fail
