"""Resumable prediction files.

Finished batches are appended to ``predictions/<split>.partial.jsonl`` (fsync'd per batch)
beside ``<split>.partial.json`` (a fingerprint of model, adapter and decoding settings, and the
generation time so far). A rerun with the same fingerprint skips the ids already there; a
different fingerprint starts over. At the end the rows are sorted into example order, written
atomically to ``<split>.jsonl``, and the partial files are removed. Local generation and
remote requests (:mod:`.endpoint`) keep their partial files this one way.

``TUNEBENCH_FAULT_AFTER_BATCHES=N`` raises ``KeyboardInterrupt`` after N batches have been
written: a deliberate crash, used by the tests (and by anyone checking resume on real hardware).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import jsonl_lines, read_json, write_jsonl
from tunebench.tasks import Example

FAULT_ENV = "TUNEBENCH_FAULT_AFTER_BATCHES"


def partial_paths(final: Path) -> tuple[Path, Path]:
    stem = final.name.removesuffix(".jsonl")
    return final.with_name(f"{stem}.partial.jsonl"), final.with_name(f"{stem}.partial.json")


def unfinished_files(final: Path) -> list[Path]:
    """What an interrupted prediction of ``final`` may have left: its partial files, and every
    rank's file and partials (:meth:`Shard.rank_file`) whatever the process count was."""
    stem = final.name.removesuffix(".jsonl")
    return [*partial_paths(final), *final.parent.glob(f"{stem}.rank*-of-*")]


def fingerprint(config: ExperimentConfig, split: str, adapter_dir: Path | None) -> str:
    """What the predictions depend on: a changed adapter or decoding setting voids a partial file."""
    adapter = []
    if adapter_dir is not None and adapter_dir.is_dir():
        for path in sorted(adapter_dir.iterdir()):
            if path.is_file():
                stat = path.stat()
                adapter.append([path.name, stat.st_size, stat.st_mtime_ns])
    payload = {
        "split": split,
        "provider": config.provider,
        "model": config.model.model_dump(mode="json"),
        "task": config.task.model_dump(mode="json"),
        "generation": config.generation.model_dump(mode="json"),
        "seed": config.sampling_seed,
        "adapter": adapter,
    }
    return payload_digest(payload)


def payload_digest(payload: dict[str, Any]) -> str:
    """A short stable digest of a JSON-able mapping: what a partial file's rows depend on."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_partial(partial: Path, meta_path: Path, key: str) -> tuple[dict[str, dict[str, Any]], float]:
    """Rows already generated (by id) and generation seconds spent on them, if still valid."""
    if not partial.is_file() or not meta_path.is_file():
        return {}, 0.0
    meta = read_json(meta_path)
    if meta.get("fingerprint") != key:
        partial.unlink()
        return {}, 0.0
    rows: dict[str, dict[str, Any]] = {}
    lines = jsonl_lines(partial.read_text(encoding="utf-8"))
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from a crash mid-write: regenerate that batch
        rows[row["id"]] = row
    return rows, float(meta.get("generation_s", 0.0))


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append a finished batch with one write and one fsync (per-row fsyncs cost seconds on a GPU run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def finish_file(final: Path, examples: list[Example], rows: dict[str, dict[str, Any]]) -> None:
    write_jsonl(final, (rows[ex.id] for ex in examples))
    for path in partial_paths(final):
        path.unlink(missing_ok=True)


def fault_after() -> int | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    if not value.isdigit():
        raise TunebenchError(f"{FAULT_ENV}={value!r}: expected a number of batches")
    return int(value)
