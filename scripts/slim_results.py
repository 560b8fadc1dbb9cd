"""Slim committed prediction files so results/ stays small; every field `tunebench evaluate`
needs stays.

Dropped: the rendered `prompt` (rebuilt by `tunebench prepare` from the config), the raw
vote candidates (`candidates_raw`), the `raw` generation where its first line is the prediction
already, the vote `candidates` of the checkpoints a cell compared (`checkpoint_choice/step-N/`),
and the chosen checkpoint's predictions there, which are the cell's own
`predictions/validation.jsonl` (its manifest says `reused_from`), and an ensemble's pooled
candidates (its members' files hold them). The cell's own predictions keep their candidates (an
ensemble votes over them) and every `selection` record stays.

The cells' own validation candidates are kept: an ensemble of those cells votes over them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def slim(row: dict[str, Any], compared_checkpoint: bool) -> dict[str, Any]:
    # an ensemble's pooled candidates are its members' (their files keep them)
    pooled = "member_candidates" in row
    drop = {"prompt", "candidates_raw"} | ({"candidates"} if compared_checkpoint or pooled else set())
    raw = row.get("raw")
    if isinstance(raw, str) and raw.strip().split("\n")[0].strip() == row.get("prediction"):
        drop.add("raw")
    return {k: v for k, v in row.items() if k not in drop}


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal once both are slimmed as compared checkpoints (the vote candidates aside)."""
    return [slim(r, True) for r in a] == [slim(r, True) for r in b]


for path in sorted(Path(sys.argv[1]).glob("**/predictions/*.jsonl")):
    compared = "checkpoint_choice" in path.parts
    rows = read(path)
    if compared and path.name == "validation.jsonl":
        own = (
            path.parents[3] / "predictions" / "validation.jsonl"
        )  # <cell>/checkpoint_choice/step-N/predictions
        if own.is_file() and same_rows(rows, read(own)):
            path.unlink()  # the chosen checkpoint's: the cell's own file holds the same rows
            continue
    path.write_text("".join(json.dumps(slim(r, compared), ensure_ascii=False) + "\n" for r in rows))
