"""The comparison report: ``report.md`` + a self-contained ``report.html`` + PNG figures.

Sections: results (tasks x systems, 95% bootstrap CIs from the scorers), paired significance
(McNemar's exact test on per-example verdicts, a paired permutation test on continuous scores),
training cost and time, deployment break-even, loss curves, accuracy and cost charts, error
analysis (each task's own breakdown of its errors, and the best system's remaining errors
classified, the model's apart from the benchmark's), wrong predictions beside the gold, a
per-example comparison of every system (report.html: searchable and filterable), and what
produced it (configs, versions, hardware, commit). The source is a study YAML, a folder of run
directories or one run directory.
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
