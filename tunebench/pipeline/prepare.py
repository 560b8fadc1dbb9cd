"""Prepare stage: render every split's prompts and targets into ``prepared/<split>.jsonl``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunebench.config import ExperimentConfig
from tunebench.io import write_json, write_jsonl
from tunebench.rundir import RunDir
from tunebench.tasks import SPLITS, Example, get_task


def prepare(config: ExperimentConfig, run: RunDir, tokenizer: Any | None = None) -> dict[str, Any]:
    """Write the prepared splits and ``prepared/stats.json``; returns the stats.

    With a ``tokenizer`` the stats include token-length percentiles of prompt, target and
    both together (what ``training.max_length`` must cover).
    """
    task = get_task(config.task)
    splits = task.splits()
    stats: dict[str, Any] = {"task": config.task.name, "validation": config.task.validation, "splits": {}}
    for split in SPLITS:
        examples = splits[split]
        write_jsonl(run.prepared(split), (ex.to_row() for ex in examples))
        stats["splits"][split] = split_stats(examples, tokenizer)
    if tokenizer is not None:
        stats["tokenizer"] = getattr(tokenizer, "name_or_path", None)
    write_json(run.root / "prepared" / "stats.json", stats)
    run.record_stage("prepare", counts={s: len(splits[s]) for s in SPLITS})
    return stats


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    arr = np.asarray(values)
    return {"p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max())}


def split_stats(examples: list[Example], tokenizer: Any | None) -> dict[str, Any]:
    out: dict[str, Any] = {"count": len(examples)}
    out["prompt_chars"] = percentiles([len(ex.prompt) for ex in examples])
    if tokenizer is not None and examples:
        prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
        targets = tokenizer([ex.completion for ex in examples], add_special_tokens=False)["input_ids"]
        out["prompt_tokens"] = percentiles([len(p) for p in prompts])
        out["target_tokens"] = percentiles([len(t) for t in targets])
        out["total_tokens"] = percentiles(
            [len(p) + len(t) + 2 for p, t in zip(prompts, targets, strict=True)]
        )
    return out
