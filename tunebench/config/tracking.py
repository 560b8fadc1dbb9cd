"""The ``tracking`` config section: which experiment trackers a finished run is logged to."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunebench.config.base import Strict

TrackerName = Literal["mlflow", "wandb", "tensorboard", "trackio"]


class TrackingConfig(Strict):
    """Experiment trackers that receive each finished run (in addition to the run directory and
    `tunebench report`, never instead of them)."""

    report_to: list[TrackerName] = Field(
        default_factory=list,
        description="Trackers to log each finished run to: its config as parameters, the loss curve "
        "step by step, the final metrics with their CIs, the cost and the files. A study logs one parent "
        "run with a child run per cell. Each needs its extra, e.g. `pip install 'tunebench[mlflow]'`. "
        "Empty: nothing is logged anywhere but the run directory.",
    )
    project: str = Field(
        "tunebench",
        description="MLflow experiment, W&B project and Trackio project the runs go to; set one per "
        "line of work to keep its runs together and apart from others.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server or store (e.g. `http://127.0.0.1:5000`, "
        "`sqlite:///mlflow.db`). Default: a local store `mlruns/` in the runs folder, which "
        "`mlflow ui --backend-store-uri sqlite:///<runs>/mlruns/mlflow.db` shows with no server running.",
    )
