"""Prediction split across processes (torchrun, gloo on CPU): whole batches per rank, merged in order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests import test_inference_support as support
from tunebench.inference.prompts import model_prompts
from tunebench.inference.resume import FAULT_ENV, partial_paths
from tunebench.inference.shards import Shard, length_sorted_batches
from tunebench.io import read_jsonl
from tunebench.pipeline import predict_stage as predict

lively_model_dir = support.lively_model_dir  # the shared fixture

REPO = Path(__file__).resolve().parents[1]


def launch(run_root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``tunebench predict --run-dir RUN --gpus 2``: torchrun with 2 gloo processes on CPU."""
    command = [sys.executable, "-m", "tunebench", "predict", "--run-dir", str(run_root), "--gpus", "2"]
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)


def tokenizer_only(model_dir: Path) -> SimpleNamespace:
    """What batch planning reads of a generator: its tokenizer."""
    from transformers import AutoTokenizer

    return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(model_dir))


def prompts_of(config: Any, run: Any) -> list[str]:
    from tunebench.tasks import get_task
    from tunebench.tasks.base import load_prepared

    task = get_task(config.task)
    return model_prompts(config, run, task, load_prepared(run, "test"))


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_generates_whole_batches_of_the_one_process_plan(
    tmp_path: Path, lively_model_dir: Path, world: int
) -> None:
    """Same companions, same padded shape as in one process: bf16 near-ties cannot flip."""
    config, run = support.make_run(tmp_path, lively_model_dir, provider="base", n=23, batch_size=4)
    prompts = prompts_of(config, run)
    generator = tokenizer_only(lively_model_dir)
    plan = length_sorted_batches(generator, prompts, 4)
    assert len({len(b) for b in plan}) == 2  # 5 full batches and a short last one
    shares = [Shard(rank=r, world=world).share(generator, prompts, 4) for r in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(23))
    for rank, share in enumerate(shares):
        own = length_sorted_batches(generator, [prompts[i] for i in share], 4)  # what the rank runs
        assert [[share[j] for j in batch] for batch in own] == plan[rank::world]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path, lively_model_dir: Path) -> None:
    _config, run = support.make_run(
        tmp_path, lively_model_dir, name="dist", provider="base", n=5, batch_size=1
    )
    final = run.predictions("test")
    ids = [ex["id"] for ex in read_jsonl(run.prepared("test"))]
    assert len(ids) == 5
    # the one-process plan: 5 batches of 1, longest prompt first; ranks take turns
    plan = length_sorted_batches(tokenizer_only(lively_model_dir), prompts_of(_config, run), 1)

    # rank 0 has 3 batches (plan 0, 2, 4) and stops after its 3rd; rank 1 runs out after its
    # 2nd (plan 1, 3) and stops there too: every row is in a partial file, none merged yet
    crashed = launch(run.root, **{FAULT_ENV: "3"})
    assert crashed.returncode != 0 and not final.exists()
    for rank in (0, 1):
        partial, _ = partial_paths(final.with_name(f"test.rank{rank}-of-2.jsonl"))
        expected = sorted(ids[i] for batch in plan[rank::2] for i in batch)
        assert sorted(r["id"] for r in read_jsonl(partial)) == expected

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
