"""Cost accounting: what a run cost, from measured wall time and tokens and dated price tables.

Self-hosted runs (``local`` LoRA, ``base`` zero-shot) are priced as
``$/GPU-hour x measured wall time x GPU count`` for training (``train_summary.json``) and for
inference (the manifest's ``predict:<split>`` stage info), with the cost of 1,000 predictions
from the measured throughput. The same wall time is also priced at the study's A40 rate; that
is a *price conversion*, labelled as such, never a measurement on an A40.

An ensemble (``provider: ensemble``) costs what its members did: their ``cost.json`` records
added up (:func:`tunebench.inference.ensemble.ensemble_cost`).

OpenAI runs are priced per token: ``trained_tokens`` x the training price, and the predictions'
prompt/completion tokens x the input/output prices.

:func:`break_even` answers the deployment question: above how many queries a month is one GPU
running 24/7 (at its hourly price, with the measured throughput) cheaper than paying an API per
token (with the measured tokens per query)?
"""

from __future__ import annotations

import math
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl
from tunebench.prices import GpuPrice
from tunebench.rundir import RunDir

HOURS_PER_MONTH = 730.0  # 365 * 24 / 12: a GPU rented around the clock
STUDY_GPU = "A40"
CONVERSION_LABEL = (
    "price conversion: the measured wall time priced at the study's A40 rate; not a measurement on an A40"
)

# The original study's own published figures (LoRA on one A40 at $0.475/h vs GPT-3.5 fine-tuning),
# shown as a reference row beside measured ones. Quoted, not measured by tunebench.
STUDY_REFERENCE: list[dict[str, Any]] = [
    {"system": "study: Code Llama 34B LoRA (A40)", "task": "sql", "training_cost_usd": 3.32, "hours": 7.0},
    {"system": "study: Code Llama 34B LoRA (A40)", "task": "viggo", "training_cost_usd": 4.27, "hours": 9.0},
    {"system": "study: GPT-3.5 fine-tuning", "task": "sql", "training_cost_usd": 11.99, "hours": None},
    {"system": "study: GPT-3.5 fine-tuning", "task": "viggo", "training_cost_usd": 26.05, "hours": None},
]


def is_cpu(gpu_type: str | None) -> bool:
    return gpu_type is None or gpu_type.strip().lower() in ("", "cpu", "none")


def hourly_price(config: ExperimentConfig, detected: str | None) -> GpuPrice | None:
    """Price of the hardware a run used: the config's override, else the dated table.

    ``cost.gpu_type`` names the key to price (default: the GPU the run detected). A GPU missing
    from the table is an error naming the key; CPU-only runs without an explicit price have no
    hardware price (None): only the A40 conversion is shown for them.
    """
    cost = config.cost
    key = cost.gpu_type or detected or "cpu"
    if cost.gpu_price_per_hour is not None:
        return GpuPrice(key, cost.gpu_price_per_hour, cost.price_date, "config cost.gpu_price_per_hour")
    from tunebench.prices import GPU_PRICES, gpu_price

    if is_cpu(key) and not any(is_cpu(k) for k in GPU_PRICES):
        return None
    return gpu_price(key, {})


def study_gpu_price() -> GpuPrice:
    """The study's A40 price from the table (for the labelled price conversion)."""
    from tunebench.prices import gpu_price

    return gpu_price(STUDY_GPU, {})


def dollars(hours: float | None, price: GpuPrice | None, gpu_count: int) -> float | None:
    if hours is None or price is None:
        return None
    return round(hours * price.price_per_hour * max(gpu_count, 1), 6)


def per_1k(cost_usd: float | None, n: int | None) -> float | None:
    if cost_usd is None or not n:
        return None
    return round(cost_usd / n * 1000.0, 6)


def openai_model_price(config: ExperimentConfig) -> Any:
    """The OpenAI price row of the config's model, with the config's price overrides (for a run
    that is no OpenAI fine-tune, the default OpenAI model's: what it would have cost there)."""
    from tunebench.config import OpenAIConfig
    from tunebench.prices import openai_price

    oa = getattr(config, "openai", None) or OpenAIConfig()  # self-hosted runs: the default model's prices
    overrides = {
        "training": oa.training_price_per_1m,
        "input": oa.input_price_per_1m,
        "output": oa.output_price_per_1m,
        "date": oa.price_date,
    }
    return openai_price(oa.model, {k: v for k, v in overrides.items() if v is not None})


def token_totals(run: RunDir, split: str) -> dict[str, int]:
    """Prompt and completion tokens summed over a split's predictions."""
    rows = read_jsonl(run.predictions(split), required=("id",))
    return {
        "n": len(rows),
        "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in rows),
        "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in rows),
    }


def _summary(run: RunDir) -> dict[str, Any]:
    return read_json(run.train_summary) if run.train_summary.is_file() else {}


def _self_hosted_training(
    summary: dict[str, Any], price: GpuPrice | None, a40: GpuPrice, choice_s: float = 0.0
) -> dict[str, Any]:
    """Training's GPU time: the loop's wall time plus, when the adapter was chosen by the task
    metric, the candidates' validation predictions (``choose`` stage): both buy the adapter."""
    wall = summary.get("wall_time_s")
    count = int(summary.get("gpu_count") or 1)
    hours = (wall + choice_s) / 3600.0 if wall is not None else None
    return {
        "wall_time_s": wall,
        "checkpoint_choice_s": choice_s,
        "gpu_type": summary.get("gpu_type"),
        "gpu_count": count,
        "gpu_hours": round(hours * count, 6) if hours is not None else None,
        "cost_usd": dollars(hours, price, count),
        "a40_conversion_usd": dollars(hours, a40, count),
    }


def _self_hosted_inference(info: dict[str, Any], price: GpuPrice | None, a40: GpuPrice) -> dict[str, Any]:
    wall = info.get("wall_time_s")
    reused = info.get("reused_from")
    count = int(info.get("gpu_count") or 1)
    n = info.get("n")
    hours = wall / 3600.0 if wall is not None else None
    cost_usd = dollars(hours, price, count)
    a40_usd = dollars(hours, a40, count)
    return {
        "wall_time_s": wall,
        "n": n,
        "predictions_per_s": info.get("predictions_per_s"),
        "gpu_type": info.get("gpu_type"),
        "gpu_count": count,
        "prompt_tokens": info.get("prompt_tokens"),
        "completion_tokens": info.get("completion_tokens"),
        "cost_usd": cost_usd,
        "cost_per_1k_predictions": per_1k(cost_usd, n),
        "a40_conversion_usd": a40_usd,
        "a40_conversion_per_1k_predictions": per_1k(a40_usd, n),
        **(
            {"note": f"predicted while choosing the checkpoint ({reused}): this time is also in training"}
            if reused
            else {}
        ),
    }


def self_hosted_cost(config: ExperimentConfig, run: RunDir, trained: bool) -> dict[str, Any]:
    """The cost record of a run on our own hardware (``trained``: it has a training stage)."""
    summary = _summary(run)
    stages = run.manifest().get("stages", {})
    record: dict[str, Any] = {}
    detected = summary.get("gpu_type")
    if detected is None:
        predict_infos = [stages.get(f"predict:{s}", {}) for s in config.eval_splits]
        detected = next((i.get("gpu_type") for i in predict_infos if i.get("gpu_type")), None)
    price = hourly_price(config, detected)
    a40 = study_gpu_price()
    record["price"] = price.as_dict() if price else None
    if price is None:
        record["note"] = (
            "CPU run with no CPU price configured (set cost.gpu_price_per_hour): only the A40 "
            "price conversion is given"
        )
    record["a40_price"] = {**a40.as_dict(), "label": CONVERSION_LABEL}
    if trained:
        choice_s = float(stages.get("choose", {}).get("gpu_time_s") or 0.0)
        record["training"] = _self_hosted_training(summary, price, a40, choice_s)
        record["training_cost_usd"] = record["training"]["cost_usd"]
    else:  # nothing trained
        record["training"] = None
        record["training_cost_usd"] = 0.0
    record["inference"] = {
        split: _self_hosted_inference(stages[f"predict:{split}"], price, a40)
        for split in config.eval_splits
        if f"predict:{split}" in stages
    }
    return record


def unpriced_cost(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """Tokens and timings of a run whose server's price tunebench does not know."""
    stages = run.manifest().get("stages", {})
    return {
        "endpoint": {
            split: {**token_totals(run, split), **stages.get(f"predict:{split}", {})}
            for split in config.eval_splits
            if run.predictions(split).is_file()
        },
        "note": "endpoint runs are not priced (the server's cost is unknown to tunebench)",
        "training_cost_usd": None,
    }


# --- deployment break-even ----------------------------------------------------------------


def break_even(
    price_per_hour: float,
    gpu_count: int,
    predictions_per_s: float,
    api_cost_per_query: float,
) -> dict[str, Any]:
    """Monthly query volume above which a GPU running 24/7 is cheaper than the API.

    Self-hosting costs a flat ``price x 730 h x GPUs`` a month and serves at most
    ``throughput x 730 h`` queries; the API costs ``api_cost_per_query`` per query. Below the
    capacity of one deployment the break-even is ``monthly / api_cost_per_query``; if that
    exceeds the capacity, adding deployments never helps (each costs more per query at full
    load than the API) and there is no break-even (``queries_per_month`` None).
    """
    if api_cost_per_query <= 0 or predictions_per_s <= 0:
        raise TunebenchError("break-even needs a positive API cost per query and a positive throughput")
    monthly = price_per_hour * HOURS_PER_MONTH * max(gpu_count, 1)
    capacity = predictions_per_s * 3600.0 * HOURS_PER_MONTH
    volume = monthly / api_cost_per_query
    return {
        "monthly_self_hosted_usd": round(monthly, 4),
        "capacity_queries_per_month": round(capacity, 1),
        "api_cost_per_query_usd": api_cost_per_query,
        "self_hosted_cost_per_query_at_capacity_usd": monthly / capacity,
        "queries_per_month": round(volume, 1) if volume <= capacity else None,
    }


def self_hosted_monthly(volume: float, monthly: float, capacity: float) -> float:
    """Cost of ``volume`` queries a month with as many 24/7 deployments as needed."""
    return monthly * max(1, math.ceil(volume / capacity)) if volume > 0 else monthly
