"""Slim committed prediction files so results/ stays small; every field `tunebench evaluate`
needs stays.

Dropped: the rendered `prompt` (rebuilt by `tunebench prepare` from the config), the raw
vote candidates (`candidates_raw`), the `raw` generation where its first line is the prediction
already, and the vote `candidates` of validation predictions (the checkpoints a cell compared,
`checkpoint_choice/step-N/`, and the cell's own, which are the chosen checkpoint's): the test
predictions keep them, and every `selection` record stays. Studies slimmed before 2026-12-06
kept the cell's own validation candidates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def slim(row: dict[str, Any], compared_checkpoint: bool) -> dict[str, Any]:
    drop = {"prompt", "candidates_raw"} | ({"candidates"} if compared_checkpoint else set())
    raw = row.get("raw")
    if isinstance(raw, str) and raw.strip().split("\n")[0].strip() == row.get("prediction"):
        drop.add("raw")
    return {k: v for k, v in row.items() if k not in drop}


for path in sorted(Path(sys.argv[1]).glob("**/predictions/*.jsonl")):
    compared = "checkpoint_choice" in path.parts or path.name == "validation.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(slim(r, compared), ensure_ascii=False) + "\n" for r in rows))
