"""Paths in a config file are read from the config file's folder, not the working directory.

Every ``task`` section of an experiment or study (top level, ``defaults``, ``tasks[]``,
``systems[]``, ``per_task``) has its data files, data mirror and JSON Schema file made
absolute against the folder of the YAML that names them, and a custom metric
``module:function`` whose ``module.py`` lies in that folder is named by that file's path (the
Python path is searched otherwise). Values given with ``--set`` stay as typed: they are
relative to the working directory, like every command-line path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Keys of a ``task`` section that hold a file or folder path.
PATH_KEYS = ("train_file", "validation_file", "test_file", "data_dir", "json_schema")


def resolve_config_paths(data: Any, config_path: str | Path) -> Any:
    """``data`` (a loaded YAML mapping) with every ``task`` section's paths resolved in place."""
    base = Path(config_path).resolve().parent
    for section in task_sections(data):
        for key in PATH_KEYS:
            value = section.get(key)
            if isinstance(value, str) and value.strip():
                section[key] = str(resolve_path(value, base))
        metrics = section.get("metrics")
        if isinstance(metrics, list):
            section["metrics"] = [beside_config(m, base) if isinstance(m, str) else m for m in metrics]
    return data


def task_sections(node: Any) -> list[dict[str, Any]]:
    """Every mapping found under a ``task`` key, at any depth."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "task" and isinstance(value, dict):
                found.append(value)
            found.extend(task_sections(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(task_sections(item))
    return found


def resolve_path(value: str, base: Path) -> Path:
    """``value`` (``~`` expanded) made absolute against ``base`` when relative."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def beside_config(name: str, base: Path) -> str:
    """A metric ``module:function`` (or ``module.function``) whose module is a ``.py`` file in
    ``base`` becomes ``<base>/module.py:function``; any other name is returned unchanged."""
    if ":" in name:
        module, _, function = name.partition(":")
    elif "." in name:
        module, _, function = name.rpartition(".")
    else:
        return name
    if not module or not function or module.endswith(".py"):
        return name
    candidate = base / (module.replace(".", "/") + ".py")
    return f"{candidate}:{function}" if candidate.is_file() else name
