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
