"""What every tracker implements, and the record that keeps logging idempotent.

A tracker logs one :class:`~tunebench.tracking.replay.TrackedRun` in three calls: ``start``
creates the tracker's run (a study cell's as a child of the study's) and returns a record that
names it, ``log`` sends everything, ``finish`` closes it. The record goes into the run
directory's ``tracking.json`` as soon as the run exists, marked complete once it is closed: a
later call skips a complete run, and replaces one that an interrupted call left half-logged.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from tunebench.errors import TunebenchError
from tunebench.io import read_json, write_json
from tunebench.tracking.replay import TrackedRun

STATE_FILE = "tracking.json"


@dataclass(frozen=True)
class Destination:
    """Where trackers put runs: local stores go under ``store`` (the runs folder)."""

    store: Path
    project: str = "tunebench"
    tracking_uri: str | None = None


def missing_extra(tracker: str) -> TunebenchError:
    return TunebenchError(
        f"tracking.report_to names {tracker}, but its library is not installed: "
        f"pip install 'tunebench[{tracker}]'"
    )


def require(module: str, tracker: str) -> ModuleType:
    """Import a tracker's library, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(tracker) from None


class Tracker(ABC):
    """One experiment tracker, logging finished runs read from their directories."""

    name: ClassVar[str]  # as in tracking.report_to
    modules: ClassVar[tuple[str, ...]]  # what its extra installs, checked before anything is logged

    def __init__(self, where: Destination) -> None:
        self.where = where

    @abstractmethod
    def location(self) -> str:
        """Where this tracker's runs go (a store, a server, a project): a record made for another
        location does not count as logged here."""

    @abstractmethod
    def start(self, run: TrackedRun, parent: dict[str, Any] | None) -> dict[str, Any]:
        """Create the tracker's run (under ``parent``, the study's record, for a cell); returns the
        record that names it."""

    @abstractmethod
    def log(self, run: TrackedRun) -> None:
        """Log parameters, the per-step curve, the final metrics and the artifacts."""

    @abstractmethod
    def finish(self) -> None:
        """Close the run started last."""

    def discard(self, record: dict[str, Any]) -> None:  # noqa: B027 - optional for a tracker
        """Remove a run that an interrupted call left half-logged (where the tracker can)."""


def read_records(root: Path) -> dict[str, dict[str, Any]]:
    path = root / STATE_FILE
    return read_json(path) if path.is_file() else {}


def write_record(root: Path, tracker: str, record: dict[str, Any]) -> None:
    records = read_records(root)
    records[tracker] = record
    write_json(root / STATE_FILE, records)
