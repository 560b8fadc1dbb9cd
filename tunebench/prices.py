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


@dataclass(frozen=True)
class GpuCard:
    """What sizing needs of one GPU model: memory, peak dense bf16 tensor FLOP/s (no sparsity),
    memory bandwidth, and the :data:`GPU_PRICES` row that prices it (None: no dated price)."""

    key: str
    memory_gib: float
    """Usable memory as ``nvidia-smi`` reports the card's total (ECC on), in GiB."""
    bf16_tflops: float
    bandwidth_gbs: float
    price_key: str | None
    source: str
    date: str

    def price(self, overrides: dict[str, float] | None = None) -> GpuPrice | None:
        """$/h from the price table (or an override); None when neither has this card."""
        if overrides and self.key in overrides:
            return gpu_price(self.key, overrides)
        return gpu_price(self.price_key, overrides) if self.price_key else None

    def as_dict(self) -> dict[str, Any]:
        price = self.price()
        return {
            "gpu": self.key,
            "memory_gib": self.memory_gib,
            "bf16_tflops": self.bf16_tflops,
            "bandwidth_gbs": self.bandwidth_gbs,
            "price_per_hour": price.price_per_hour if price else None,
            "price_date": price.date if price else None,
            "spec_source": f"{self.source} ({self.date})",
        }


_SHEET = "NVIDIA {} datasheet: dense {} TFLOPS bf16 (half the 'with sparsity' figure), {} GB/s, {} GB"
_SMI = "; usable memory: nvidia-smi total {} MiB"

CARDS: dict[str, GpuCard] = {
    c.key: c
    for c in (
        GpuCard(
            "L4", 22.49, 121.0, 300.0, "L4", _SHEET.format("L4", 121, 300, 24) + _SMI.format(23034), "2023-03"
        ),
        GpuCard(
            "A10",
            22.49,
            125.0,
            600.0,
            None,
            _SHEET.format("A10", 125, 600, 24) + _SMI.format(23028),
            "2021-04",
        ),
        GpuCard(
            "A40",
            44.99,
            149.7,
            696.0,
            "A40",
            _SHEET.format("A40", 149.7, 696, 48) + _SMI.format(46068),
            "2020-10",
        ),
        GpuCard(
            "A100 40GB",
            40.0,
            312.0,
            1555.0,
            None,
            _SHEET.format("A100 SXM4", 312, 1555, 40) + _SMI.format(40960),
            "2020-05",
        ),
        GpuCard(
            "A100 80GB",
            80.0,
            312.0,
            2039.0,
            "A100",
            _SHEET.format("A100 SXM4", 312, 2039, 80) + _SMI.format(81920),
            "2021-06",
        ),
        GpuCard(
            "H100",
            79.65,
            989.0,
            3350.0,
            "H100",
            _SHEET.format("H100 SXM5", 989, 3350, 80) + _SMI.format(81559),
            "2023-03",
        ),
        GpuCard(
            "H200",
            140.4,
            989.0,
            4800.0,
            "H200",
            _SHEET.format("H200 SXM", 989, 4800, 141) + _SMI.format(143771),
            "2024-11",
        ),
    )
}
_CARD_ALIASES = {"A100": "A100 80GB", "A100-80GB": "A100 80GB", "A100-40GB": "A100 40GB", "H100 SXM": "H100"}


def gpu_card(name: str) -> GpuCard:
    """The card row for a table key, an alias or a device name (``NVIDIA A40`` -> ``A40``)."""
    key = _CARD_ALIASES.get(name, name)
    if key in CARDS:
        return CARDS[key]
    upper = name.upper().replace("-", " ")
    for card in sorted(CARDS.values(), key=lambda c: -len(c.key)):
        words = card.key.upper().split()
        if re.search(rf"\b{words[0]}\b", upper) and all(w in upper for w in words[1:]):
            return card
    if re.search(r"\bA100\b", upper):
        return CARDS["A100 80GB"]
    raise TunebenchError(f"unknown GPU '{name}' (known: {', '.join(CARDS)})")
