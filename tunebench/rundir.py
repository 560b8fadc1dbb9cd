"""The run directory: every stage reads and writes files here, so any stage can be rerun.

::

    runs/<name>/
      config.yaml            resolved experiment config
      manifest.json          versions, host, git commit, and one record per finished stage
      prepared/<split>.jsonl rendered prompts and targets (+ stats.json)
      adapter/               LoRA adapter (safetensors)          [training, method lora]
      model/                 every trained weight (safetensors)  [training, method full]
      checkpoints/step-N/    resumable training state            [training]
      metrics.jsonl          loss curve: one row per train/validation log
      train_summary.json     steps, tokens, wall time, GPU, peak memory, best validation loss
      predictions/<split>.jsonl                                  [inference]
      eval/<split>/metrics.json, per_example.jsonl               [evaluation]
      cost.json                                                  [cost]
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.config import (
    EXPERIMENTS,
    PROVIDER_SECTIONS,
    ExperimentConfig,
    dump_config,
    load_yaml,
    parse_model,
)
from tunebench.errors import TunebenchError
from tunebench.io import atomic_write, read_json, write_json

#: Settings that change how a run executes, not what it computes: a rerun may change them.
OPERATIONAL_KEYS = {
    "runs_dir": None,
    "generation": {"batch_size", "cache_implementation"},
    "training": {"fsdp"},  # how, not what: FSDP and DDP give the same run
    "openai": {"yes", "poll_interval_s", "max_concurrency"},
    "tracking": None,  # where a run is logged to, not what it computes
}


def comparable(config: ExperimentConfig) -> dict[str, Any]:
    """The config without :data:`OPERATIONAL_KEYS`, for deciding whether a run is the same run."""
    data = config.model_dump()
    data["generation"]["seed"] = config.sampling_seed  # the seed in effect, however it was given
    for section, keys in OPERATIONAL_KEYS.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data.get(section, {}).pop(key, None)
    return data


def changed_values(
    before: dict[str, Any], after: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every key whose value differs (nested mappings walked)."""
    out = []
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key), after.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            out += changed_values(old, new, dotted + ".")
        elif old != new:
            out.append((dotted, old, new))
    return out


def config_differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key: old in the run, new now`` for every dotted key whose value differs."""
    return [f"{key}: {old!r} in the run, {new!r} now" for key, old, new in changed_values(before, after)]


#: keys whose change only means scoring the predictions again
SCORING_KEYS = ("task.metrics", "task.json_schema")
#: stages a changed key makes stale, beyond which nothing finished is touched
SCORING_STAGES = ("evaluate:", "cost")
PREDICTION_STAGES = ("predict:", "evaluate:", "cost")
TRAINING_STAGES = ("train", "choose", "predict:", "evaluate:", "cost")


def longer_training(key: str, old: Any, new: Any) -> bool:
    """More optimizer steps or epochs than the run trained: training continues from its last
    checkpoint (the schedule is then stretched to the new length from there on)."""
    return (
        key in ("training.max_steps", "training.epochs")
        and isinstance(old, int | float)
        and isinstance(new, int | float)
        and new > old
    )


def stale_stages(run: RunDir, config: ExperimentConfig) -> tuple[str, ...] | None:
    """The stage prefixes a changed config makes stale in ``run``, so they run again: () when
    nothing changed or nothing has finished yet, None when the change invalidates finished
    training (model, data, LoRA, learning rate...) and the run directory must refuse it."""
    changes = changed_values(comparable(run.load_config()), comparable(config))
    if not changes or not run.manifest().get("stages"):
        return ()
    stale: set[str] = set()
    for key, old, new in changes:
        if key in SCORING_KEYS:
            stale |= set(SCORING_STAGES)
        elif key.startswith("generation.") or key == "eval_splits":
            stale |= set(PREDICTION_STAGES)
        elif longer_training(key, old, new):
            stale |= set(TRAINING_STAGES)
        else:
            return None
    return tuple(sorted(stale))


#: keys older run directories record that no longer exist: how a run executed, not what it
#: computed, so a finished run still loads (a new config naming them is refused)
RETIRED_KEYS = {"training": ("cuda_graphs", "overlap_steps", "num_workers")}


def without_retired_keys(data: Any) -> Any:
    """A stored config as today's schema reads it: retired keys dropped and, from run
    directories written when every config carried every section, the sections of other
    providers dropped (a run that trained nothing but set ``training.seed`` sampled with it:
    that seed becomes its ``generation.seed``)."""
    if not isinstance(data, dict):
        return data
    for section, keys in RETIRED_KEYS.items():
        for key in keys:
            (data.get(section) or {}).pop(key, None)
    provider = data.get("provider", "local")
    experiment = EXPERIMENTS.get(provider)
    own = experiment.own_sections if experiment else ()
    seed = (data.get("training") or {}).get("seed")
    for section in PROVIDER_SECTIONS:
        if section not in own and section in data:
            data.pop(section)
    generation = data.setdefault("generation", {})
    if "training" not in own and seed is not None and generation.get("seed") is None:
        generation["seed"] = seed
    return data


#: The folder training writes, by ``training.method`` (in the run and in each checkpoint).
TRAINED_FOLDER = {"lora": "adapter", "full": "model"}


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def prepared(self, split: str) -> Path:
        return self.root / "prepared" / f"{split}.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def model_dir(self) -> Path:
        """The fully fine-tuned weights (``training.method: full``)."""
        return self.root / TRAINED_FOLDER["full"]

    def trained_dir(self, method: str) -> Path:
        """What training produced: ``adapter/`` (LoRA) or ``model/`` (full fine-tuning); the
        same name inside each ``checkpoints/step-N/``."""
        return self.root / TRAINED_FOLDER[method]

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.root / "train_summary.json"

    def predictions(self, split: str) -> Path:
        return self.root / "predictions" / f"{split}.jsonl"

    def eval_dir(self, split: str) -> Path:
        return self.root / "eval" / split

    @property
    def cost_path(self) -> Path:
        return self.root / "cost.json"

    # --- config and manifest ------------------------------------------------------------
    def write_config(self, config: ExperimentConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.config_path) as handle:
            handle.write(dump_config(config))

    def load_config(self) -> ExperimentConfig:
        if not self.config_path.is_file():
            raise TunebenchError(f"{self.root}: not a run directory (no config.yaml)")
        data = without_retired_keys(load_yaml(self.config_path))
        return parse_model(ExperimentConfig, data, str(self.config_path))

    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return read_json(self.manifest_path)
        return {"created": now(), "environment": environment(), "stages": {}}

    def record_stage(self, stage: str, **info: Any) -> None:
        """Mark ``stage`` finished (with ``info``) in the manifest."""
        manifest = self.manifest()
        manifest.setdefault("stages", {})[stage] = {"finished": now(), **info}
        write_json(self.manifest_path, manifest)

    def forget_stages(self, stages: list[str] | tuple[str, ...]) -> None:
        """Mark ``stages`` unfinished again (their inputs changed): the next run redoes them. A
        name ending in ``:`` stands for every split's stage (``predict:``)."""
        manifest = self.manifest()
        done = manifest.get("stages", {})
        for name in list(done):
            if any(name == s or (s.endswith(":") and name.startswith(s)) for s in stages):
                done.pop(name)
        write_json(self.manifest_path, manifest)

    def stage_done(self, stage: str) -> bool:
        return stage in self.manifest().get("stages", {})


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the tunebench checkout, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded so a report can say what produced it."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("tunebench", "torch", "transformers", "peft", "accelerate", "openai"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": git_commit(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return info


def differences_from_run(run: RunDir, config: ExperimentConfig) -> list[str]:
    """How ``config`` differs from the config the run directory holds (operational keys aside)."""
    return config_differences(comparable(run.load_config()), comparable(config))
