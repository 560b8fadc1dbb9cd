"""The provider interface and the registry that finds a provider by name.

A provider is who trains and who answers: ``local`` (LoRA here), ``base`` (the base model, no
training), ``openai`` (an OpenAI fine-tuning job), ``endpoint`` (any OpenAI-compatible server)
and ``ensemble`` (a vote over finished runs). Each is one module of this package exposing
``PROVIDER``, an instance of a :class:`Provider` subclass; the pipeline looks a run's provider
up once (:func:`get_provider`) and calls its stages. Adding a provider (a vLLM server, another
fine-tuning API) means adding one module and one line to :data:`MODULES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.rundir import RunDir
from tunebench.tasks import Example, Task, get_task
from tunebench.tasks.base import load_prepared

#: provider name -> the module that implements it
MODULES = {
    "local": "tunebench.providers.local",
    "base": "tunebench.providers.base",
    "openai": "tunebench.providers.openai",
    "endpoint": "tunebench.providers.endpoint",
    "ensemble": "tunebench.providers.ensemble",
}


class Provider:
    """Defaults for a provider that trains nothing; subclasses override what they do."""

    name: ClassVar[str]
    #: whether the run has a ``train`` stage (a fine-tune, or an ensemble's record of its members')
    trains: ClassVar[bool] = False
    #: stages that can run as several processes, one per GPU (``--gpus N``)
    multi_process: ClassVar[frozenset[str]] = frozenset()
    #: what ``tunebench serve`` / ``tunebench export`` can do with a finished run
    can_serve: ClassVar[bool] = False
    can_export: ClassVar[bool] = False
    #: whether its runs keep candidates an ensemble can pool
    ensemble_member: ClassVar[bool] = False
    #: whether it reads other runs' results, so a study runs it after them
    needs_other_runs: ClassVar[bool] = False
    #: how its runs are priced: GPU time (``gpu``), API tokens (``tokens``), or not at all
    priced_by: ClassVar[str] = "gpu"
    #: where its answers come from when not from hardware of ours (the report's hardware column)
    runs_on: ClassVar[str | None] = None

    def before_stages(self, config: ExperimentConfig, run: RunDir) -> None:
        """Called every time the pipeline opens the run, before any stage."""

    def train(
        self, config: ExperimentConfig, run: RunDir, resume: bool = True, yes: bool = False
    ) -> dict[str, Any]:
        """The train stage (records it in the manifest); returns the training summary."""
        return {}

    def after_training(self, config: ExperimentConfig, run: RunDir) -> None:
        """Work that follows a finished train stage and resumes if interrupted (choosing the
        checkpoint, say); called on every pipeline run once training is done."""

    def predict(self, config: ExperimentConfig, run: RunDir, split: str) -> Path:
        """Write ``predictions/<split>.jsonl`` and record the ``predict:<split>`` stage."""
        raise NotImplementedError

    def reuse_predictions(self, config: ExperimentConfig, run: RunDir, split: str) -> bool:
        """Take predictions made earlier (while choosing a checkpoint) instead of predicting."""
        return False

    def cost(self, config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
        """This provider's part of ``cost.json`` (training and prediction, $ and time)."""
        raise NotImplementedError

    def export(self, config: ExperimentConfig, run: RunDir, out: Path | None, dtype: str) -> Path:
        raise TunebenchError(f"{run.root}: provider {self.name} has no trained weights to export")

    def task_and_examples(
        self, config: ExperimentConfig, run: RunDir, split: str
    ) -> tuple[Task, list[Example]]:
        return get_task(config.task), load_prepared(run, split)


_CACHE: dict[str, Provider] = {}


def get_provider(name: str) -> Provider:
    """The provider called ``name`` (a one-line error naming the known ones)."""
    if name not in MODULES:
        raise TunebenchError(f"unknown provider '{name}' (known: {', '.join(MODULES)})")
    if name not in _CACHE:
        _CACHE[name] = importlib.import_module(MODULES[name]).PROVIDER
    return _CACHE[name]


def provider_of(config: ExperimentConfig) -> Provider:
    return get_provider(config.provider)
