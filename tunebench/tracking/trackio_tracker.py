"""Trackio, Hugging Face's local-first tracker, in its own store (``$TRACKIO_DIR``, by default
under the Hugging Face cache; ``trackio show`` opens it): the config as the run's config, the
curve step by step, the final metrics at the last step, the files as one artifact; a study's
cells and its own run share a group (the study's name)."""

from __future__ import annotations

import re
from typing import Any

from tunebench.tracking.base import Tracker, require
from tunebench.tracking.replay import TrackedRun


def artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-files"


class TrackioTracker(Tracker):
    name = "trackio"
    modules = ("trackio",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run: Any = None

    def location(self) -> str:
        utils = require("trackio.utils", self.name)
        return f"{utils.TRACKIO_DIR} project {self.where.project}"

    def start(self, run: TrackedRun, parent: dict[str, Any] | None) -> dict[str, Any]:
        trackio = require("trackio", self.name)
        self.run = trackio.init(
            project=self.where.project,
            name=run.name,
            group=run.tags.get("study"),
            config=run.params,
            resume="never",
            embed=False,
            auto_log_gpu=False,
            auto_log_cpu=False,
        )
        return {"run_id": self.run.id, "name": self.run.name}

    def log(self, run: TrackedRun) -> None:
        trackio = require("trackio", self.name)
        for step, values in run.steps:
            self.run.log(values, step=step)
        if run.final:
            self.run.log(dict(run.final), step=run.last_step)
        if run.artifacts:
            artifact = trackio.Artifact(artifact_name(run.name), type="run-files")
            for path, folder in run.artifacts:
                artifact.add_file(path, name=f"{folder}/{path.name}" if folder else path.name)
            self.run.log_artifact(artifact)

    def finish(self) -> None:
        self.run.finish()

    def discard(self, record: dict[str, Any]) -> None:
        from trackio.sqlite_storage import SQLiteStorage

        SQLiteStorage.delete_run(self.where.project, record["name"], record.get("run_id"))
