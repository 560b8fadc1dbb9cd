"""The comparison report: ``report.md`` + a self-contained ``report.html`` + PNG figures.

Sections: results (tasks x systems, 95% bootstrap CIs from the scorers), paired significance
(McNemar's exact test on per-example verdicts), training cost and time, deployment break-even,
loss curves, accuracy and cost charts, error analysis (each task's own breakdown of its errors),
wrong predictions beside the gold, and what produced it (configs, versions, hardware, commit).
Every number is read from the run directories' files and printed with a fixed format, so the
report can be checked against them.
"""

from __future__ import annotations

from pathlib import Path

from tunebench.report.build import build_blocks
from tunebench.report.collect import StudyData, collect
from tunebench.report.doc import write

__all__ = ["StudyData", "collect", "write_report"]


def write_report(source: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a study YAML or a folder of run directories; returns its folder."""
    data = collect(source)
    folder = Path(out) if out is not None else (data.default_out or Path(source) / "report")
    write(build_blocks(data), f"tunebench report: {data.title}", folder)
    return folder
