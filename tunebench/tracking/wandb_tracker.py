"""Weights & Biases through ``wandb.init``: offline (``<runs>/wandb/offline-run-*``, upload
later with ``wandb sync``) when no API key is set or W&B cannot be reached; a study's cells are
runs of one group (the study's name) beside the study's own run."""

from __future__ import annotations

import netrc
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tunebench.tracking.base import Tracker, require
from tunebench.tracking.replay import TrackedRun

INIT_TIMEOUT_S = 30


def has_api_key() -> bool:
    """A key in $WANDB_API_KEY or in ~/.netrc for the W&B host (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-files"


class WandbTracker(Tracker):
    name = "wandb"
    modules = ("wandb",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run: Any = None

    def location(self) -> str:
        return f"{self.where.store.resolve() / 'wandb'} project {self.where.project}"

    def mode(self) -> str:
        return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")

    def start(self, run: TrackedRun, parent: dict[str, Any] | None) -> dict[str, Any]:
        wandb = require("wandb", self.name)
        settings = wandb.Settings(
            init_timeout=INIT_TIMEOUT_S, x_disable_stats=True, console="off", silent=True, save_code=False
        )
        options = {
            "project": self.where.project,
            "name": run.name,
            "group": run.tags.get("study"),
            "job_type": run.kind,
            "config": run.params,
            "tags": [run.tags[k] for k in ("provider", "task") if run.tags.get(k)],
            "notes": run.description,
            "dir": str(self.where.store.resolve()),
            "reinit": "create_new",
            "settings": settings,
        }
        mode = self.mode()
        try:
            self.run = wandb.init(mode=mode, **options)
        except Exception as exc:
            if mode == "offline":
                raise
            from tunebench.tracking import _warn

            _warn(
                f"W&B unreachable ({type(exc).__name__}): {run.name} is logged offline; `wandb sync` it later"
            )
            mode = "offline"
            self.run = wandb.init(mode=mode, **options)
        return {"run_id": self.run.id, "mode": mode, "dir": str(Path(self.run.dir).parent)}

    def log(self, run: TrackedRun) -> None:
        wandb = require("wandb", self.name)
        for step, values in run.steps:
            self.run.log(values, step=step)
        self.run.summary.update(run.final)
        if run.artifacts:
            artifact = wandb.Artifact(artifact_name(run.name), type="run-files")
            for path, folder in run.artifacts:
                artifact.add_file(str(path), name=f"{folder}/{path.name}" if folder else path.name)
            self.run.log_artifact(artifact)

    def finish(self) -> None:
        self.run.finish()

    def discard(self, record: dict[str, Any]) -> None:
        if record.get("mode") == "offline" and record.get("dir"):
            shutil.rmtree(record["dir"], ignore_errors=True)
