"""Hostile-input corpus: each row is an input a careless or hostile user may give, and the clean
outcome it must get (a bounded query failure, or a one-line ``error:`` with exit status 2).

Real Spider databases, real files and the real CLI as a subprocess; nothing of tunebench mocked.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_foundation import cli
from tunebench.cli import parse_overrides
from tunebench.config.study import expand, load_study
from tunebench.errors import TunebenchError
from tunebench.evaluation import evaluate
from tunebench.evaluation.sql import sandbox
from tunebench.evaluation.sql.sandbox import open_readonly, run_query
from tunebench.io import read_jsonl, write_jsonl

GOLD = "SELECT count(*) FROM singer"
SINGER_CONTEXT = "CREATE TABLE singer (Singer_ID int, Name text, Country text, Age int)"
ZEROBLOB = (
    "SELECT zeroblob(9000000), zeroblob(9000000), zeroblob(9000000) "
    "FROM singer a, singer b, singer c, singer d, singer e"
)
PRINTF = "SELECT length(printf('%.*c', 2000000000, 'x'))"
SEPARATORS = "a\u2028b\u0085c\u2029d"  # valid raw inside a JSON string; str.splitlines splits on them


def predictions_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows written with raw (not escaped) non-ASCII characters, as a user's tool may write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sql_row(
    row_id: str, prediction: str = GOLD, db_id: str = "concert_singer", **extra: Any
) -> dict[str, Any]:
    return {"id": row_id, "db_id": db_id, "gold": GOLD, "prediction": prediction, **extra}


@pytest.fixture
def singer_db(spider_db_dir: Path) -> sqlite3.Connection:
    conn = open_readonly(spider_db_dir / "concert_singer" / "concert_singer.sqlite")
    yield conn
    conn.close()


# --- 1. SQL execution: bounded in time and memory ---------------------------------------------

HOSTILE_QUERIES = [
    # (query, expected kind, error fragment)
    (ZEROBLOB, "too_large", "result over 128 MB"),
    (PRINTF, "runtime_error", "printf width or precision over"),
    ("SELECT printf('%2000000000c', 'x')", "runtime_error", "printf width or precision over"),
    ("SELECT format('%.*c', 2000000000, 'x')", "runtime_error", "printf width or precision over"),
    ("SELECT group_concat(zeroblob(9000000)) FROM singer a, singer b", "runtime_error", "too big"),
    (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c",
        "timeout",
        "timed out after 1 s",
    ),
]


@pytest.mark.parametrize(("query", "kind", "fragment"), HOSTILE_QUERIES)
def test_hostile_query_fails_cleanly_within_the_timeout(
    singer_db: sqlite3.Connection, query: str, kind: str, fragment: str
) -> None:
    start = time.monotonic()
    result = run_query(singer_db, query, timeout_s=1.0, max_rows=100_000)
    elapsed = time.monotonic() - start
    assert (result.rows, result.kind) == (None, kind), result
    assert fragment in (result.error or "")
    assert elapsed < 2.0, elapsed  # the timeout plus at most a second
    assert run_query(singer_db, GOLD, 1.0, 10).rows == [(6,)]  # the connection is still usable


def test_sqlite_heap_limit_fails_a_query_that_needs_more(spider_db_dir: Path) -> None:
    """In a process of its own: SQLite's heap limit is process-wide and PRAGMA hard_heap_limit
    only ever lowers it, so a low limit set here would stay for every later test."""
    code = f"""
from tunebench.evaluation.sql.sandbox import limit_memory, open_readonly, run_query
limit_memory(64 * 2**20)
conn = open_readonly({str(spider_db_dir / "concert_singer" / "concert_singer.sqlite")!r})
# DISTINCT keeps every 9 MB blob in a temporary b-tree: in memory (temp_store), so under the cap
result = run_query(conn, "SELECT DISTINCT randomblob(9000000) FROM singer a, singer b ORDER BY 1", 10.0, 100)
print(result.kind, "|", result.error)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "too_large | over the SQLite memory limit"


def test_result_byte_cap_is_an_option(singer_db: sqlite3.Connection) -> None:
    query = "SELECT zeroblob(1000000) FROM singer"  # 6 rows of 1 MB
    assert run_query(singer_db, query, 5.0, 100, max_bytes=7 * 2**20).ok
    small = run_query(singer_db, query, 5.0, 100, max_bytes=3 * 2**20)
    assert (small.kind, small.error) == ("too_large", "result over 3 MB")


@pytest.mark.parametrize(
    ("fmt", "args"),
    [
        ("%5.2f|%-4d|%s|%%|%.*c", (3.14159, 7, "ab", 3, "z")),
        ("%q and %Q", ("it's", None)),
        ("%,d %x %o %e %g", (1234567, 255, 8, 12345.678, 0.0001)),
        ("%.3s|%10s|%-10s|", ("abcdef", "r", "l")),
        ("%!.20g %c %w", (0.1, "hello", 'a"b')),
        ("no conversions", ()),
    ],
)
def test_guarded_printf_matches_sqlite_builtin(singer_db: sqlite3.Connection, fmt: str, args: tuple) -> None:
    call = ", ".join(_literal(v) for v in (fmt, *args))
    query = f"SELECT printf({call}), format({call})"
    plain = sqlite3.connect(":memory:")  # SQLite's own printf, unguarded
    expected = plain.execute(query).fetchall()
    plain.close()
    assert run_query(singer_db, query, 1.0, 10).rows == expected


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def test_watchdog_interrupts_at_the_deadline(singer_db: sqlite3.Connection) -> None:
    # no progress handler here: only the watchdog's interrupt can stop this query
    endless = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c"
    start = time.monotonic()
    deadline = time.monotonic() + 0.3
    with (
        pytest.raises(sqlite3.OperationalError, match="interrupted"),
        sandbox._WATCHDOG.guard(singer_db, deadline),
    ):
        singer_db.execute(endless).fetchall()
    assert time.monotonic() - start < 1.3
    assert singer_db.execute(GOLD).fetchall() == [(6,)]  # no stale interrupt on the next query


def test_zeroblob_evaluate_stays_under_1_5_gb(tmp_path: Path) -> None:
    """The whole ``tunebench evaluate`` process, real databases and test suite, ``--workers 1``."""
    preds = predictions_file(tmp_path / "p.jsonl", [sql_row("z", ZEROBLOB, context=SINGER_CONTEXT)])
    probe = (
        "import resource, subprocess, sys; "
        "r = subprocess.run([sys.executable, '-m', 'tunebench', *sys.argv[1:]], stdout=subprocess.DEVNULL); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ["evaluate", "--task", "sql", "--predictions", str(preds), "--out", str(tmp_path / "out")]
    run = subprocess.run(
        [sys.executable, "-c", probe, *args, "--workers", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    returncode, peak_kb = map(int, run.stdout.split())
    assert returncode == 0, run.stderr
    assert peak_kb < 1.5 * 2**20, f"peak RSS {peak_kb / 2**20:.2f} GB"
    [row] = read_jsonl(tmp_path / "out" / "per_example.jsonl")
    assert (row["failure_kind"], row["suite_failure_kind"]) == ("too_large", "too_large")


def test_printf_evaluate_ends_within_the_timeout(tmp_path: Path, spider_db_dir: Path) -> None:
    preds = predictions_file(tmp_path / "p.jsonl", [sql_row("p", PRINTF, context=SINGER_CONTEXT)])
    out = tmp_path / "out"
    result = cli(
        "evaluate", "--task", "sql", "--predictions", str(preds), "--out", str(out),
        "--db-dir", str(spider_db_dir), "--timeout", "1", "--workers", "1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["seconds"] < 2.0
    [row] = read_jsonl(out / "per_example.jsonl")
    assert row["execution_match"] is False and "printf width or precision over" in row["error"]


# --- 2. JSONL with raw line separators inside strings ------------------------------------------


def test_jsonl_round_trips_raw_line_separators(tmp_path: Path) -> None:
    rows = [{"id": "u", "text": SEPARATORS}, {"id": "v", "text": "plain"}]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows)
    assert SEPARATORS in path.read_text(encoding="utf-8")  # raw, not escaped
    assert read_jsonl(path) == rows


def test_evaluate_scores_rows_with_raw_line_separators(tmp_path: Path, spider_db_dir: Path) -> None:
    query = f"SELECT '{SEPARATORS}' FROM singer"
    preds = predictions_file(
        tmp_path / "p.jsonl", [{"id": "u", "db_id": "concert_singer", "gold": query, "prediction": query}]
    )
    out = tmp_path / "out"
    result = cli(
        "evaluate", "--task", "sql", "--predictions", str(preds), "--out", str(out),
        "--db-dir", str(spider_db_dir), "--suite-size", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [row] = read_jsonl(out / "per_example.jsonl")
    assert (row["id"], row["execution_match"], row["exact_match"]) == ("u", True, True)


# --- 3.-9. CLI inputs that must give one line "error: ..." with exit status 2 ------------------

STUDY_UNKNOWN_TASK = "name: s\nruns_dir: {runs}\ndefaults: {{model: {{name: smollm2-135m}}}}\n"
CUSTOM_CONFIG = (
    "name: c\nruns_dir: {runs}\nprovider: base\nmodel: {{name: smollm2-135m}}\ntask:\n  name: custom\n"
    "  train_file: {data}\n  test_file: {data}\n  prompt_template: 'Review {{{{ text }}}}'\n"
)

# (label, files to write, CLI arguments, fragments the one-line error must contain)
CLI_CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    (
        "timeout nan",
        {},
        ["evaluate", "{sql}", "--timeout", "nan"],
        ["'--timeout'", "nan is not a positive number"],
    ),
    ("timeout -1", {}, ["evaluate", "{sql}", "--timeout", "-1"], ["'--timeout'", "not a positive number"]),
    (
        "suite size -3",
        {},
        ["evaluate", "{sql}", "--suite-size", "-3"],
        ["'--suite-size'", "greater than or equal to 0"],
    ),
    ("workers 0", {}, ["evaluate", "{sql}", "--workers", "0"], ["'--workers'", "greater than or equal to 1"]),
    ("max result 0", {}, ["evaluate", "{sql}", "--max-result-mb", "0"], ["'--max-result-mb'"]),
    ("max memory inf", {}, ["evaluate", "{sql}", "--max-memory-mb", "inf"], ["'--max-memory-mb'"]),
    (
        "db dir missing",
        {},
        ["evaluate", "{preds}", "--db-dir", "{tmp}/nowhere"],
        ["'--db-dir'", "does not exist"],
    ),
    (
        "out is a file",
        {},
        ["evaluate", "{sql}", "--out", "{tmp}/ok.jsonl"],
        ["--out", "exists and is not a folder"],
    ),
    (
        "out unwritable",
        {},
        ["evaluate", "{sql}", "--out", "{tmp}/ok.jsonl/x"],
        ["--out", "cannot create the folder"],
    ),
    (
        "duplicate id",
        {"dup.jsonl": [sql_row("x"), sql_row("y"), sql_row("x")]},
        [
            "evaluate",
            "--task",
            "sql",
            "--predictions",
            "{tmp}/dup.jsonl",
            "--out",
            "{tmp}/o",
            "--db-dir",
            "{db}",
        ],
        ['row 3: id "x" appears twice (first in row 1)'],
    ),
    (
        "id not in the gold set",
        {
            "run/prepared/test.jsonl": [{"id": "x"}, {"id": "y"}],
            "run/predictions/test.jsonl": [sql_row("x"), sql_row("stray")],
        },
        [
            "evaluate",
            "--task",
            "sql",
            "--predictions",
            "{tmp}/run/predictions/test.jsonl",
            "--out",
            "{tmp}/o",
            "--db-dir",
            "{db}",
        ],
        ['row 2: id "stray" is not in the gold set'],
    ),
    (
        "absolute db_id",
        {"abs.jsonl": [sql_row("a", db_id="{db}/concert_singer")]},
        [
            "evaluate",
            "--task",
            "sql",
            "--predictions",
            "{tmp}/abs.jsonl",
            "--out",
            "{tmp}/o",
            "--db-dir",
            "{db}",
        ],
        ["id 'a'", "is not a database name"],
    ),
    (
        "db_id with ..",
        {"dots.jsonl": [sql_row("d", db_id="../database/concert_singer")]},
        [
            "evaluate",
            "--task",
            "sql",
            "--predictions",
            "{tmp}/dots.jsonl",
            "--out",
            "{tmp}/o",
            "--db-dir",
            "{db}",
        ],
        ["id 'd'", "'../database/concert_singer' is not a database name"],
    ),
    (
        "set YAML error",
        {},
        ["run", "{tmp}/custom.yaml", "--dry-run", "--set", "key=[1"],
        ["--set key=[1: not a valid YAML list"],
    ),
    (
        "template field misspelt",
        {},
        ["prepare", "{tmp}/custom.yaml", "--set", "task.prompt_template=Review: {{{{ txt }}}} Sentiment:"],
        ["row 1: prompt_template needs field 'txt'"],
    ),
    (
        "study task misspelt",
        {"study.yaml": STUDY_UNKNOWN_TASK + "tasks: [vigo]\nsystems: [{{name: lora, provider: local}}]\n"},
        ["run", "{tmp}/study.yaml", "--dry-run"],
        ["task 'vigo' is not a task (sql, viggo, custom)"],
    ),
    (
        "study task entry misspelt",
        {
            "study.yaml": STUDY_UNKNOWN_TASK
            + "tasks: [{{name: vigo}}]\nsystems: [{{name: lora, provider: local}}]\n"
        },
        ["run", "{tmp}/study.yaml", "--dry-run"],
        ["task 'vigo' is not a task"],
    ),
    ("unknown command", {}, ["evalute"], ["No such command 'evalute'"]),
]


@pytest.mark.parametrize(("label", "files", "args", "fragments"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_hostile_input_is_one_line_error(
    tmp_path: Path,
    spider_db_dir: Path,
    label: str,
    files: dict[str, Any],
    args: list[str],
    fragments: list[str],
) -> None:
    values = {"tmp": str(tmp_path), "db": str(spider_db_dir), "runs": str(tmp_path / "runs")}
    predictions_file(tmp_path / "ok.jsonl", [sql_row("x")])
    (tmp_path / "rows.jsonl").write_text('{"text": "good film", "target": "positive"}\n')
    (tmp_path / "custom.yaml").write_text(CUSTOM_CONFIG.format(data=tmp_path / "rows.jsonl", **values))
    for name, content in files.items():
        if isinstance(content, str):
            (tmp_path / name).write_text(content.format(**values))
        else:
            rows = [
                {k: v.format(**values) if isinstance(v, str) else v for k, v in r.items()} for r in content
            ]
            predictions_file(tmp_path / name, rows)
    expanded: list[str] = []
    for arg in args:
        if arg == "{sql}":  # a valid evaluate call that the case's own option spoils
            expanded += ["--task", "sql", "--predictions", f"{tmp_path}/ok.jsonl", "--out", f"{tmp_path}/o"]
            expanded += ["--db-dir", str(spider_db_dir)] if "--db-dir" not in args else []
        elif arg == "{preds}":
            expanded += ["--task", "sql", "--predictions", f"{tmp_path}/ok.jsonl", "--out", f"{tmp_path}/o"]
        else:
            expanded.append(arg.format(**values))
    result = cli(*expanded, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "''" not in lines[0]  # no doubled quotes around a name
    assert not (tmp_path / "o" / "metrics.json").exists()  # refused before anything was scored


def test_gold_ids_refuse_a_stray_id_in_the_library_call(tmp_path: Path, spider_db_dir: Path) -> None:
    preds = predictions_file(tmp_path / "p.jsonl", [sql_row("x"), sql_row("y")])
    options = {"db_dir": str(spider_db_dir), "suite_size": 0}
    with pytest.raises(TunebenchError, match='row 2: id "y" is not in the gold set'):
        evaluate("sql", preds, tmp_path / "out", options, gold_ids=["x", "z"])
    assert evaluate("sql", preds, tmp_path / "out", options, gold_ids=["x", "y", "z"])["n"] == 2


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("0.5", 0.5),
        ("Review: {{ txt }} Sentiment:", "Review: {{ txt }} Sentiment:"),
        ("{{ text }}", "{{ text }}"),
        ("label: yes", "label: yes"),
        ("- item", "- item"),
        ("plain words", "plain words"),
    ],
)
def test_set_values_parse_as_yaml_or_stay_strings(text: str, value: Any) -> None:
    assert parse_overrides([f"task.prompt_template={text}"]) == {"task.prompt_template": value}


def test_study_task_label_with_its_own_task_name_still_expands(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: s\nruns_dir: {tmp_path / 'runs'}\ndefaults: {{model: {{name: smollm2-135m}}}}\n"
        "tasks: [{name: sql-small, task: {name: sql, max_eval_examples: 5}}, viggo]\n"
        "systems: [{name: lora, provider: local}]\n"
    )
    cells = expand(load_study(study), source=str(study))
    assert [(c.config.name, c.config.task.name) for c in cells] == [
        ("lora-sql-small", "sql"),
        ("lora-viggo", "viggo"),
    ]


def _custom_experiment(folder: Path, **task: str) -> Path:
    (folder / "data.jsonl").write_text("".join(f'{{"q": "q{i}", "target": "t{i}"}}\n' for i in range(4)))
    lines = "".join(f"  {k}: {v}\n" for k, v in task.items())
    config = folder / "x.yaml"
    config.write_text(
        "name: x\nmodel: {name: qwen2.5-coder-1.5b}\ntask:\n  name: custom\n  train_file: data.jsonl\n"
        f"  test_file: data.jsonl\n  prompt_template: '{{q}}'\n{lines}"
    )
    return config


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ({"metrics": "['nosuchpkg.mod:fn']"}, [], "cannot import module 'nosuchpkg.mod'"),
        ({}, ["--set", "model.name=qwen-nope"], "unknown model 'qwen-nope'"),
        ({"test_file": "missing.jsonl"}, [], "missing.jsonl: no such file"),
    ],
    ids=["metric typo", "preset typo", "missing data file"],
)
def test_mistakes_fail_before_any_work_and_bind_no_run_directory(
    tmp_path: Path, task: dict[str, str], overrides: list[str], message: str
) -> None:
    """Caught when the run starts (and by --dry-run), not after predictions: nothing is written,
    so the fixed config runs in the same directory."""
    _custom_experiment(tmp_path, **task)
    plan = cli("run", "x.yaml", "--dry-run", *overrides, cwd=tmp_path)
    assert plan.returncode == 0 and "invalid" in plan.stdout, plan.stdout + plan.stderr
    result = cli("run", "x.yaml", *overrides, cwd=tmp_path)
    assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "runs" / "x").exists()
