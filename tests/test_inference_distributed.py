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
CHILD = """
import sys
from pathlib import Path
from tunebench.inference import predict
from tunebench.rundir import RunDir

run = RunDir(Path(sys.argv[1]))
predict(run.load_config(), run, "test")
"""


def launch(script: Path, run_root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2 --standalone`` of the predict stage on ``run_root``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [*command, str(script), str(run_root)], env=environ, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path, lively_model_dir: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    _config, run = support.make_run(
        tmp_path, lively_model_dir, name="dist", provider="base", n=6, batch_size=3
    )
    final = run.predictions("test")
    ids = [ex["id"] for ex in read_jsonl(run.prepared("test"))]
    assert len(ids) == 6

    # each rank writes its one batch (examples r, r+2, r+4) to its own partial file, then "crashes"
    crashed = launch(script, run.root, **{FAULT_ENV: "1"})
    assert crashed.returncode != 0 and not final.exists()
    for rank in (0, 1):
        partial, _ = partial_paths(final.with_name(f"test.rank{rank}-of-2.jsonl"))
        assert sorted(r["id"] for r in read_jsonl(partial)) == sorted(ids[rank::2])

    # the rerun resumes every rank's rows and merges them in example order
    done = launch(script, run.root, **{FAULT_ENV: ""})
    assert done.returncode == 0, done.stderr[-3000:]
    merged = read_jsonl(final)
    assert [r["id"] for r in merged] == ids
    assert sorted(p.name for p in final.parent.iterdir()) == ["test.jsonl"]
    info = run.manifest()["stages"]["predict:test"]
    assert info["n"] == 6 and info["processes"] == 2 and info["resumed_rows"] == 6
    assert info["dtype"] == "float32"

    single_config, single_run = support.make_run(
        tmp_path, lively_model_dir, name="single", provider="base", n=6, batch_size=3
    )
    single = read_jsonl(predict(single_config, single_run, "test"))
    assert merged == single
    assert len({r["raw"] for r in single}) > 3  # varied generations: the comparison can fail
