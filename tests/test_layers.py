"""The package's layers depend one way: the import-linter contract in pyproject.toml holds
(imports inside functions count), and a unit that imports a unit above it fails this test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run(
        [exe, "--config", str(cwd / "pyproject.toml")],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def test_the_layers_contract_is_kept() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the package where the config layer reaches up into
    the pipeline from inside a function is refused, naming the import."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "tunebench", copy / "tunebench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    config = copy / "tunebench" / "config" / "experiment.py"
    config.write_text(
        config.read_text(encoding="utf-8")
        + "\n\ndef _upward() -> None:\n    from tunebench.pipeline import open_run  # noqa: F401\n",
        encoding="utf-8",
    )
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "tunebench.config is not allowed to import tunebench.pipeline" in result.stdout


@pytest.mark.parametrize("unit", ["tunebench.evaluation"])
def test_evaluation_is_a_leaf(unit: str) -> None:
    """evaluation imports nothing of tunebench but errors and io."""
    import ast

    root = REPO / unit.replace(".", "/")
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunebench."):
                target = node.module.split(".")[1]
                assert target in ("errors", "io", "evaluation"), f"{path}:{node.lineno} imports {node.module}"
