"""ViGGO as JSON extraction, in OpenAI's chat fine-tuning format.

Each ViGGO sentence becomes one conversation: a system message that names the JSON keys, the
sentence as the user message, and its meaning representation as a JSON object as the
assistant's answer, e.g.
``{"dialogue_act": "inform", "name": "Portal 2", "genres": ["puzzle", "shooter"], ...}``
(keys in the meaning representation's order; list attributes as lists). The files are the
task's input as a practitioner would bring it: ``tunebench init`` takes them as they are.

    python examples/make_viggo_json.py [--data-dir DIR] [--out examples/viggo_json] \\
        [--train 300] [--test 60] [--seed 0]

``--data-dir`` is the data mirror (default: $TUNEBENCH_DATA_DIR); rows are drawn with the seed
from its viggo/train.csv and viggo/test.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from pathlib import Path
from typing import Any

from tunebench.evaluation.mr import ATTRIBUTES, FUNCTIONS, LIST_ATTRIBUTES, MR, parse_mr

SYSTEM = (
    "Extract the meaning of the user's sentence about a video game as one JSON object. Keys: "
    f"dialogue_act (one of {', '.join(FUNCTIONS)}), then only the attributes the sentence states, "
    f"from {', '.join(ATTRIBUTES)}; {', '.join(sorted(LIST_ATTRIBUTES))} are lists of strings, "
    "every other value is a string. Answer with the JSON object only."
)


def mr_json(mr: MR) -> dict[str, Any]:
    """The meaning representation as a JSON object (first value of a repeated attribute)."""
    out: dict[str, Any] = {"dialogue_act": mr.function}
    for attr, value in mr.slots:
        if attr in out:
            continue
        items = [item.strip() for item in value.split(",") if item.strip()]
        out[attr] = items if attr in LIST_ATTRIBUTES else " ".join(value.split())
    return out


def conversation(row: dict[str, str]) -> dict[str, Any]:
    mr = parse_mr(row["mr"])
    if not isinstance(mr, MR):
        raise ValueError(f"unparseable meaning representation {row['mr']!r}: {mr}")
    answer = json.dumps(mr_json(mr), ensure_ascii=False)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": row["ref"]},
            {"role": "assistant", "content": answer},
        ]
    }


def sample(path: Path, count: int, seed: int) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    return [conversation(rows[i]) for i in chosen]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build(data_dir: Path, out: Path, train: int = 300, test: int = 60, seed: int = 0) -> dict[str, Path]:
    """Write ``out/train.jsonl`` and ``out/test.jsonl``; returns their paths."""
    paths = {"train": out / "train.jsonl", "test": out / "test.jsonl"}
    write_jsonl(paths["train"], sample(data_dir / "viggo" / "train.csv", train, seed))
    write_jsonl(paths["test"], sample(data_dir / "viggo" / "test.csv", test, seed))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TUNEBENCH_DATA_DIR", "data")))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "viggo_json")
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, path in build(args.data_dir, args.out, args.train, args.test, args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
