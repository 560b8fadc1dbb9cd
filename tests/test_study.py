"""Study configs: merging order, grid expansion, strict errors, the example studies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.config.study import expand, grid_points, load_study
from tunebench.errors import TunebenchError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    return path


STUDY = """
name: s
runs_dir: {runs}
defaults:
  training: {{max_steps: 7, learning_rate: 1.0e-3}}
  model: {{name: smollm2-135m}}
tasks:
  - sql
  - name: viggo
    training: {{max_steps: 9}}
systems:
  - {{name: base, provider: base}}
  - name: lora
    provider: local
    training: {{learning_rate: 2.0e-4}}
    per_task: {{viggo: {{training: {{max_steps: 11}}}}}}
    grid:
      lora.r: [8, 16]
      lora.target_modules: {{qkvo: [q_proj, k_proj, v_proj, o_proj], all: all-linear}}
  - name: gpt
    provider: openai
    tasks: [viggo]
  - {{name: plain, provider: local, tasks: [viggo]}}
"""


def test_expand_merges_in_order_and_names_cells(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, STUDY.format(runs=tmp_path / "runs")))
    cells = {c.name: c for c in expand(study, {"generation.max_new_tokens": 5})}
    assert list(cells) == [
        "base-sql", "base-viggo",
        "lora-r8-qkvo-sql", "lora-r8-qkvo-viggo", "lora-r8-all-sql", "lora-r8-all-viggo",
        "lora-r16-qkvo-sql", "lora-r16-qkvo-viggo", "lora-r16-all-sql", "lora-r16-all-viggo",
        "gpt-viggo", "plain-viggo",
    ]  # fmt: skip
    base_sql, lora_viggo = cells["base-sql"].config, cells["lora-r16-all-viggo"].config
    assert not hasattr(base_sql, "training")  # the shared training section is for LoRA cells
    plain = cells["plain-viggo"].config
    assert plain.training.learning_rate == 1e-3 and plain.training.max_steps == 9  # task beats defaults
    assert lora_viggo.training.learning_rate == 2e-4  # system beats defaults
    assert lora_viggo.training.max_steps == 11  # per_task beats task
    assert cells["lora-r16-qkvo-sql"].config.training.max_steps == 7
    assert lora_viggo.lora.r == 16 and lora_viggo.lora.target_modules == "all-linear"
    assert cells["lora-r8-qkvo-sql"].config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert all(c.config.generation.max_new_tokens == 5 for c in cells.values())  # --set beats all
    assert all(c.config.run_dir == tmp_path / "runs" / name for name, c in cells.items())
    assert cells["gpt-viggo"].config.provider == "openai" and cells["gpt-viggo"].system == "gpt"
    assert cells["lora-r8-all-sql"].base_system == "lora" and cells["lora-r8-all-sql"].task == "sql"


def test_grid_labels() -> None:
    assert [label for label, _ in grid_points({"lora.r": [8, 16]})] == ["r8", "r16"]
    assert grid_points({"lora.dropout": [0.1]}) == [("dropout0.1", {"lora.dropout": 0.1})]
    assert grid_points({}) == [("", {})]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            "systems:\n  - {name: a, provider: local, training: {lr: 1}}\n",
            r"system 'a', task 'sql': training.lr: unknown key",
        ),
        ("systems:\n  - {name: a, provider: local, tasks: [nope]}\n", r"unknown task 'nope'"),
        (
            "systems:\n  - {name: a, provider: local}\n  - {name: a, provider: base}\n",
            r"duplicate system name 'a'",
        ),
        ("systems:\n  - {name: a, provider: local, grid: {lr: [1]}}\n", r"grid key 'lr' must start with"),
        ("systems:\n  - {name: 'a b', provider: local}\n", r"not a valid name"),
        ("systems:\n  - {name: a, provider: local, colour: red}\n", r"systems.0.colour: unknown key"),
        ("systems: []\n", r"systems"),
    ],
)
def test_bad_studies_are_one_line_errors(tmp_path: Path, patch: str, message: str) -> None:
    path = write(tmp_path, "name: s\ntasks: [sql]\n" + patch)
    with pytest.raises(TunebenchError, match=message) as info:
        expand(load_study(path), source=str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_example_studies_expand() -> None:
    gpu = {c.name: c.config for c in expand(load_study(REPO / "examples/study_gpu.yaml"))}
    assert {
        "base-sql",
        "base-viggo",
        "lora-qkvo-r8-sql",
        "lora-all-linear-r16-viggo",
        "gpt-3.5-viggo",
    } <= set(gpu)
    recipe = gpu["lora-qkvo-r8-sql"]
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) == (8, 16, 0.05)
    assert recipe.training.learning_rate == 3e-4 and recipe.training.batch_size == 128
    assert recipe.training.max_length == 512 and recipe.training.early_stopping_patience
    assert recipe.task.validation == "held_out" and recipe.model.name == "qwen2.5-coder-1.5b"
    assert gpu["gpt-3.5-viggo"].openai.n_epochs == 2 and gpu["gpt-3.5-sql"].openai.n_epochs == "auto"
    demo = {c.name: c.config for c in expand(load_study(REPO / "examples/study_cpu_demo.yaml"))}
    assert set(demo) == {"base-sql", "base-viggo", "lora-sql", "lora-viggo"}
    assert all(c.model.name == "smollm2-135m" for c in demo.values())
