"""Resumable training state: ``checkpoints/step-N/``, written atomically.

A checkpoint holds the trained weights (``adapter/``: the peft LoRA adapter, or ``model/``: every
weight with ``training.method: full``; safetensors), the optimizer state (full tensors keyed by
parameter name, through ``torch.distributed.checkpoint``, so it loads under DDP or FSDP and on
any process count), the scheduler state, the RNG states (python, numpy, torch, CUDA) and
``state.json`` (global step, tokens seen, wall time, early-stopping state, best loss/step,
skipped steps). Data order is a pure function of
(seed, global step) (see :mod:`.data`), so the step *is* the data position and a run can
resume on a different number of processes. Each checkpoint is built in a temporary folder
and renamed into place, so a kill at any moment leaves either the old or the new one.
Only the latest and the best checkpoints are kept (and, when the adapter is chosen by
metric, the lowest-loss candidates).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunebench.io import iter_jsonl, read_json, write_json

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of finished checkpoints, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def lowest_validation_losses(
    metrics_log: Path, count: int, steps: set[int] | None = None
) -> list[tuple[int, float]]:
    """(step, validation loss) of the ``count`` lowest validation losses logged in
    ``metrics.jsonl`` (among ``steps`` when given), lowest first, the earlier step among equals.
    The loop keeps these checkpoints when the run's adapter is chosen by metric."""
    losses: dict[int, float] = {}
    if metrics_log.is_file():
        for row in iter_jsonl(metrics_log):
            loss, step = row.get("loss"), row.get("step")
            if row.get("split") == "validation" and loss is not None and (steps is None or step in steps):
                losses[int(step)] = float(loss)
    return lowest_losses(losses.items(), count)


def lowest_losses(losses: Iterable[Sequence[float]], count: int) -> list[tuple[int, float]]:
    """The ``count`` lowest of (step, validation loss) pairs, lowest first, the earlier step
    among equals."""
    ranked = sorted(((int(step), float(loss)) for step, loss in losses), key=lambda item: (item[1], item[0]))
    return ranked[:count]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name, on CPU (the main process's copy).

    A collective under FSDP (sharded states are gathered): every process calls it. Before the
    first real update (every step so far skipped as non-finite) there is no state to gather, and
    ``get_optimizer_state_dict`` would create one by running a zero-gradient ``step()``, which
    advances AdamW's step count and so the bias correction of every later update. Then the plain
    state dict (hyperparameters only, positional) is saved instead; it loads on any layout.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:
        return optimizer.state_dict()

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
) -> None:
    """Restore what :func:`optimizer_state` saved (each process passes the full state); a
    checkpoint from before name-keyed states (integer keys) loads as a plain state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # the optimizer as built now decides fused or not (fused on a GPU, not on the CPU or under
    # FSDP): torch places each step counter by the checkpoint's flag (fused: on the parameter's
    # device), so a checkpoint moves between these layouts
    if optimizer.param_groups and "fused" in optimizer.param_groups[0]:  # torch's, not bitsandbytes'
        fused = optimizer.param_groups[0]["fused"]
        saved = {**saved, "param_groups": [{**g, "fused": fused} for g in saved.get("param_groups", [])]}
    params = [p for group in saved.get("param_groups", []) for p in group["params"]]
    if params and all(isinstance(p, int) for p in params):
        optimizer.load_state_dict(saved)
        return
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(module, optimizer, optim_state_dict=saved, options=options)


def save_checkpoint(
    root: Path,
    step: int,
    write_weights: Callable[[Path], None],
    optimizer_state: dict[str, Any],
    scheduler: Any,
    state: dict[str, Any],
    rng: dict[str, Any],
) -> Path:
    """Write ``root/step-<step>/`` atomically (temp folder + rename); returns its path.

    ``write_weights(folder)``: writes the trained weights (adapter or model) into the new
    checkpoint folder (:meth:`tunebench.training.method.LoraMethod.write` and its kin).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_weights(tmp)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng, tmp / "rng.pt")
    write_json(tmp / "state.json", state)  # last: its presence marks a complete checkpoint
    _fsync_dir(tmp)
    if final.exists():  # a re-save of the same step after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def load_state(folder: Path) -> dict[str, Any]:
    return read_json(folder / "state.json")


def load_checkpoint(
    folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore optimizer and scheduler in place; returns (state, rng) for the caller."""
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    load_optimizer_state(module, optimizer, saved)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    return {"state": load_state(folder), "rng": rng}


def prune(root: Path, keep: set[int]) -> None:
    """Delete every checkpoint whose step is not in ``keep`` (the latest, the best and the
    candidates of the checkpoint choice), and the optimizer state of every kept one but the
    latest: a run resumes only from its latest checkpoint, the others serve the choice and
    publishing, which read weights alone. (AdamW's moments are twice the float32 weights of a
    full fine-tune: 12 GB a checkpoint for a 1.5B model.)"""
    found = list_checkpoints(root)
    latest = found[-1][0] if found else None
    for step, folder in found:
        if step not in keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif step != latest:
            (folder / "optimizer.pt").unlink(missing_ok=True)
    for child in root.glob(".tmp-step-*"):  # leftovers of a killed save
        shutil.rmtree(child, ignore_errors=True)


def publish_adapter(source: Path, target: Path) -> None:
    """Copy a checkpoint's trained folder (``adapter/`` or ``model/``) into the run atomically
    (copy beside it, then rename)."""
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
