"""Tasks: prompts, splits and prediction rules (one module per task)."""

from __future__ import annotations

from tunebench.config import TaskConfig
from tunebench.errors import TunebenchError
from tunebench.tasks.base import SPLITS, Example, Task
from tunebench.tasks.custom import CustomTask
from tunebench.tasks.sql import SqlTask
from tunebench.tasks.viggo import ViggoTask

TASKS: dict[str, type[Task]] = {"sql": SqlTask, "viggo": ViggoTask, "custom": CustomTask}

__all__ = ["SPLITS", "TASKS", "Example", "Task", "get_task"]


def get_task(config: TaskConfig | str) -> Task:
    """The task object for a config (or a built-in task name with default settings)."""
    if isinstance(config, str):
        if config not in TASKS:
            raise TunebenchError(f"unknown task '{config}' (known: {', '.join(TASKS)})")
        config = TaskConfig(name=config)  # type: ignore[arg-type]
    return TASKS[config.name](config)
