"""MLflow through ``MlflowClient``: a local SQLite store under the runs folder by default
(``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``), so ``mlflow ui`` shows the runs with
no server; a study cell is a child run (``mlflow.parentRunId``) of the study's run."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.tracking.base import Tracker, require
from tunebench.tracking.replay import Scalar, TrackedRun

#: MLflow's limits: values of a parameter, and entities of one log_batch call
MAX_PARAM_CHARS = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def param_value(value: Scalar) -> str:
    return str(value)[:MAX_PARAM_CHARS]


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A tracking server that does not answer is skipped at once rather than retried for minutes."""
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise TunebenchError(f"MLflow server {uri} unreachable ({type(exc).__name__})") from None


class MlflowTracker(Tracker):
    name = "mlflow"
    modules = ("mlflow", "sqlalchemy", "alembic")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self.run_id: str | None = None
        self.end_ms: int | None = None  # the run's own end, so MLflow's duration is the run's

    @property
    def local_root(self) -> Path:
        return self.where.store.resolve() / "mlruns"

    @property
    def uri(self) -> str:
        return self.where.tracking_uri or f"sqlite:///{self.local_root / 'mlflow.db'}"

    def location(self) -> str:
        return f"{self.uri} experiment {self.where.project}"

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.uri.startswith(("http://", "https://")):
                check_reachable(self.uri)
            if not self.where.tracking_uri:
                self.local_root.mkdir(parents=True, exist_ok=True)
            self._client = require("mlflow.tracking", self.name).MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.where.project)
        if found is not None:
            return str(found.experiment_id)
        artifacts = None if self.where.tracking_uri else (self.local_root / "artifacts").as_uri()
        return str(self.client.create_experiment(self.where.project, artifact_location=artifacts))

    def start(self, run: TrackedRun, parent: dict[str, Any] | None) -> dict[str, Any]:
        tags = dict(run.tags)
        if parent:
            tags["mlflow.parentRunId"] = parent["run_id"]
        if run.description:
            tags["mlflow.note.content"] = run.description
        experiment = self.experiment_id()
        created = self.client.create_run(experiment, start_time=run.started_ms, run_name=run.name, tags=tags)
        self.run_id = created.info.run_id
        self.end_ms = run.finished_ms
        return {"run_id": self.run_id, "experiment_id": experiment}

    def log(self, run: TrackedRun) -> None:
        from mlflow.entities import Metric, Param

        stamp = int(time.time() * 1000)
        params = [Param(key, param_value(value)) for key, value in run.params.items()]
        metrics = [
            Metric(key, value, stamp, step) for step, values in run.steps for key, value in values.items()
        ]
        metrics += [Metric(key, value, stamp, run.last_step) for key, value in run.final.items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])
        for path, folder in run.artifacts:
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, end_time=self.end_ms)

    def discard(self, record: dict[str, Any]) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already gone
            self.client.delete_run(record["run_id"])
