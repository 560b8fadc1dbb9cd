"""Dated price tables: OpenAI fine-tuning per 1M tokens and GPU rental per hour.

Prices change; every row carries the date it was read and where, and every price can be
overridden (``gpu_price(key, {"H100": 1.99})``, ``openai_price(model, {...})``, the config's
``cost.gpu_price_per_hour`` and ``openai.*_price_per_1m``, or a JSON/YAML file named by
``$TUNEBENCH_PRICES``). A report that uses these numbers prints the date and source beside them.

OpenAI's own pricing page could not be read from here; the rows cite the OpenAI announcement
or the dated third-party copy of the pricing table that the number was taken from. Check
https://openai.com/api/pricing before relying on a figure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from tunebench.errors import TunebenchError


@dataclass(frozen=True)
class OpenAIPrice:
    """US$ per 1M tokens for fine-tuning ``model`` and for using the fine-tuned model."""

    model: str
    training: float
    input: float
    output: float
    date: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "training_per_1m": self.training,
            "input_per_1m": self.input,
            "output_per_1m": self.output,
            "date": self.date,
            "source": self.source,
        }


@dataclass(frozen=True)
class GpuPrice:
    """US$ per GPU-hour of renting one ``key`` GPU, with where the figure came from (a table
    entry below, or a config override, whose date may be unknown)."""

    key: str
    price_per_hour: float
    date: str | None
    source: str
    #: Regular expression over the upper-cased device name (``torch.cuda.get_device_name``).
    pattern: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu_type": self.key,
            "price_per_hour": self.price_per_hour,
            "date": self.date,
            "source": self.source,
        }


_BLOG_35 = "OpenAI, 'GPT-3.5 Turbo fine-tuning and API updates' (2023-08-22): $0.008/1K training, $0.012/1K input, $0.016/1K output"
_FTDB_35 = "finetunedb.com, 'How much does it cost to fine-tune GPT-3.5' (2024-02-02), quoting OpenAI: $0.008/$0.003/$0.006 per 1K"
_TOKONOMICS = "tokonomics.ca 'LLM fine-tuning costs guide' (2026-06-06) quoting OpenAI's pricing table; same figures on getapipulse.com (2026)"
_GPT41 = (
    "inference: oreateai.com GPT-4.1 mini pricing (2026-04), fine-tuned $0.80 in / $3.20 out; "
    "training: aicalculators.org 'How much does AI fine-tuning cost' (2026). Sources disagree on training "
    "($4 vs $5 per 1M): verify and override"
)

OPENAI_PRICES: dict[str, OpenAIPrice] = {
    p.model: p
    for p in (
        # The study's model (Aug-Sep 2023 launch prices, per 1K tokens x 1000).
        OpenAIPrice("gpt-3.5-turbo-0613", 8.00, 12.00, 16.00, "2023-08-22", _BLOG_35),
        OpenAIPrice("gpt-3.5-turbo-1106", 8.00, 3.00, 6.00, "2024-02-02", _FTDB_35),
        OpenAIPrice("gpt-3.5-turbo-0125", 8.00, 3.00, 6.00, "2024-02-02", _FTDB_35),
        OpenAIPrice("gpt-4o-mini-2024-07-18", 3.00, 0.30, 1.20, "2026-06-06", _TOKONOMICS),
        OpenAIPrice("gpt-4o-2024-08-06", 25.00, 3.75, 15.00, "2026-06-06", _TOKONOMICS),
        OpenAIPrice("gpt-4.1-mini-2025-04-14", 4.00, 0.80, 3.20, "2026-04", _GPT41),
    )
}
# Undated aliases resolve to the dated snapshot OpenAI fine-tunes under that name.
OPENAI_ALIASES = {
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
}

_RUNPOD_2026 = "RunPod listed rate via deploybase.ai 'RunPod GPU pricing' (2026-03-10, lower/'spot' column)"
_RUNPOD_SECURE = "RunPod Secure Cloud via spheron.network 'RunPod H100 pricing 2026' (2026-05-22)"

GPU_PRICES: dict[str, GpuPrice] = {
    p.key: p
    for p in (
        GpuPrice(
            "A40",
            0.475,
            "2023-09",
            "the study's figure (its A40 runs, RunPod-class rental); kept for comparability",
            r"\bA40\b",
        ),
        GpuPrice("H100", 2.69, "2026-05-22", _RUNPOD_SECURE + ", H100 SXM5", r"\bH100\b"),
        GpuPrice("H100 PCIe", 2.79, "2026-05-22", _RUNPOD_SECURE + ", H100 80GB PCIe", r"\bH100\b.*\bPCIE\b"),
        GpuPrice("H200", 3.59, "2026-03-10", _RUNPOD_2026, r"\bH200\b"),
        GpuPrice("A100", 1.39, "2026-03-10", _RUNPOD_2026 + ", A100 SXM 80GB", r"\bA100\b"),
        GpuPrice("A100 PCIe", 1.19, "2026-03-10", _RUNPOD_2026 + ", A100 PCIe 80GB", r"\bA100\b.*\bPCIE\b"),
        GpuPrice(
            "A10G",
            1.006,
            "2026-06-17",
            "AWS EC2 g5.xlarge on-demand, us-east-1 (1 A10G + 4 vCPU), via an EC2 pricing guide (2026-06)",
            r"\bA10G\b",
        ),
        GpuPrice("L4", 0.44, "2026-03-10", _RUNPOD_2026, r"\bL4\b"),
        GpuPrice("RTX 4090", 0.34, "2026-03-10", _RUNPOD_2026, r"\bRTX\s*4090\b"),
    )
}


def _file_overrides() -> dict[str, Any]:
    """Overrides from the JSON/YAML file named by ``$TUNEBENCH_PRICES`` (``{"gpu": {...}, "openai": {...}}``)."""
    path = os.environ.get("TUNEBENCH_PRICES")
    if not path:
        return {}
    from tunebench.config import load_yaml  # YAML is a superset of JSON

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise TunebenchError(f"{path}: expected a mapping with 'gpu' and/or 'openai'")
    return data


def match_gpu(name: str) -> str | None:
    """The table key for a device name (``NVIDIA H100 80GB HBM3`` -> ``H100``), most specific first."""
    upper = name.upper()
    if name in GPU_PRICES:
        return name
    hits = [p for p in GPU_PRICES.values() if p.pattern and re.search(p.pattern, upper)]
    if not hits:
        return None
    return max(hits, key=lambda p: len(p.pattern)).key


def gpu_price(key: str, overrides: dict[str, float] | None = None) -> GpuPrice:
    """$/GPU-hour for ``key`` (a table key or a device name); ``overrides`` maps key -> price."""
    merged = {**(_file_overrides().get("gpu") or {}), **(overrides or {})}
    if key in merged:
        return GpuPrice(key, float(merged[key]), "override", "user override")
    table_key = match_gpu(key)
    if table_key is None:
        known = ", ".join(GPU_PRICES)
        raise TunebenchError(
            f"no price for GPU '{key}' (known: {known}); set cost.gpu_price_per_hour in the config"
        )
    if table_key in merged:
        return GpuPrice(table_key, float(merged[table_key]), "override", "user override")
    return GPU_PRICES[table_key]


def resolve_openai_model(model: str) -> str:
    """``ft:gpt-4o-mini-2024-07-18:org::id`` / ``gpt-4o-mini`` -> the price table's key (or ``model``)."""
    if model.startswith("ft:"):
        model = model.split(":")[1]
    return OPENAI_ALIASES.get(model, model)


def openai_price(model: str, overrides: dict[str, Any] | None = None) -> OpenAIPrice:
    """Price row of ``model``; ``overrides`` may set ``training``/``input``/``output``/``date``.

    A model missing from the table works only when all three prices are given as overrides.
    """
    key = resolve_openai_model(model)
    file_rows = _file_overrides().get("openai") or {}
    given = {**(file_rows.get(key) or file_rows.get(model) or {}), **(overrides or {})}
    given = {k: v for k, v in given.items() if v is not None}
    base = OPENAI_PRICES.get(key)
    if base is None:
        if not all(k in given for k in ("training", "input", "output")):
            known = ", ".join(OPENAI_PRICES)
            raise TunebenchError(
                f"no OpenAI price for model '{model}' (known: {known}); set openai.training_price_per_1m, "
                "openai.input_price_per_1m and openai.output_price_per_1m"
            )
        base = OpenAIPrice(key, 0.0, 0.0, 0.0, "override", "user override")
    if not given:
        return base
    fields = {k: float(given[k]) for k in ("training", "input", "output") if k in given}
    return replace(base, **fields, date=str(given.get("date", "override")), source="user override")
