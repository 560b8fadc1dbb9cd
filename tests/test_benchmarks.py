"""The benchmark scripts' own arithmetic (their GPU numbers go into BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics_rows(step_tokens: list[int], step_seconds: list[float]) -> list[dict]:
    """metrics.jsonl as the loop writes it: cumulative tokens and time in steps, one row per
    step, validation rows in between."""
    rows, tokens, seconds = [], 0, 0.0
    for i, (n, dt) in enumerate(zip(step_tokens, step_seconds, strict=True)):
        tokens, seconds = tokens + n, seconds + dt
        rows.append({"split": "train", "step": i + 1, "tokens": tokens, "train_time": seconds})
        if (i + 1) % 2 == 0:
            rows.append({"split": "validation", "step": i + 1, "loss": 1.0})
    return rows


def test_steady_and_median_step_throughput_skip_exactly_the_settling_steps() -> None:
    bench = load("bench_multi_gpu")
    # step 1 compiles (100 s); steps 2-5 run 1000 tokens in 0.1 s, except step 4 (a new shape)
    rows = metrics_rows([1000] * 5, [100.0, 0.1, 0.1, 1.0, 0.1])
    assert bench.steady_tokens_per_s(rows, 1) == pytest.approx(4000 / 1.3)
    assert bench.median_step_tokens_per_s(rows, 1) == pytest.approx(10000)  # of 10k, 10k, 1k, 10k
    # settle 0 keeps step 1 in both
    assert bench.steady_tokens_per_s(rows, 0) == pytest.approx(5000 / 101.3)
    assert bench.median_step_tokens_per_s(rows, 0) == pytest.approx(10000)  # 10, 10k, 10k, 1k, 10k
    # settle 3: steps 4 and 5 only, a median of two
    assert bench.median_step_tokens_per_s(rows, 3) == pytest.approx((1000 + 10000) / 2)
    assert bench.median_step_tokens_per_s(rows, 5) is None


def test_gpu_idle_is_split_by_the_loops_named_ranges() -> None:
    bench = load("bench_step_scaling")

    def span(name: str, ts: float, dur: float, cat: str = "user_annotation") -> dict:
        return {"name": name, "cat": cat, "ts": ts, "dur": dur}

    # two steps of 100 us; kernels overlap each other (counted once) and spill past a range
    events = [
        span("bench/step", 0, 100),
        span("tunebench/forward", 0, 40),
        span("tunebench/backward", 40, 40),
        span("k1", 10, 30, "kernel"),
        span("k2", 20, 30, "kernel"),  # 10-50 busy: 30 in forward, 10 in backward
        span("copy", 90, 5, "gpu_memcpy"),  # outside the ranges
        span("gpu side of a range", 0, 100, "gpu_user_annotation"),  # not GPU work
        span("bench/step", 200, 100),
        span("tunebench/forward", 200, 40),
        span("k3", 250, 50, "kernel"),  # 250-300: outside the ranges
    ]
    out = bench.idle_by_scope(events)
    assert out["steps"] == 2
    # per step, in seconds: wall 100 us; busy (40 + 5 + 50) / 2
    assert out["wall_s"] == pytest.approx(100e-6)
    assert out["gpu_busy_s"] == pytest.approx(47.5e-6)
    assert out["gpu_idle_s"] == pytest.approx(52.5e-6)
    ranges = out["by_range"]
    assert ranges["tunebench/forward"]["gpu_idle_s"] == pytest.approx((10 + 40) / 2 * 1e-6)
    assert ranges["tunebench/backward"]["gpu_idle_s"] == pytest.approx(30 / 2 * 1e-6)
    assert ranges["tunebench/backward"]["count"] == pytest.approx(0.5)
    # outside: step 1 has 20 us outside, 5 busy; step 2 has 60 outside, 50 busy
    assert ranges["(outside ranges)"]["wall_s"] == pytest.approx(40e-6)
    assert ranges["(outside ranges)"]["gpu_idle_s"] == pytest.approx(12.5e-6)
    total_idle = sum(r["gpu_idle_s"] for r in ranges.values())
    assert total_idle == pytest.approx(out["gpu_idle_s"])


def test_a_nested_range_is_not_counted_twice_outside() -> None:
    bench = load("bench_step_scaling")
    events = [
        {"name": "bench/step", "cat": "user_annotation", "ts": 0, "dur": 100},
        {"name": "tunebench/update", "cat": "user_annotation", "ts": 0, "dur": 60},
        {"name": "tunebench/clip", "cat": "user_annotation", "ts": 10, "dur": 20},  # inside update
    ]
    ranges = bench.idle_by_scope(events)["by_range"]
    assert ranges["(outside ranges)"]["wall_s"] == pytest.approx(40e-6)
    assert ranges["tunebench/clip"]["wall_s"] == pytest.approx(20e-6)  # counted in its own row too


def test_two_gpu_bound_is_the_step_time_ratio_to_the_half_batch() -> None:
    bench = load("bench_step_scaling")
    bounds = bench.two_gpu_bounds({4: 0.09, 64: 0.15, 128: 0.24, 256: 0.42})
    assert bounds == {128: pytest.approx(1.6), 256: pytest.approx(1.75)}  # 4 has no half measured


def test_bench_scale_runs_a_tiny_shape_end_to_end(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_scale.py"),
            "--tiny",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--grad-ckpt",
            "both",
            "--out",
            str(out),
            "--compare-estimate",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    points = json.loads(out.read_text())["points"]
    # one build serves every token count, without and with gradient checkpointing
    assert [(p["tokens"], p["gradient_checkpointing"]) for p in points] == [
        (256, False),
        (256, True),
        (512, False),
        (512, True),
    ]
    assert len({p["build_s"] for p in points}) == 1
    for p in points:
        assert p["oom"] is False and p["gpu"] == "cpu" and p["tokens_per_s"] > 0
        assert p["estimate"]["estimated_memory_gib"] > 0
        bench = load("bench_scale")
        arch = bench.TINY
        trainable = 2 * 8 * (128 + 96 + 96 + 128)
        assert p["flops_per_token"] == bench.sizing.flops_per_token(arch, trainable, 512, 1.0)
