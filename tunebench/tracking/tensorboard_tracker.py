"""TensorBoard event files under ``<runs>/tensorboard/<run>`` (a study's cells in
``tensorboard/<study>/<cell>``): scalars per step, the final metrics at the last step, the
parameters through the HParams plugin, and the config (a study's report) as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.io import read_text
from tunebench.tracking.base import Tracker, require
from tunebench.tracking.replay import Scalar, TrackedRun

TEXT_FILES = {"config.yaml": "yaml", "report.md": "markdown"}


def hparam_value(value: Scalar) -> bool | int | float | str:
    return value if isinstance(value, bool | int | float) else str(value)


class TensorboardTracker(Tracker):
    name = "tensorboard"
    modules = ("tensorboard",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writer: Any = None

    @property
    def root(self) -> Path:
        return self.where.store.resolve() / "tensorboard"

    def location(self) -> str:
        return str(self.root)

    def start(self, run: TrackedRun, parent: dict[str, Any] | None) -> dict[str, Any]:
        require("tensorboard", self.name)
        from torch.utils.tensorboard import SummaryWriter

        log_dir = (Path(parent["log_dir"]) if parent else self.root) / run.name
        self.writer = SummaryWriter(str(log_dir))
        return {"log_dir": str(log_dir)}

    def log(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard.summary import hparams

        for step, values in run.steps:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        for key, value in run.final.items():
            self.writer.add_scalar(key, value, run.last_step)
        params = {key: hparam_value(value) for key, value in run.params.items()}
        for summary in hparams(params, dict(run.final)):
            self.writer.file_writer.add_summary(summary)
        for path, _folder in run.artifacts:
            if path.name in TEXT_FILES:
                fence = TEXT_FILES[path.name]
                text = read_text(path) if fence == "markdown" else f"```{fence}\n{read_text(path)}```"
                self.writer.add_text(path.name, text)

    def finish(self) -> None:
        self.writer.close()

    def discard(self, record: dict[str, Any]) -> None:
        for events in Path(record["log_dir"]).glob("events.out.tfevents.*"):  # not the cells' folders
            events.unlink()
