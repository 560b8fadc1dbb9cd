"""The config reference: every key of experiment and study configs with its type, default,
allowed values and description, as Markdown (``tunebench config`` and the README's block)."""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel

from tunebench.config.experiment import (
    PROVIDER_SECTIONS,
    CostConfig,
    EndpointConfig,
    EnsembleConfig,
    ExperimentBase,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    OpenAIConfig,
    TaskConfig,
    TrackingConfig,
    TrainingConfig,
)
from tunebench.config.study import study_sections


def literal_values(annotation: Any) -> tuple[list[Any], bool]:
    """The values a field's ``Literal`` allows (also inside a union or Optional), and whether
    they are all it takes (False when the union also takes, say, a number or a list)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation)), True
    found: list[Any] = []
    exhaustive = True
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            found += [v for v in typing.get_args(arg) if v not in found]
        elif arg is not type(None):
            exhaustive = False
    return found, exhaustive


#: the class of each provider-specific section
SECTION_CLASSES: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "training": TrainingConfig,
    "openai": OpenAIConfig,
    "endpoint": EndpointConfig,
    "ensemble": EnsembleConfig,
}


def reference_markdown() -> str:
    """The config reference (every key, type, default and why) as Markdown tables: experiment
    configs, then study configs."""
    experiment: list[tuple[str, type[BaseModel]]] = [
        ("(top level)", ExperimentBase),
        ("task", TaskConfig),
        ("generation", GenerationConfig),
        ("cost", CostConfig),
        ("tracking", TrackingConfig),
        *((section, SECTION_CLASSES[section]) for section in PROVIDER_SECTIONS),
    ]
    study_intro = (
        "### Study configs\n\nA study (`tunebench run STUDY`) is systems x tasks: each cell is an "
        "experiment built from `defaults`, then the task's entry, then the system's (and its "
        "`per_task` entry), each a partial experiment config with the sections above; `grid` "
        "expands a system into one per point. `examples/study_*.yaml` are studies.\n"
    )
    return "\n".join([sections_markdown(experiment), study_intro, sections_markdown(study_sections())])


def sections_markdown(sections: list[tuple[str, type[BaseModel]]]) -> str:
    """One Markdown table per (title, model class); a field that is itself a listed section is
    left out of the first table."""
    nested = {name for name, _ in sections}
    top = sections[0][1]
    out = []
    for title, cls in sections:
        owners = PROVIDER_SECTIONS.get(title)
        only = f"\n\nOnly in runs of provider {' and '.join(f'`{o}`' for o in owners)}." if owners else ""
        out.append(f"#### `{title}`{only}\n\n| key | default | description |\n| --- | --- | --- |")
        for key, field in cls.model_fields.items():
            if cls is top and key in nested:
                continue
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                value = field.default_factory()  # type: ignore[call-arg]
                default = "none set" if isinstance(value, BaseModel) else f"`{value}`"
            else:
                default = f"`{field.default}`"
            description = field.description or ""
            values, exhaustive = literal_values(field.annotation)
            if values:
                listed = ", ".join(f"`{v}`" for v in values)
                description += f" Values: {listed}." if exhaustive else f" Or: {listed}."
            description = description.replace("|", "\\|")
            out.append(f"| `{key}` | {default.replace('|', chr(92) + '|')} | {description} |")
        out.append("")
    return "\n".join(out)
