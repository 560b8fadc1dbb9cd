"""What a training run reports as it goes: ``metrics.jsonl`` (one row per train step and per
validation) and progress on the terminal. Experiment trackers (``tracking.report_to``:
TensorBoard, MLflow, W&B, Trackio) are fed from these files once the run is done.

On a terminal progress is a bar; without one (a log file, CI, nohup, a cluster job) a plain
line every 30 s, and at the first and last step, carries the same information: step, loss,
the latest validation loss, tokens/s and the time left.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from tunebench.io import append_jsonl
from tunebench.rundir import RunDir

#: seconds between plain progress lines when stderr is not a terminal
PLAIN_PROGRESS_EVERY_S = 30.0


def say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False)


def json_float(value: Any) -> Any:
    """NaN/inf as null in JSON (metrics.jsonl stays valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class TrainingLog:
    """The main process's log of one run (other processes get one that writes nothing)."""

    def __init__(self, run: RunDir, total_steps: int, done_steps: int, main: bool) -> None:
        self.run, self.total, self.main = run, total_steps, main
        self.bar, self.task = self._bar(done_steps) if main and sys.stderr.isatty() else (None, None)
        self.last_line = 0.0
        self.validation_loss: float | None = None
        self.started, self.started_step = time.perf_counter(), done_steps

    def row(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl."""
        if not self.main:
            return
        append_jsonl(self.run.metrics_log, {k: json_float(v) for k, v in row.items()})
        if row["split"] == "validation":
            self.validation_loss = row["loss"]

    def progress(self, step: int, loss: float, tokens_per_s: float, last: bool = False) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, tps=tokens_per_s)
        elif self.main and self._line_due(step, last):
            parts = [f"train step {step}/{self.total}"]
            if math.isfinite(loss):
                parts.append(f"loss {loss:.4f}")
            if self.validation_loss is not None:
                parts.append(f"validation loss {self.validation_loss:.4f}")
            parts.append(f"{tokens_per_s:.0f} tokens/s")
            done = step - self.started_step
            if done > 0 and step < self.total:
                per_step = (time.perf_counter() - self.started) / done
                parts.append(f"ETA {duration(per_step * (self.total - step))}")
            say(", ".join(parts))

    def say(self, message: str) -> None:
        if self.main:
            say(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _line_due(self, step: int, last: bool) -> bool:
        now = time.perf_counter()
        if last or step in (1, self.total) or now - self.last_line >= PLAIN_PROGRESS_EVERY_S:
            self.last_line = now
            return True
        return False

    def _bar(self, done: int) -> tuple[Any, Any]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[tps]:.0f} tok/s"),
            TimeRemainingColumn(),
            transient=True,
        )
        task = bar.add_task("train", total=self.total, completed=done, loss=float("nan"), tps=0.0)
        bar.start()
        return bar, task
