"""Study configs: a list of systems x a list of tasks, each cell one experiment.

A study YAML names the systems to compare (a base model zero-shot, LoRA fine-tunes, OpenAI
fine-tunes, any OpenAI-compatible endpoint, ensembles) and the tasks to compare them on. Every
(system, task) cell becomes an experiment config named ``<system>-<task>`` under the study's
``runs_dir`` (:func:`expand`); :mod:`tunebench.study` runs them.

Sections merge in this order, later winning: ``defaults`` < the task entry < the system <
the system's ``per_task`` entry for that task < a grid point < ``--set`` overrides.

A system's ``grid`` expands it into named variants, e.g. ``grid: {lora.r: [8, 16]}`` on
system ``lora`` gives ``lora-r8`` and ``lora-r16``; several keys give their cartesian product.
"""

from __future__ import annotations

import copy
import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunebench.config.experiment import (
    EXPERIMENTS,
    PROVIDER_SECTIONS,
    ExperimentConfig,
    Strict,
    TaskConfig,
    load_yaml,
    parse_model,
    set_dotted,
)
from tunebench.config.paths import resolve_config_paths
from tunebench.errors import TunebenchError

#: providers whose runs an ensemble can pool: they generate their own candidates here
MEMBER_PROVIDERS = tuple(name for name, cls in EXPERIMENTS.items() if cls.ensemble_member)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
SECTIONS = (
    "task",
    "model",
    "lora",
    "training",
    "generation",
    "openai",
    "endpoint",
    "ensemble",
    "cost",
    "tracking",
)
SectionDict = dict[str, Any]


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"'{value}' is not a valid name (letters, digits and _ . + = - only)")
    return value


class Sections(Strict):
    """Partial experiment sections; validated when merged into each cell's ExperimentConfig."""

    task: SectionDict | None = Field(None, description="Keys of the experiment's `task` section.")
    model: SectionDict | None = Field(None, description="Keys of the experiment's `model` section.")
    lora: SectionDict | None = Field(None, description="Keys of the experiment's `lora` section.")
    training: SectionDict | None = Field(None, description="Keys of the experiment's `training` section.")
    generation: SectionDict | None = Field(None, description="Keys of the experiment's `generation` section.")
    openai: SectionDict | None = Field(None, description="Keys of the experiment's `openai` section.")
    endpoint: SectionDict | None = Field(None, description="Keys of the experiment's `endpoint` section.")
    ensemble: SectionDict | None = Field(
        None, description="Keys of the experiment's `ensemble` section (members: system names of this study)."
    )
    cost: SectionDict | None = Field(None, description="Keys of the experiment's `cost` section.")
    tracking: SectionDict | None = Field(None, description="Keys of the experiment's `tracking` section.")
    eval_splits: list[Literal["validation", "test"]] | None = Field(
        None, description="Splits to predict and score (default: the experiment's, `[test]`)."
    )

    def as_patch(self) -> dict[str, Any]:
        """The set sections as a nested dict (None means: not set here)."""
        keys = {*SECTIONS, "eval_splits"}
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k in keys}


class TaskEntry(Sections):
    """One task of the study: a name for tables and run names, plus its settings."""

    name: str = Field(
        ...,
        description="Label of the task in run names and the report (e.g. `sql`); also the task "
        "when `task.name` is not set.",
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value)


class SystemEntry(Sections):
    """One system: a provider, a model and how it is adapted."""

    name: str = Field(..., description="Label in run names and the report (e.g. `lora-1.5b`).")
    description: str | None = Field(None, description="One line shown in the report.")
    provider: Literal["local", "openai", "endpoint", "base", "ensemble"] = Field(
        ...,
        description="`base` zero/k-shot, `local` LoRA, `openai` fine-tuning job, `endpoint` server, "
        "`ensemble` a vote over other systems' candidates (runs after them).",
    )
    tasks: list[str] | None = Field(
        None, description="Only these task labels (default: every task of the study)."
    )
    per_task: dict[str, Sections] = Field(
        default_factory=dict,
        description="Settings for one task only, e.g. `{viggo: {openai: {n_epochs: 2}}}` (the study's).",
    )
    grid: dict[str, list[Any] | dict[str, Any]] = Field(
        default_factory=dict,
        description="Sweep: dotted key -> list of values (labels made from key and value, e.g. "
        "`r16`) or mapping label -> value. Expands into one system per point of the product.",
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: dict[str, Any]) -> dict[str, Any]:
        for key, values in grid.items():
            if key.split(".", 1)[0] not in SECTIONS:
                raise ValueError(f"grid key '{key}' must start with one of {', '.join(SECTIONS)}")
            if not values:
                raise ValueError(f"grid key '{key}' has no values")
        return grid


class SignificanceConfig(Strict):
    """Paired significance tests between systems on the same examples."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Level at which a difference is called significant.")


class StudyConfig(Strict):
    """A study: systems x tasks, shared defaults, where runs and the report go."""

    name: str = Field(..., description="Study name (report title).")
    description: str | None = Field(None, description="A paragraph shown at the top of the report.")
    runs_dir: str | None = Field(
        None,
        description="Parent folder of the cells' run directories (default: runs/<name>, relative to "
        "the working directory, like an experiment's runs_dir).",
    )
    report_dir: str | None = Field(None, description="Where the report goes (default: <runs_dir>/report).")
    defaults: Sections = Field(
        default_factory=Sections, description="Sections shared by every cell (overridden by tasks/systems)."
    )
    tasks: list[TaskEntry | str] = Field(
        ..., min_length=1, description="Tasks; a bare string is a built-in task."
    )
    systems: list[SystemEntry] = Field(..., min_length=1, description="Systems to compare.")
    significance: SignificanceConfig = Field(default_factory=SignificanceConfig)
    reference: bool = Field(
        True,
        description="Show the original study's published costs as a reference row (quoted, not measured).",
    )
    wrong_examples: int = Field(5, ge=0, description="Wrong predictions shown per system and task.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @model_validator(mode="after")
    def _unique_and_known(self) -> StudyConfig:
        labels = [t if isinstance(t, str) else t.name for t in self.tasks]
        _unique(labels, "task")
        _unique([s.name for s in self.systems], "system")
        for system in self.systems:
            for label in [*(system.tasks or []), *system.per_task]:
                if label not in labels:
                    raise ValueError(f"system '{system.name}' names unknown task '{label}'")
        return self

    @property
    def task_entries(self) -> list[TaskEntry]:
        return [TaskEntry(name=t) if isinstance(t, str) else t for t in self.tasks]

    def resolved_runs_dir(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else Path("runs") / self.name

    def resolved_report_dir(self) -> Path:
        return Path(self.report_dir) if self.report_dir else self.resolved_runs_dir() / "report"


def study_sections() -> list[tuple[str, type[Strict]]]:
    """The study config's parts, for the config reference (the first is the top level)."""
    return [
        ("(study top level)", StudyConfig),
        ("tasks[]", TaskEntry),
        ("systems[]", SystemEntry),
        ("significance", SignificanceConfig),
    ]


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} name '{name}'")
        seen.add(name)


@dataclass(frozen=True)
class Cell:
    """One (system variant, task) experiment of a study."""

    system: str
    base_system: str
    task: str
    description: str | None
    config: ExperimentConfig

    @property
    def name(self) -> str:
        return self.config.name


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML (one-line errors naming the key)."""
    data = load_yaml(path)
    if isinstance(data, dict) and "task" in data and not ("tasks" in data or "systems" in data):
        raise TunebenchError(
            f"{path} is a single experiment config, not a study: `tunebench run` or `train` take "
            "it; `tunebench report` takes a study config or a folder of run directories"
        )
    return parse_model(StudyConfig, resolve_config_paths(data, path), str(path))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _label(key: str, value: Any) -> str:
    """Variant label of a grid value: ``lora.r=16`` -> ``r16``, ``all-linear`` -> ``all-linear``."""
    last = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        return f"{last}-{str(value).lower()}"
    if isinstance(value, int | float):
        return f"{last}{value}"
    if isinstance(value, str):
        return re.sub(r"[^A-Za-z0-9_.+=-]", "_", value)
    if isinstance(value, list):
        return "+".join(_label(key, v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", str(value))


def variant_name(system: SystemEntry, label: str) -> str:
    """The name of one grid point of a system (the system's own name without a grid)."""
    return f"{system.name}-{label}" if label else system.name


def grid_points(grid: dict[str, list[Any] | dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The cartesian product of a grid as (label, {dotted key: value}) pairs."""
    if not grid:
        return [("", {})]
    axes = []
    for key, values in grid.items():
        if isinstance(values, dict):
            axes.append([(_check_name(str(label)), key, value) for label, value in values.items()])
        else:
            axes.append([(_label(key, value), key, value) for value in values])
    points = []
    for combo in itertools.product(*axes):
        label = "-".join(part for part, _, _ in combo)
        points.append((label, {key: value for _, key, value in combo}))
    return points


def expand(study: StudyConfig, overrides: dict[str, Any] | None = None, source: str = "study") -> list[Cell]:
    """Every cell of the study as a validated ExperimentConfig, in systems x tasks order."""
    runs_dir = str(study.resolved_runs_dir())
    cells: list[Cell] = []
    names: set[str] = set()
    variants = {
        variant_name(system, label): system
        for system in study.systems
        for label, _ in grid_points(system.grid)
    }
    for system in study.systems:
        if system.ensemble is not None and "ensemble" not in EXPERIMENTS[system.provider].own_sections:
            raise TunebenchError(
                f"{source}: system '{system.name}': an 'ensemble' section goes with provider ensemble"
            )
        for label, point in grid_points(system.grid):
            variant = variant_name(system, label)
            for task in study.task_entries:
                if system.tasks is not None and task.name not in system.tasks:
                    continue
                data = _cell_data(study, system, task, point, overrides)
                if "name" not in data.get("task", {}):  # a label that is no task, and no task.name
                    known = ", ".join(typing.get_args(TaskConfig.model_fields["name"].annotation))
                    raise TunebenchError(
                        f"{source}: task '{task.name}' is not a task ({known}); a task "
                        "with another label sets task.name"
                    )
                data.update(name=f"{variant}-{task.name}", runs_dir=runs_dir, provider=system.provider)
                where = f"{source}: system '{variant}', task '{task.name}'"
                _name_members(data, variants, task.name, where)
                cfg = parse_model(ExperimentConfig, data, where, overrides)
                if cfg.name in names:
                    raise TunebenchError(f"{where}: two cells are both named '{cfg.name}'")
                names.add(cfg.name)
                cells.append(Cell(variant, system.name, task.name, system.description, cfg))
    return cells


def _name_members(data: dict[str, Any], variants: dict[str, SystemEntry], task: str, where: str) -> None:
    """An ensemble's members, system names of the study, become those systems' cells for ``task``
    (a member with a '/' is a run directory elsewhere, taken as it is)."""
    if not isinstance(data.get("ensemble"), dict):  # other providers' cells have none by now
        return
    members = (data.get("ensemble") or {}).get("members")
    if not isinstance(members, list):
        return  # the config's own validation names what is missing
    named = []
    for member in members:
        if isinstance(member, str) and "/" in member:
            named.append(member)
            continue
        system = variants.get(member) if isinstance(member, str) else None
        if system is None:
            raise TunebenchError(
                f"{where}: ensemble member '{member}' is not a system of the study (its systems: "
                f"{', '.join(variants)}); a run directory elsewhere is given as a path with a '/'"
            )
        if system.tasks is not None and task not in system.tasks:
            raise TunebenchError(f"{where}: ensemble member '{member}' has no '{task}' cell")
        if not EXPERIMENTS[system.provider].ensemble_member:
            raise TunebenchError(
                f"{where}: ensemble member '{member}' has provider '{system.provider}'; members must be "
                f"{' or '.join(MEMBER_PROVIDERS)} systems"
            )
        named.append(f"{member}-{task}")
    data["ensemble"]["members"] = named


def _cell_data(
    study: StudyConfig,
    system: SystemEntry,
    task: TaskEntry,
    point: dict[str, Any],
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    known = typing.get_args(TaskConfig.model_fields["name"].annotation)
    data: dict[str, Any] = {"task": {"name": task.name}} if task.name in known else {}
    for patch in (
        study.defaults.as_patch(),
        task.as_patch(),
        system.as_patch(),
        system.per_task[task.name].as_patch() if task.name in system.per_task else {},
    ):
        data = _merge(data, patch)
    for dotted, value in {**point, **(overrides or {})}.items():
        set_dotted(data, dotted, copy.deepcopy(value))
    own_patch = {
        **system.as_patch(),
        **(system.per_task[task.name].as_patch() if task.name in system.per_task else {}),
    }
    return keep_own_sections(data, system.provider, set(own_patch) | {k.split(".")[0] for k in point})


def keep_own_sections(data: dict[str, Any], provider: str, explicit: set[str]) -> dict[str, Any]:
    """Drop the sections of other providers that a cell got from shared settings (``defaults``,
    the task entry, ``--set``): a study's ``lora`` defaults are meant for its LoRA systems. A
    section the system itself sets stays, and its config refuses it by name. A shared
    ``training.seed`` also seeds the sampling of cells that train nothing."""
    experiment = EXPERIMENTS.get(provider)
    own = experiment.own_sections if experiment else ()
    for section in PROVIDER_SECTIONS:
        if section in data and section not in own and section not in explicit:
            dropped = data.pop(section)
            seed = dropped.get("seed") if section == "training" and isinstance(dropped, dict) else None
            if seed is not None and "training" not in own:
                generation = data.setdefault("generation", {})
                if isinstance(generation, dict) and generation.get("seed") is None:
                    generation["seed"] = seed
    return data
