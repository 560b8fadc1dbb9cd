"""One process vs N processes, back to back on one machine: LoRA training and predictions.

What it runs (the product's own commands, each in a fresh process, one after the other):

1. ``tunebench train CONFIG`` on 1 process, then ``tunebench train CONFIG --gpus N`` (DDP, or
   FSDP with ``--fsdp``), with the same config: the same effective batch, steps, seed and
   validation passes. Reported from each run's ``train_summary.json``: training tokens/s (real
   tokens over the time spent in training steps), wall time, final and best validation loss.
2. ``tunebench predict --run-dir R --split S`` on 1 process, then with ``--gpus N``, on the same
   trained adapter (the 1-process run's, copied into a second run directory so both start from
   nothing): wall time of the command, and whether the N-process file equals the 1-process file
   row for row (every field but timings).

Targets (issue #10, 2 GPUs): training throughput >= 1.8x, final validation loss within 2% of the
1-process run, and identical predictions.

GPU:  python benchmarks/bench_multi_gpu.py --model qwen2.5-coder-1.5b --gpus 2
CPU smoke (gloo, tiny model): python benchmarks/bench_multi_gpu.py --model DIR --gpus 2 --steps 4
    --batch 8 --train-limit 64 --eval-limit 8 --max-new-tokens 16
Writes a table and JSON to ``$OUT/multi_gpu.json`` (else benchmarks/results/multi_gpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Fields of a prediction row that depend on timing or process layout, not on the text.
TIMING_FIELDS = {"generation_s", "latency_s"}
KEEP_MARKER = ".bench_multi_gpu_keep"  # marks a --keep folder as ours (safe to replace)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="preset, folder or GGUF")
    p.add_argument("--task", default="sql", choices=["sql", "viggo"])
    p.add_argument("--gpus", type=int, default=2, help="processes of the second run")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP instead of DDP")
    p.add_argument("--compile", action="store_true", help="training.compile: true in both runs")
    p.add_argument(
        "--settle",
        type=int,
        default=5,
        help="steps left out of the steady-state throughput (compilation, allocator warm-up)",
    )
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of each training run")
    p.add_argument("--batch", type=int, default=32, help="examples per optimizer step (both runs)")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--train-limit", type=int, default=None, help="cap on training examples")
    p.add_argument("--eval-limit", type=int, default=None, help="cap on validation/test examples")
    p.add_argument("--split", default="test", help="split to predict")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--data-dir", default=None, help="data mirror (default: $TUNEBENCH_DATA_DIR)")
    p.add_argument("--out", default=None, help="JSON path")
    p.add_argument(
        "--keep",
        default=None,
        help="copy the 1-process run (adapter included, no checkpoints) to this folder",
    )
    return p.parse_args(argv)


def write_config(args: argparse.Namespace, runs: Path, name: str) -> Path:
    """The experiment both runs share (only the run name differs)."""
    task: dict[str, Any] = {"name": args.task, "validation": "held_out"}
    if args.data_dir:
        task["data_dir"] = args.data_dir
    if args.train_limit:
        task["max_train_examples"] = args.train_limit
    if args.eval_limit:
        task["max_eval_examples"] = args.eval_limit
    config = {
        "name": name,
        "runs_dir": str(runs),
        "model": {"name": args.model},
        "task": task,
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "eval_every": args.eval_every,
            "early_stopping_patience": None,  # both runs take every step
            "fsdp": args.fsdp,
            "compile": args.compile,
        },
        "generation": {"max_new_tokens": args.max_new_tokens},
        "eval_splits": [args.split],
    }
    path = runs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def tunebench(*command: str, log: Path) -> float:
    """Run ``python -m tunebench ...``; its wall time (s). Output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # --cuda-graphs measures the experimental path on purpose (the product refuses it otherwise)
    env["TUNEBENCH_EXPERIMENTAL_CUDA_GRAPHS"] = "1"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.run(
            [sys.executable, "-m", "tunebench", *command], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"tunebench {' '.join(command)} failed ({proc.returncode}):\n{tail}")
    return elapsed


def step_marks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cumulative tokens and time in steps before each step: mark i is before step i+1, the
    last one after the last step (the train rows of metrics.jsonl, after a zero mark)."""
    train = [r for r in rows if r["split"] == "train" and "train_time" in r]
    return [{"tokens": 0, "train_time": 0.0}, *train]


def steady_tokens_per_s(rows: list[dict[str, Any]], settle: int) -> float | None:
    """Tokens/s over the training steps after the first ``settle`` (time in steps only)."""
    marks = step_marks(rows)
    if len(marks) <= settle + 1:
        return None
    start, last = marks[settle], marks[-1]
    return (last["tokens"] - start["tokens"]) / (last["train_time"] - start["train_time"])


def median_step_tokens_per_s(rows: list[dict[str, Any]], settle: int) -> float | None:
    """Median over the steps after ``settle`` of each step's tokens / time: a step that compiled
    or recorded CUDA graphs for a new shape is an outlier here (a long run meets each of its few
    shapes once), where it would weigh on the mean."""
    marks = step_marks(rows)
    rates = [
        (b["tokens"] - a["tokens"]) / (b["train_time"] - a["train_time"])
        for a, b in zip(marks[settle:], marks[settle + 1 :], strict=False)  # steps settle+1, ...
        if b["train_time"] > a["train_time"]
    ]
    return statistics.median(rates) if rates else None


def train_result(run: Path, wall: float, settle: int) -> dict[str, Any]:
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    validation = [r["loss"] for r in rows if r["split"] == "validation"]
    return {
        "command_wall_s": wall,
        "processes": summary["processes"],
        "sharding": summary.get("sharding"),
        "tokens_per_s": summary["tokens_per_s"],
        "steady_tokens_per_s": steady_tokens_per_s(rows, settle),
        "median_step_tokens_per_s": median_step_tokens_per_s(rows, settle),
        "train_tokens": summary["train_tokens"],
        "wall_time_s": summary["wall_time_s"],
        "final_validation_loss": validation[-1] if validation else None,
        "best_validation_loss": summary["best_validation_loss"],
        "gpu_type": summary["gpu_type"],
        "peak_memory_gb": summary["peak_memory_gb"],
    }


def text_fields(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def clone_trained_run(source: Path, target: Path) -> None:
    """A second run directory with the same config, prepared data and adapter, no predictions."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("predictions", "eval", "checkpoints"))
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    stages = manifest.get("stages", {})
    for stage in [s for s in stages if s.startswith(("predict:", "evaluate:"))]:
        del stages[stage]
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(
        args.out
        or (
            Path(os.environ["OUT"]) / "multi_gpu.json"
            if os.environ.get("OUT")
            else ROOT / "benchmarks" / "results" / "multi_gpu.json"
        )
    )
    keep = Path(args.keep) if args.keep else None
    if keep and keep.exists() and any(keep.iterdir()) and not (keep / KEEP_MARKER).is_file():
        # never wipe a folder this benchmark did not write
        raise SystemExit(f"--keep {keep}: exists and is not an earlier --keep copy; choose another folder")
    report: dict[str, Any] = {"benchmark": "multi_gpu", "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-multi-") as tmp:
        runs = Path(tmp)
        logs = out.parent / "multi_gpu_logs"
        logs.mkdir(parents=True, exist_ok=True)
        one_cfg = write_config(args, runs, "one")
        many_cfg = write_config(args, runs, "many")
        wall_one = tunebench("train", str(one_cfg), log=logs / "train_one.log")
        wall_many = tunebench("train", str(many_cfg), "--gpus", str(args.gpus), log=logs / "train_many.log")
        one = train_result(runs / "one", wall_one, args.settle)
        many = train_result(runs / "many", wall_many, args.settle)
        report["train"] = {"one": one, "many": many}
        report["train"]["throughput_ratio"] = many["tokens_per_s"] / one["tokens_per_s"]
        if one["median_step_tokens_per_s"] and many["median_step_tokens_per_s"]:
            report["train"]["median_step_throughput_ratio"] = (
                many["median_step_tokens_per_s"] / one["median_step_tokens_per_s"]
            )
        if one["steady_tokens_per_s"] and many["steady_tokens_per_s"]:
            report["train"]["steady_throughput_ratio"] = (
                many["steady_tokens_per_s"] / one["steady_tokens_per_s"]
            )
        if one["final_validation_loss"] and many["final_validation_loss"]:
            report["train"]["final_validation_loss_rel_diff"] = (
                many["final_validation_loss"] / one["final_validation_loss"] - 1
            )

        clone_trained_run(runs / "one", runs / "one-copy")
        split = args.split
        p_one = tunebench(
            "predict", "--run-dir", str(runs / "one"), "--split", split, log=logs / "predict_one.log"
        )
        p_many = tunebench(
            "predict", "--run-dir", str(runs / "one-copy"), "--split", split, "--gpus", str(args.gpus),
            log=logs / "predict_many.log",
        )  # fmt: skip
        rows_one = text_fields(runs / "one" / "predictions" / f"{split}.jsonl")
        rows_many = text_fields(runs / "one-copy" / "predictions" / f"{split}.jsonl")
        differ = [a["id"] for a, b in zip(rows_one, rows_many, strict=False) if a != b]
        for name in ("one", "many"):  # the loss curves, for the record
            shutil.copy(runs / name / "metrics.jsonl", logs / f"metrics_{name}.jsonl")
        if keep:
            shutil.rmtree(keep, ignore_errors=True)  # checked before anything ran: an earlier keep
            shutil.copytree(runs / "one", keep, ignore=shutil.ignore_patterns("checkpoints"))
            (keep / KEEP_MARKER).write_text("written by benchmarks/bench_multi_gpu.py --keep\n")
        report["predict"] = {
            "n": len(rows_one),
            "one_wall_s": p_one,
            "many_wall_s": p_many,
            "speedup": p_one / p_many,
            "identical_rows": len(rows_one) - len(differ) if len(rows_one) == len(rows_many) else 0,
            "differing_ids": differ[:50],
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    t, p = report["train"], report["predict"]
    n = args.gpus
    print(f"{'':28} {'1 process':>14} {f'{n} processes':>14} {'ratio':>8}")
    print(
        f"{'train tokens/s':28} {t['one']['tokens_per_s']:14.0f} {t['many']['tokens_per_s']:14.0f} {t['throughput_ratio']:8.2f}"
    )
    if "steady_throughput_ratio" in t:
        print(
            f"{f'  after step {args.settle}':28} {t['one']['steady_tokens_per_s']:14.0f} "
            f"{t['many']['steady_tokens_per_s']:14.0f} {t['steady_throughput_ratio']:8.2f}"
        )
    if "median_step_throughput_ratio" in t:
        print(
            f"{'  median step':28} {t['one']['median_step_tokens_per_s']:14.0f} "
            f"{t['many']['median_step_tokens_per_s']:14.0f} {t['median_step_throughput_ratio']:8.2f}"
        )
    for key in ("final_validation_loss", "best_validation_loss"):
        a, b = t["one"][key], t["many"][key]
        if a is not None and b is not None:
            print(f"{key:28} {a:14.4f} {b:14.4f} {b / a:8.4f}")
    print(f"{'predict wall s':28} {p['one_wall_s']:14.1f} {p['many_wall_s']:14.1f} {p['speedup']:8.2f}")
    print(f"identical prediction rows: {p['identical_rows']}/{p['n']}")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
