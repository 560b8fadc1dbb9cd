"""Drop the rendered prompt from committed prediction files (it is rebuilt by `tunebench prepare`
from the config; every field `tunebench evaluate` needs stays), so results/ stays small."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# every cell's predictions, and those of the checkpoints it compared (checkpoint_choice/step-N/)
for path in sorted(Path(sys.argv[1]).glob("**/predictions/*.jsonl")):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("prompt", "candidates_raw")}, ensure_ascii=False) + "\n" for r in rows))
