"""What a new user meets following the README: --help text, `init`'s next steps, and a study run
on the free cells only (no OpenAI key), reported after dropping the OpenAI system."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests import cli
from tests.tiny import CHATML, build_tiny_model

LABELS = {"positive": ["great", "loved it", "works well"], "negative": ["broke", "awful", "refund"]}


def tunebench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli.tunebench(*args, cwd=cwd, COLUMNS="200", OPENAI_API_KEY=None)


def write_chat_file(path: Path, copies: int = 5) -> Path:
    """A small sentiment file in OpenAI's chat format (30 rows)."""
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Classify the review's sentiment."},
                {"role": "user", "content": f"{text} #{n}"},
                {"role": "assistant", "content": label},
            ]
        }
        for n in range(copies)
        for label, texts in LABELS.items()
        for text in texts
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_evaluate_help_shows_the_sql_limits_defaults(tmp_path: Path) -> None:
    # rich reads "[default: 10]" in a help string as markup and drops it
    result = tunebench("evaluate", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    for shown in ("(default: 10)", "(default: 128)", "(default: 512)"):
        assert shown in help_text


def test_init_names_the_free_command_and_the_billed_one(tmp_path: Path) -> None:
    data = write_chat_file(tmp_path / "data.jsonl")
    result = tunebench("init", str(data), "--model", "smollm2-135m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tunebench run study.yaml --cells 'base-*' --cells 'lora-*'\n" in result.stderr
    assert "tunebench run study.yaml --yes\n" in result.stderr
    assert "run it with: tunebench run study.yaml\n" not in result.stderr


def test_free_cells_then_a_report_without_the_openai_system(tmp_path: Path, data_dir: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny", data_dir, chat_template=CHATML)
    data = write_chat_file(tmp_path / "data.jsonl")
    assert tunebench("init", str(data), "--model", str(model), cwd=tmp_path).returncode == 0
    free = tunebench(
        "run", "study.yaml", "--cells", "base-*", "--set", "generation.max_new_tokens=4", cwd=tmp_path
    )
    assert free.returncode == 0, free.stderr
    assert "report not written: 2 cells not finished yet (lora-data, openai-data); run them" in free.stderr
    assert "drop their systems from study.yaml and run `tunebench report study.yaml`" in free.stderr
    refused = tunebench("report", "study.yaml", cwd=tmp_path)
    assert refused.returncode == 2
    assert "drop the system from study.yaml to report without it" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # the advice works: without the unfinished systems the report is written
    study = yaml.safe_load((tmp_path / "study.yaml").read_text(encoding="utf-8"))
    study["systems"] = [s for s in study["systems"] if s["name"] == "base"]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")
    report = tunebench("report", "study.yaml", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "runs" / "data" / "report" / "report.md").read_text(encoding="utf-8")
    assert "| base | 6 |" in md


def test_openai_commands_on_a_local_config_are_one_line_errors(tmp_path: Path) -> None:
    config = Path(__file__).parents[1] / "examples" / "cpu_quick.yaml"
    for command in ("estimate", "export", "train"):
        result = tunebench("openai", command, str(config), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: {config}: provider is local; `tunebench openai` needs a config of provider: openai "
            "(`tunebench estimate` prices any config, OpenAI cells included)"
        ]
    assert not (tmp_path / "runs").exists()  # refused before the run directory is prepared


def test_init_names_the_bad_line_of_the_users_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data = write_chat_file(tmp_path / "data.jsonl")
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    no_answer = {"messages": [{"role": "user", "content": "hi"}]}
    data.write_text("".join(lines[:5]) + json.dumps(no_answer) + "\n" + "".join(lines[5:]), encoding="utf-8")
    bad = tunebench("init", "data.jsonl", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: data.jsonl:6: no assistant message"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]
    # too few rows for OpenAI once the test share is held out: refused, and no split files left
    short = tmp_path / "short.jsonl"
    short.write_text("".join(lines[:3]), encoding="utf-8")
    refused = tunebench("init", "short.jsonl", "--out", "short.yaml", cwd=tmp_path)
    assert refused.returncode == 2 and "OpenAI fine-tuning needs at least 10" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "short.jsonl"]
    # the fixed file needs no clean-up first
    write_chat_file(data)
    fixed = tunebench("init", "data.jsonl", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert {"data.train.jsonl", "data.test.jsonl", "study.yaml"} <= {p.name for p in tmp_path.iterdir()}
