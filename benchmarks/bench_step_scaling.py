"""How a training step's time scales with its batch on one GPU, and where the GPU waits.

Why: data parallelism on N GPUs gives each GPU 1/N of the batch. If halving a step's batch does
not halve its time (work on the host that does not shrink, the GPU waiting for it), 2 GPUs
cannot reach 2x however cheap their all-reduce is. One GPU therefore bounds the 2-GPU speed-up
at batch B by ``step_time(B) / step_time(B / 2)`` (the "2-GPU bound" column), before any
communication is paid. Batch 4 makes the GPU's part tiny, so its step time is roughly the host's
fixed cost per step.

One process, one model: the engine variant's Trainer is set up once (compiled layers are reused)
and every batch size runs its own steps on the same data order (step s of batch B uses the
examples of tunebench's order for step s). Then, at ``--profile-batch``:

- a torch.profiler trace of 2 steps, read back to say how long the GPU sat idle inside each of
  the loop's named ranges (``tunebench/collate``, ``/forward``, ``/backward``, ``/update``) and
  outside them. The profiler slows the host, so these idle times are upper bounds; the
  unprofiled step times are the measurement.
- one step under ``torch.cuda.set_sync_debug_mode("warn")``: every operation that makes the host
  wait for the GPU, with the code line that asked for it.

``--code DIR`` imports tunebench from DIR (a copy of another commit's package, to compare two
versions of the loop back to back on the same machine).

Usage (GPU):  python benchmarks/bench_step_scaling.py --model qwen2.5-coder-1.5b \\
                  --variant packed-compile-liger --batches 4,32,64,128,256
Smoke (CPU):  python benchmarks/bench_step_scaling.py --model <tiny dir> --device cpu \\
                  --variant packed --batches 2,4 --steps 2 --warmup 1 --profile-batch 4
Writes a table to stdout and JSON to --out (default $OUT/step_scaling.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

SCOPE_PREFIX = "tunebench/"
STEP_SCOPE = "bench/step"
GPU_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="preset, folder or GGUF")
    p.add_argument("--task", default="sql", choices=["sql", "viggo"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--variant", default="packed-compile-liger", help="an engine variant of bench_train.py")
    p.add_argument("--batches", default="4,32,64,128,256", help="examples per step, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per batch size before them")
    p.add_argument("--profile-batch", type=int, default=64, help="batch of the profiled steps (0: none)")
    p.add_argument("--no-sync-check", action="store_true", help="skip the sync-debug step")
    p.add_argument("--code", default=None, help="import tunebench from this folder (default: this repo)")
    p.add_argument("--label", default=None, help="name of this run in the JSON (default: the variant)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--out", default=None, help="JSON path (default $OUT/step_scaling.json)")
    return p.parse_args(argv)


# --- the trace's arithmetic (pure functions, tested on CPU) -----------------------------------
def merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) intervals, sorted and disjoint."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def busy_within(busy: list[tuple[float, float]], start: float, end: float) -> float:
    """Time of the disjoint ``busy`` intervals inside [start, end)."""
    return sum(max(0.0, min(e, end) - max(s, start)) for s, e in busy)


def idle_by_scope(events: list[dict[str, Any]]) -> dict[str, Any]:
    """GPU idle time per step and per named range, from a chrome trace's ``traceEvents``.

    GPU busy = the union of kernels, copies and memsets. Each ``bench/step`` range is one step;
    inside it every ``tunebench/*`` range's wall and GPU-idle time is summed by name (a range
    nested in another counts in both), and what no range covers is ``(outside ranges)``. Times
    in seconds per step (averaged over steps)."""
    gpu = merge_intervals(
        [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in GPU_EVENTS and "dur" in e]
    )
    ranges = [e for e in events if e.get("cat") == "user_annotation" and "dur" in e]
    steps = [e for e in ranges if e["name"] == STEP_SCOPE]
    scopes = [e for e in ranges if e["name"].startswith(SCOPE_PREFIX)]
    table: dict[str, dict[str, float]] = {}
    total = {"wall_s": 0.0, "gpu_busy_s": 0.0}
    for step in steps:
        s0, s1 = step["ts"], step["ts"] + step["dur"]
        total["wall_s"] += step["dur"]
        total["gpu_busy_s"] += busy_within(gpu, s0, s1)
        inside: list[tuple[float, float]] = []
        for scope in scopes:
            a, b = max(scope["ts"], s0), min(scope["ts"] + scope["dur"], s1)
            if b <= a:
                continue
            row = table.setdefault(scope["name"], {"wall_s": 0.0, "gpu_idle_s": 0.0, "count": 0})
            row["wall_s"] += b - a
            row["gpu_idle_s"] += (b - a) - busy_within(gpu, a, b)
            row["count"] += 1
            inside.append((a, b))
        covered_spans = merge_intervals(inside)  # nested ranges cover their time once
        covered = sum(b - a for a, b in covered_spans)
        covered_busy = sum(busy_within(gpu, a, b) for a, b in covered_spans)
        rest = table.setdefault("(outside ranges)", {"wall_s": 0.0, "gpu_idle_s": 0.0, "count": 0})
        rest["wall_s"] += step["dur"] - covered
        rest["gpu_idle_s"] += (step["dur"] - covered) - (busy_within(gpu, s0, s1) - covered_busy)
        rest["count"] += 1
    n = max(1, len(steps))
    scale = 1e-6 / n  # trace times are microseconds
    return {
        "steps": len(steps),
        "wall_s": total["wall_s"] * scale,
        "gpu_busy_s": total["gpu_busy_s"] * scale,
        "gpu_idle_s": (total["wall_s"] - total["gpu_busy_s"]) * scale,
        "by_range": {
            name: {
                "wall_s": r["wall_s"] * scale,
                "gpu_idle_s": r["gpu_idle_s"] * scale,
                "count": r["count"] / n,
            }
            for name, r in table.items()
        },
    }


def two_gpu_bounds(step_s: dict[int, float]) -> dict[int, float]:
    """For each batch B whose half was measured: step_time(B) / step_time(B/2), the most that
    2 GPUs (each running B/2) can speed up a step of B if communication were free."""
    return {b: step_s[b] / step_s[b // 2] for b in sorted(step_s) if b % 2 == 0 and b // 2 in step_s}


# --- measuring --------------------------------------------------------------------------------
def make_trainer(args: argparse.Namespace, workdir: Path, largest: int) -> Any:
    """One Trainer of the variant, configured as bench_train.py's (enough examples for every
    batch size's steps at the largest batch)."""
    from bench_train import ENGINE, make_config

    from tunebench.pipeline import ensure_prepared, open_run
    from tunebench.training.loop import Trainer

    shape = argparse.Namespace(
        model=args.model,
        task=args.task,
        data_dir=args.data_dir,
        dtype="auto",
        steps=args.steps + args.warmup,
        batch=largest,
    )
    config = make_config(shape, workdir, "scaling", ENGINE[args.variant])
    run = open_run(config)
    ensure_prepared(config, run)
    return Trainer(config, run, resume=False)


def with_batch(trainer: Any, batch: int) -> None:
    """The loop reads the batch size from its training config on every step."""
    trainer.tc = trainer.tc.model_copy(update={"batch_size": batch})


def time_batch(trainer: Any, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    import torch
    from bench_train import sync, timed_step

    with_batch(trainer, batch)
    times, tokens = [], []
    sync()
    for step in range(warmup + steps):
        with torch.profiler.record_function(STEP_SCOPE):
            seconds, out = timed_step(trainer, step)  # timed until the GPU has finished the step
        if step >= warmup:
            times.append(seconds)
            tokens.append(out["tokens"])
    median = statistics.median(times)
    return {
        "batch": batch,
        "median_step_s": median,
        "min_step_s": min(times),
        "step_times_s": times,
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": sum(tokens) / sum(times),
    }


def profile_batch(trainer: Any, batch: int, first_step: int) -> dict[str, Any]:
    import torch
    from bench_train import sync
    from torch.profiler import ProfilerActivity, profile

    with_batch(trainer, batch)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for step in range(first_step, first_step + 2):
            with torch.profiler.record_function(STEP_SCOPE):
                float(trainer.train_step(step)["loss"])
        sync()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        path = handle.name
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text(encoding="utf-8"))["traceEvents"]
    finally:
        os.unlink(path)
    return {"batch": batch, **idle_by_scope(events)}


def sync_sites(trainer: Any, batch: int, step: int) -> list[dict[str, Any]]:
    """Every host-device sync of one step, with the innermost project or library line (not
    torch's own) that asked for it, counted."""
    import torch
    from bench_train import sync

    if not torch.cuda.is_available():
        return []
    with_batch(trainer, batch)
    seen: dict[str, dict[str, Any]] = {}

    def record(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        frames = [
            f
            for f in traceback.extract_stack()[:-1]
            if "/torch/" not in f.filename and "warnings" not in f.filename
        ]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:][::-1])
        entry = seen.setdefault(where, {"site": where, "count": 0, "message": str(message)[:120]})
        entry["count"] += 1

    sync()
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            float(trainer.train_step(step)["loss"])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync()
    return sorted(seen.values(), key=lambda e: -e["count"])


def print_report(
    label: str,
    rows: list[dict[str, Any]],
    bounds: dict[int, float],
    prof: dict[str, Any] | None,
    syncs: list[dict[str, Any]],
) -> None:
    print(f"\n== {label}")
    print(f"{'batch':>6} {'tokens/step':>11} {'median s/step':>13} {'tokens/s':>10} {'2-GPU bound':>11}")
    for r in rows:
        bound = bounds.get(r["batch"])
        print(
            f"{r['batch']:>6} {r['tokens_per_step']:>11.0f} {r['median_step_s']:>13.4f} "
            f"{r['tokens_per_s']:>10.0f} {(f'{bound:.2f}x' if bound else '-'):>11}"
        )
    if prof:
        print(
            f"\nprofiled steps at batch {prof['batch']} (profiler overhead included): wall "
            f"{prof['wall_s']:.4f} s, GPU busy {prof['gpu_busy_s']:.4f} s, idle {prof['gpu_idle_s']:.4f} s"
        )
        for name, r in sorted(prof["by_range"].items(), key=lambda kv: -kv[1]["gpu_idle_s"]):
            print(
                f"  {name:22} wall {r['wall_s']:.4f} s   GPU idle {r['gpu_idle_s']:.4f} s   x{r['count']:.0f}"
            )
    if syncs:
        print("\nhost-device syncs in one step:")
        for s in syncs:
            print(f"  {s['count']:>4}  {s['site']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    here = Path(__file__).resolve()
    sys.path.insert(0, str(here.parent))
    sys.path.insert(0, str(Path(args.code).resolve() if args.code else here.parents[1]))
    import torch

    import tunebench
    from tunebench.rundir import environment

    batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    label = args.label or args.variant
    out = (
        Path(args.out)
        if args.out
        else Path(os.environ.get("OUT", here.parent / "results")) / "step_scaling.json"
    )
    report: dict[str, Any] = {
        "benchmark": "step_scaling",
        "label": label,
        "args": vars(args),
        "tunebench_from": str(Path(tunebench.__file__).parent),
        "environment": environment(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        t0 = time.perf_counter()
        trainer = make_trainer(args, Path(tmp), max([*batches, args.profile_batch]))
        report["setup_s"] = time.perf_counter() - t0
        rows = []
        for batch in batches:
            t0 = time.perf_counter()
            rows.append(
                time_batch(trainer, batch, args.steps, args.warmup) | {"wall_s": time.perf_counter() - t0}
            )
            print(f"[batch {batch}] {rows[-1]['median_step_s']:.4f} s/step", file=sys.stderr, flush=True)
        bounds = two_gpu_bounds({r["batch"]: r["median_step_s"] for r in rows})
        report.update(rows=rows, two_gpu_bound=bounds)
        prof = profile_batch(trainer, args.profile_batch, args.warmup) if args.profile_batch else None
        syncs = (
            [] if args.no_sync_check else sync_sites(trainer, args.profile_batch or batches[-1], args.warmup)
        )
        report.update(profile=prof, syncs=syncs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print_report(label, rows, bounds, prof, syncs)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
