"""Cost accounting: GPU-hours, A40 conversion, OpenAI tokens, missing prices, break-even."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_report_fixtures import make_run
from tunebench.config import validate_experiment
from tunebench.cost import HOURS_PER_MONTH, break_even
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl
from tunebench.pipeline import compute_cost, write_cost
from tunebench.prices import GPU_PRICES, OPENAI_PRICES


def test_self_hosted_cost_from_wall_time(tmp_path: Path) -> None:
    run = make_run(tmp_path, "oracle", "sql", 4)
    record = write_cost(run.load_config(), run)
    assert read_json(run.cost_path) == record and run.stage_done("cost")
    a40 = GPU_PRICES["A40"].price_per_hour
    summary = read_json(run.train_summary)
    assert record["price"]["gpu_type"] == "A40"  # "NVIDIA A40" resolved through the table
    assert record["training"]["cost_usd"] == pytest.approx(summary["wall_time_s"] / 3600 * a40)
    info = run.manifest()["stages"]["predict:test"]
    inference = record["inference"]["test"]
    assert inference["cost_usd"] == pytest.approx(info["wall_time_s"] / 3600 * a40, abs=1e-6)
    assert inference["cost_per_1k_predictions"] == pytest.approx(
        inference["cost_usd"] / info["n"] * 1000, abs=1e-5
    )
    assert "not a measurement on an A40" in record["a40_price"]["label"]


def test_checkpoint_choice_counts_as_training_time(tmp_path: Path) -> None:
    """Choosing the adapter by validation accuracy spends GPU time to buy it: priced with training."""
    run = make_run(tmp_path, "oracle", "sql", 4)
    run.record_stage(
        "choose", chosen_step=2, metric="execution_accuracy", value=0.5, wall_time_s=0.1, gpu_time_s=90.0
    )  # a rerun that read every candidate back: the choice's GPU time is still the candidates' own
    record = compute_cost(run.load_config(), run)
    a40 = GPU_PRICES["A40"].price_per_hour
    wall = read_json(run.train_summary)["wall_time_s"]
    assert record["training"]["checkpoint_choice_s"] == 90.0
    assert record["training"]["wall_time_s"] == wall
    assert record["training"]["cost_usd"] == pytest.approx((wall + 90.0) / 3600 * a40)


def test_price_override_gpu_count_and_missing_gpu(tmp_path: Path) -> None:
    run = make_run(tmp_path, "oracle", "viggo", 4)
    cfg = run.load_config()
    priced = compute_cost(
        cfg.model_copy(
            update={"cost": cfg.cost.model_copy(update={"gpu_price_per_hour": 2.0, "price_date": "2026-01"})}
        ),
        run,
    )
    assert priced["training"]["cost_usd"] == pytest.approx(2.0)
    assert priced["price"] == {
        "gpu_type": "NVIDIA A40",
        "price_per_hour": 2.0,
        "date": "2026-01",
        "source": "config cost.gpu_price_per_hour",
    }
    missing = cfg.model_copy(update={"cost": cfg.cost.model_copy(update={"gpu_type": "B300"})})
    with pytest.raises(TunebenchError, match=r"no price for GPU 'B300'"):
        compute_cost(missing, run)


def test_cpu_run_has_only_the_labelled_conversion(tmp_path: Path) -> None:
    run = make_run(tmp_path, "perturbed", "sql", 4)  # provider base, predictions on cpu
    record = write_cost(run.load_config(), run)
    assert record["price"] is None and "A40 price conversion" in record["note"]
    assert record["training_cost_usd"] == 0.0
    info = run.manifest()["stages"]["predict:test"]
    a40 = GPU_PRICES["A40"].price_per_hour
    assert record["inference"]["test"]["a40_conversion_usd"] == pytest.approx(
        info["wall_time_s"] / 3600 * a40, abs=1e-6
    )
    assert record["inference"]["test"]["cost_usd"] is None


def test_openai_cost_from_tokens(tmp_path: Path) -> None:
    run = make_run(tmp_path, "gpt", "viggo", 6)
    record = write_cost(run.load_config(), run)
    price = OPENAI_PRICES["gpt-3.5-turbo-0125"]
    trained = read_json(run.train_summary)["trained_tokens"]
    assert record["training_cost_usd"] == pytest.approx(trained * price.training / 1e6)
    rows = read_jsonl(run.predictions("test"))
    expected = (
        sum(r["prompt_tokens"] * price.input + r["completion_tokens"] * price.output for r in rows) / 1e6
    )
    assert record["openai"]["inference"]["test"]["cost_usd"] == pytest.approx(expected)
    assert record["openai"]["price"]["date"] == price.date


def test_openai_model_without_price_names_it(tmp_path: Path) -> None:
    run = make_run(tmp_path, "gpt", "sql", 3)
    cfg = run.load_config()
    unknown = cfg.model_copy(update={"openai": cfg.openai.model_copy(update={"model": "gpt-9"})})
    with pytest.raises(TunebenchError, match="gpt-9"):
        compute_cost(unknown, run)


def test_break_even_maths() -> None:
    be = break_even(price_per_hour=0.5, gpu_count=2, predictions_per_s=1.0, api_cost_per_query=0.001)
    monthly = 0.5 * 2 * HOURS_PER_MONTH
    assert be["monthly_self_hosted_usd"] == pytest.approx(monthly)
    assert be["capacity_queries_per_month"] == pytest.approx(3600 * HOURS_PER_MONTH)
    assert be["queries_per_month"] == pytest.approx(monthly / 0.001)
    # slower than the API's price at full load: no break-even at any volume
    never = break_even(price_per_hour=10.0, gpu_count=1, predictions_per_s=0.01, api_cost_per_query=0.001)
    assert never["queries_per_month"] is None
    with pytest.raises(TunebenchError):
        break_even(1.0, 1, 0.0, 0.001)


def test_config_cost_section_is_strict() -> None:
    with pytest.raises(Exception, match="extra"):
        validate_experiment({"name": "x", "cost": {"gpu": "A40"}})


def test_the_run_summary_reads_each_providers_cost_layout() -> None:
    """`tunebench run` prints one cost line from cost.json, whose layout differs by provider."""
    import json
    from pathlib import Path

    from tunebench.cli import cost_line

    results = Path(__file__).resolve().parents[1] / "results"
    gpu = json.loads((results / "qwen15-ensemble/runs/ensemble-sql/cost.json").read_text())
    training = gpu["training"]["cost_usd"]
    predictions = sum(v["cost_usd"] for v in gpu["inference"].values())
    assert cost_line(gpu) == f"cost: training ${training:.4f}, predictions ${predictions:.4f}"
    openai = {
        "provider": "openai",
        "training_cost_usd": 12.0,
        "openai": {"training": {"cost_usd": 12.0}, "inference": {"test": {"cost_usd": 0.5}}},
    }
    assert cost_line(openai) == "cost (OpenAI's prices): training $12.0000, predictions $0.5000"
    cpu = {
        "provider": "local",
        "price": None,
        "note": "no CPU price",
        "training": {"cost_usd": None, "a40_conversion_usd": 0.039},
        "inference": {"test": {"cost_usd": None, "a40_conversion_usd": 0.007}},
    }
    assert (
        cost_line(cpu) == "cost at the study's A40 rate: training $0.0390, predictions $0.0070 (no CPU price)"
    )
    endpoint = {"provider": "endpoint", "endpoint": {}, "note": "endpoint runs are not priced"}
    assert cost_line(endpoint) == "cost: endpoint runs are not priced"
