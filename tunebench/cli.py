"""The ``tunebench`` command. Each subcommand is a thin wrapper over a library function.

Errors a user can cause print as one line (``error: ...``) with exit status 2, never a
traceback; ``TUNEBENCH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from tunebench.errors import TunebenchError
from tunebench.io import read_json

app = typer.Typer(
    name="tunebench",
    help="Should you LoRA-fine-tune an open model on your GPU, or pay OpenAI to fine-tune one? "
    "tunebench runs both on your task and reports accuracy, cost and time side by side.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
#: Columns of a table written to a pipe or file: rich assumes 80 off a terminal and cuts every
#: cell of a wide table (estimate's has 14 columns) to an ellipsis.
PIPED_WIDTH = 240


def stdout() -> Console:
    """Where tables go: the terminal's width on a terminal, else wide enough not to cut cells."""
    out = Console()
    return out if out.is_terminal else Console(width=PIPED_WIDTH)


ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set training.max_steps=10 (repeatable)."),
]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=3"]`` -> ``{"a.b": 3}`` (values parsed as YAML, see :func:`override_value`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise TunebenchError(f"--set {item}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = override_value(item, value)
    return out


def override_value(item: str, text: str) -> Any:
    """A ``--set`` value: numbers, booleans, null and ``[...]`` lists or ``{...}`` maps as YAML reads
    them; any other text as the string it is (``Review: {{ text }}`` is a prompt, not a map).
    A ``[`` that YAML cannot read is an error: a list was meant."""
    flow = text.lstrip()[:1]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if flow == "[":
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise TunebenchError(f"--set {item}: not a valid YAML list ({problem})") from None
        return text
    if isinstance(value, dict | list) and flow not in ("[", "{"):
        return text
    return value


def load_config(path: Path, overrides: list[str] | None) -> Any:
    from tunebench.config import load_experiment

    return load_experiment(path, parse_overrides(overrides))


@app.command()
def prepare(
    config: ConfigArg,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="Model preset/path whose tokenizer gives token-length statistics."),
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Render prompts and targets of every split into RUN/prepared/<split>.jsonl and show counts."""
    from tunebench.pipeline import open_run
    from tunebench.pipeline.prepare import prepare as prepare_fn

    cfg = load_config(config, overrides)
    tok = None
    if tokenizer:
        from tunebench.models import load_tokenizer

        tok = load_tokenizer(tokenizer)
    stats = prepare_fn(cfg, open_run(cfg), tok)
    table = Table(title=f"{cfg.task.name}: prepared in {cfg.run_dir}/prepared")
    table.add_column("split")
    table.add_column("examples", justify="right")
    for label in ("prompt", "target", "total"):
        table.add_column(f"{label} tokens p50/p95/max", justify="right")
    for split, info in stats["splits"].items():
        cells = [
            "/".join(str(info[f"{k}_tokens"][p]) for p in ("p50", "p95", "max"))
            if f"{k}_tokens" in info
            else "-"
            for k in ("prompt", "target", "total")
        ]
        table.add_row(split, str(info["count"]), *cells)
    stdout().print(table)


@app.command()
def train(
    config: ConfigArg,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint if one exists.")] = True,
    gpus: Annotated[
        int, typer.Option(min=1, help="Train on N GPUs (re-launches itself through accelerate).")
    ] = 1,
    yes: Annotated[bool, typer.Option("--yes", help="Allow spending (OpenAI provider).")] = False,
    overrides: SetOpt = None,
) -> None:
    """Fine-tune: LoRA here (provider local) or an OpenAI job (provider openai)."""
    cfg = load_config(config, overrides)
    from tunebench.pipeline import ensure_prepared, open_run, train_stage
    from tunebench.providers import provider_of

    run = open_run(cfg)
    ensure_prepared(cfg, run)  # once, here, before N processes would race to do it
    if gpus > 1 and "train" in provider_of(cfg).multi_process and "LOCAL_RANK" not in os.environ:
        from tunebench.training.distributed import launch

        raise typer.Exit(launch(gpus, sys.argv))
    summary = train_stage(cfg, run, resume=resume, yes=yes)
    if os.environ.get("RANK", "0") == "0":  # one summary, not one per process
        stdout().print_json(json.dumps(summary, default=str))


@app.command()
def predict(
    config: Annotated[Path | None, typer.Argument(help="Experiment config (YAML).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="A run directory instead of a config.")] = None,
    split: Annotated[str, typer.Option(help="validation or test.")] = "test",
    gpus: Annotated[
        int,
        typer.Option(
            min=1,
            help="Deal whole batches to N GPU processes, one each, and merge in order (local and base providers).",
        ),
    ] = 1,
    overrides: SetOpt = None,
) -> None:
    """Generate predictions for a split into RUN/predictions/<split>.jsonl (resumable)."""
    from tunebench.pipeline import ensure_prepared, open_run, predict_stage
    from tunebench.providers import provider_of
    from tunebench.rundir import RunDir

    if split not in ("validation", "test"):
        raise TunebenchError(f"--split {split}: choose validation or test")
    if run_dir is not None:
        if overrides:
            raise TunebenchError(
                "--set does not apply with --run-dir (the run's own config.yaml is used): pass the "
                "config file with the run's --set options instead"
            )
        run = RunDir(run_dir)
        cfg = run.load_config()
    elif config is not None:
        cfg = load_config(config, overrides)
        run = open_run(cfg)
    else:
        raise TunebenchError("give a config or --run-dir")
    ensure_prepared(cfg, run)  # once, here, before N processes would race to do it
    if gpus > 1 and "predict" in provider_of(cfg).multi_process and "LOCAL_RANK" not in os.environ:
        from tunebench.training.distributed import launch

        raise typer.Exit(launch(gpus, sys.argv))
    predict_stage(cfg, run, split)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"predictions: {run.predictions(split)}")


def positive_number(value: float | None) -> float | None:
    """Option callback: a finite number above zero (``nan``, ``inf``, 0 and negatives refused)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a positive number")
    return value


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help="sql, viggo or custom.")],
    predictions: Annotated[Path, typer.Option(help="Predictions JSONL (id, prediction, gold, ...).")],
    out: Annotated[Path, typer.Option(help="Output folder for metrics.json and per_example.jsonl.")],
    db_dir: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="sql: folder of <db_id>/<db_id>.sqlite for execution accuracy (default: the data "
            "mirror's sql/spider/database). A db_id must be a folder name inside it, never a path.",
        ),
    ] = None,
    suite_size: Annotated[
        int | None, typer.Option(min=0, help="sql: generated databases per example (0: no test suite).")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            callback=positive_number, help="sql: seconds per query before it is stopped (default: 10)."
        ),
    ] = None,
    max_result_mb: Annotated[
        float | None,
        typer.Option(
            callback=positive_number,
            help="sql: MB of one query's fetched result (text and blob bytes); a larger result fails "
            "the query as too_large (default: 128).",
        ),
    ] = None,
    max_memory_mb: Annotated[
        float | None,
        typer.Option(
            callback=positive_number,
            help="sql: MB of SQLite memory per scoring process (all its queries, sorts and temporary "
            "tables); a query needing more fails as too_large (default: 512).",
        ),
    ] = None,
    keep_distinct: Annotated[bool, typer.Option(help="sql: compare with DISTINCT kept.")] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Parallel processes (default: all cores).")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help="custom: a metric of task.metrics (exact_match, json_valid, json_match, json_field_f1, "
            "json_schema_valid, token_f1, label_accuracy, macro_f1...) or module:function (repeatable)."
        ),
    ] = None,
    json_schema: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="custom: JSON Schema file of json_schema_valid."),
    ] = None,
    unwrap_fence: Annotated[
        bool,
        typer.Option(help="custom: score an answer that is one Markdown code fence on its content."),
    ] = False,
) -> None:
    """Score a predictions file and write OUT/metrics.json and OUT/per_example.jsonl.

    Ids must be unique; for a run directory's predictions/<split>.jsonl they must also be ids of
    its prepared/<split>.jsonl.
    """
    from tunebench.evaluation import evaluate as evaluate_fn

    check_output_folder(out)
    options: dict[str, Any] = {"progress": sys.stderr.isatty()}
    for key, value in {
        "db_dir": str(db_dir) if db_dir else None,
        "suite_size": suite_size,
        "timeout_s": timeout,
        "max_result_mb": max_result_mb,
        "max_memory_mb": max_memory_mb,
        "workers": workers,
        "metrics": metric,
        "json_schema": str(json_schema) if json_schema else None,
    }.items():
        if value is not None:
            options[key] = value
    if keep_distinct:
        options["keep_distinct"] = True
    if unwrap_fence:
        options["unwrap_fence"] = True
    if task == "sql" and db_dir is None:
        options.update(default_sql_databases())
    metrics = evaluate_fn(task, predictions, out, options)
    print_metrics(metrics)


def check_output_folder(out: Path) -> None:
    """``--out`` must be a folder this process can create and write, checked before scoring."""
    if out.exists() and not out.is_dir():
        raise TunebenchError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunebenchError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise TunebenchError(f"--out {out}: the folder is not writable")


def default_sql_databases() -> dict[str, Any]:
    """The real Spider databases of the local data mirror, as the pipeline uses them, said aloud
    either way (without them execution accuracy on real databases is not scored)."""
    from tunebench.tasks.sql import spider_databases

    path = spider_databases()
    if path is not None:
        console.print(f"real databases: {path} (--db-dir to choose others)")
        return {"db_dir": str(path)}
    console.print(
        "no --db-dir and no Spider databases in the data mirror ($TUNEBENCH_DATA_DIR or "
        "../shared/data): execution accuracy on real databases is not scored"
    )
    return {}


def print_metrics(metrics: dict[str, Any]) -> None:
    """The headline metrics as a table (floats with their CI)."""
    table = Table(title=f"{metrics.get('task')}: {metrics.get('n')} examples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float) and not key.endswith("_ci95"):
            ci = metrics.get(f"{key}_ci95")
            n = metrics.get(f"{key}_n", metrics.get(f"{key.split('_')[0]}_n"))
            label = f"{key} (n={n})" if n is not None else key
            table.add_row(label, f"{value:.4f}", f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    stdout().print(table)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="An experiment config or a study config (YAML).")],
    yes: Annotated[bool, typer.Option("--yes", help="Allow spending on hosted fine-tuning.")] = False,
    overrides: SetOpt = None,
    cells: Annotated[
        list[str] | None,
        typer.Option(
            "--cells",
            help="Studies: run only the cells matching this pattern (e.g. '*-sql'; repeatable), "
            "so several processes can share a study, one GPU each. The report waits for every cell.",
        ),
    ] = None,
    gpus: Annotated[
        int,
        typer.Option(
            min=1, help="Train and predict on N GPUs, one process each (as train/predict --gpus N)."
        ),
    ] = 1,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what would run (each run directory, its status and the stages left), run nothing.",
        ),
    ] = False,
) -> None:
    """The whole pipeline: every stage of an experiment, or every cell of a study + its report."""
    from tunebench.config import load_yaml, looks_like_study

    data = load_yaml(config)
    if dry_run:
        print_plan(config, data, parse_overrides(overrides), cells)
        return
    if looks_like_study(data):
        from tunebench.study import run_study

        out = run_study(config, yes=yes, overrides=parse_overrides(overrides), cells=cells, gpus=gpus)
        if out is not None:
            console.print(f"report: {out}")
        return
    if cells:
        raise TunebenchError("--cells selects cells of a study; this config is a single experiment")
    from tunebench.pipeline import run_experiment

    cfg = load_config(config, overrides)
    result = run_experiment(cfg, yes=yes, gpus=gpus)
    print_run_summary(cfg.eval_splits, result)
    console.print(f"done: {result.root}")


def print_plan(path: Path, data: Any, overrides: dict[str, Any], cells: list[str] | None) -> None:
    """``run --dry-run``: one row per experiment the command would run, in the order it would."""
    from tunebench.config import looks_like_study
    from tunebench.pipeline import plan

    if looks_like_study(data):
        from tunebench.config.study import expand, load_study
        from tunebench.study import run_order, select_cells

        study = load_study(path)
        chosen = run_order(select_cells(expand(study, overrides, str(path)), cells))
        configs = [cell.config for cell in chosen]
        after = f"then the report in {study.resolved_report_dir()}, once every cell of the study is done"
    elif cells:
        raise TunebenchError("--cells selects cells of a study; this config is a single experiment")
    else:
        from tunebench.config import load_experiment

        configs, after = [load_experiment(path, overrides)], ""
    table = Table(title=f"{path}: what `tunebench run` would do")
    for column in ("run directory", "provider", "model", "task", "status", "stages to run"):
        table.add_column(column, overflow="fold")
    for cfg in configs:
        step = plan(cfg)
        todo = ", ".join(step["to_run"]) if step["status"] not in ("refused", "invalid") else step["detail"]
        table.add_row(step["run_dir"], cfg.provider, cfg.model_label, cfg.task.name, step["status"], todo)
    stdout().print(table)
    if after:
        stdout().print(after, highlight=False)


def print_run_summary(splits: list[str], run: Any) -> None:
    """Each scored split's headline metrics, then what the run cost."""
    for split in splits:
        path = run.eval_dir(split) / "metrics.json"
        if path.is_file():
            metrics = read_json(path)
            metrics["task"] = f"{metrics.get('task')} {split}"
            print_metrics(metrics)
    if run.cost_path.is_file():
        console.print(cost_line(read_json(run.cost_path)), highlight=False)
        console.print(f"cost record: {run.cost_path}", highlight=False)


def cost_line(cost: dict[str, Any]) -> str:
    """One line of what a run cost, from its cost.json (each provider's own layout)."""
    if "endpoint" in cost:  # an unpriced server
        return f"cost: {cost.get('note', 'not priced')}"
    if "openai" in cost:
        block, key, how = cost.get("openai") or {}, "cost_usd", " (OpenAI's prices)"
    elif cost.get("price"):
        block, key, how = cost, "cost_usd", ""
    else:  # no price for this hardware (CPU): the study's A40 rate, labelled as a conversion
        block, key, how = cost, "a40_conversion_usd", " at the study's A40 rate"
    training = (block.get("training") or {}).get(key) or 0.0
    inference = sum((v or {}).get(key) or 0.0 for v in (block.get("inference") or {}).values())
    note = f" ({cost['note']})" if cost.get("note") else ""
    return f"cost{how}: training ${training:.4f}, predictions ${inference:.4f}{note}"


@app.command()
def report(
    source: Annotated[
        Path, typer.Argument(help="A study config (YAML), a folder of run directories, or one run directory.")
    ],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the study's report dir).")] = None,
) -> None:
    """Write report.md and a self-contained report.html comparing systems and tasks."""
    from tunebench.report import write_report

    path = write_report(source, out)
    console.print(f"report: {path}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory (provider local).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN_DIR/merged).")] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 with CUDA, else float32), float32, bfloat16 or float16.")
    ] = "auto",
) -> None:
    """Write one model folder any HF server can load: LoRA merged into the base, or the full fine-tune."""
    from tunebench.providers import provider_of
    from tunebench.rundir import RunDir

    run = RunDir(run_dir)
    config = run.load_config()
    path = provider_of(config).export(config, run, out, dtype)
    console.print(f"merged model: {path}")


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (base model + adapter).")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback only by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="TUNEBENCH_API_KEY", help="Require this key as 'Authorization: Bearer KEY' (else 401)."
        ),
    ] = None,
    max_sequences: Annotated[
        int, typer.Option(min=1, help="Most sequences (prompts x n) one request may ask for (else 400).")
    ] = 256,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(min=1, help="Most tokens in one prompt (default: the model's context).")
    ] = None,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Most requests waiting for the model (else 429).")
    ] = 64,
    request_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds a request may wait and run (else 504).")
    ] = 300.0,
) -> None:
    """Serve the fine-tuned model behind an OpenAI-compatible API (/v1/completions, /v1/chat/completions).

    A fine-tuned task model answers prompts in its task's format: chat messages shaped like the
    task's (GET /v1/models shows that shape and the chat template) get the training prompt and the
    answer it was trained to give; other messages go through the tokenizer's chat template, and a
    LoRA task model may answer them with little or nothing.
    """
    import math

    from tunebench.inference.serve import Limits
    from tunebench.inference.serve import serve as serve_fn

    if not math.isfinite(request_timeout):
        raise typer.BadParameter("must be a finite number of seconds", param_hint="--request-timeout")
    limits = Limits(max_sequences, max_prompt_tokens, max_queue, request_timeout, api_key or None)
    serve_fn(run_dir, host=host, port=port, limits=limits)


@app.command()
def models() -> None:
    """List the model presets and whether their packages are installed."""
    from tunebench.models import list_presets

    table = Table(title="model presets")
    for col in ("name", "model", "packages", "installed"):
        table.add_column(col, overflow="fold")  # nothing cut off in a narrow terminal
    for row in list_presets():
        table.add_row(row["name"], row["description"], row["packages"], "yes" if row["installed"] else "no")
    stdout().print(table)


@app.command(name="estimate")
def estimate_command(
    config: Annotated[Path, typer.Argument(help="An experiment config or a study config (YAML).")],
    gpu: Annotated[
        str | None,
        typer.Option(
            help="Card to size for (L4, A10, A40, A100 40GB, A100 80GB, H100, H200); default: "
            "cost.gpu_type, else H100."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per cell.")] = False,
    overrides: SetOpt = None,
) -> None:
    """Before spending: every cell's parameters, GPU memory, fit, disk, training time and $."""
    from tunebench.estimate import check_gpu, estimate

    check_gpu(gpu)
    rows = estimate(config, gpu, parse_overrides(overrides))
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(
        title=f"{config}: estimate before training (upper bounds when early stopping may end sooner)"
    )
    for column in (
        "cell",
        "provider",
        "gpu",
        "params",
        "LoRA",
        "peak GiB",
        "fits",
        "disk GiB",
        "train tokens",
        "tok/s",
        "train",
        "train $",
        "predict",
        "predict $",
    ):
        table.add_column(column, justify="left" if column in ("cell", "provider", "gpu") else "right")

    def num(value: Any, fmt: str = "{:,.0f}") -> str:
        return "-" if value is None else fmt.format(value)

    for r in rows:
        gpu_label = (r.get("gpu") or "-") + (" (proj.)" if r.get("projection") else "")
        fits = {True: "yes", False: "[red]no[/]", None: "-"}[r.get("fits")]
        table.add_row(
            r["cell"],
            r["provider"],
            gpu_label,
            num(r.get("params") and r["params"] / 1e9, "{:.2f}B"),
            num(r.get("trainable_params") and r["trainable_params"] / 1e6, "{:.2f}M"),
            num(r.get("peak_memory_gib"), "{:.1f}"),
            fits,
            num(r.get("checkpoint_disk_gib"), "{:.1f}"),
            num(r.get("train_tokens")),
            num(r.get("train_tokens_per_s")),
            num(r.get("train_seconds") and r["train_seconds"] / 60, "{:.1f} min"),
            num(r.get("train_usd"), "${:.2f}"),
            num(r.get("predict_seconds") and r["predict_seconds"] / 60, "{:.1f} min"),
            num(r.get("predict_usd"), "${:.2f}"),
        )
    stdout().print(table)
    counted = sorted({r["tokens_counted_by"] for r in rows if r.get("tokens_counted_by")})
    stdout().print(
        f"tokens counted by: {'; '.join(counted)}. GPU prices: prices.py (dated); "
        "(proj.): projected from H100 measurements by FLOP/s and bandwidth ratios.",
        highlight=False,
    )


@app.command("init")
def init(
    data: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="OpenAI chat or prompt/completion JSONL.")
    ],
    model: Annotated[
        str, typer.Option(help="The open model of the base and LoRA systems.")
    ] = "qwen2.5-coder-1.5b",
    openai_model: Annotated[
        str, typer.Option(help="The OpenAI model to fine-tune.")
    ] = "gpt-4o-mini-2024-07-18",
    out: Annotated[Path, typer.Option(help="The study config to write.")] = Path("study.yaml"),
    test: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Test rows (default: a seeded share of DATA)."),
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.9, help="Without --test: the share of DATA's rows kept for test.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the test and validation splits.")] = 0,
) -> None:
    """Write a study config comparing the base model, LoRA and OpenAI on DATA; nothing is spent.

    The config is commented; the OpenAI cost estimate is printed. Nothing is uploaded or trained."""
    from tunebench.scaffold import init_study

    made = init_study(data, out, model, openai_model, test, test_fraction, seed)
    console.print(f"format: {made.format}; metrics: {', '.join(made.metrics)}", highlight=False)
    if test is None:
        console.print(f"split {data} -> {made.train_file} + {made.test_file}", highlight=False)
    console.print("OpenAI fine-tuning estimate (nothing is uploaded):", highlight=False)
    for line in made.estimate.lines():
        console.print(f"  {line}", highlight=False)
    config = shlex.quote(str(made.config))
    # a plain `run` stops at the OpenAI cell, which refuses to spend without --yes
    console.print(
        f"wrote {made.config}; the free cells (this machine only):\n"
        f"  tunebench run {config} --cells 'base-*' --cells 'lora-*'\n"
        f"with the OpenAI job (billed), then the report:\n  tunebench run {config} --yes",
        highlight=False,
        soft_wrap=True,
    )


@app.command(name="config")
def config_reference() -> None:
    """Print the config reference (experiments, then studies): every key, its default and why."""
    from tunebench.config.reference import reference_markdown

    print(reference_markdown())


# --- tunebench openai ... : the OpenAI fine-tuning provider's own commands -------------------
openai_app = typer.Typer(help="OpenAI fine-tuning: export files, estimate cost, train, status, cancel.")
app.add_typer(openai_app, name="openai")
RunDirArg = Annotated[Path, typer.Argument(help="Run directory (runs/<name>).", show_default=False)]


def prepared_run(cfg: Any) -> Any:
    """The run directory of ``cfg``, opened (or created) and prepared."""
    from tunebench.pipeline import ensure_prepared, open_run

    run = open_run(cfg)
    ensure_prepared(cfg, run)
    return run


def load_openai_config(path: Path, overrides: list[str] | None) -> Any:
    """An experiment config of provider ``openai``; any other provider is a one-line error."""
    cfg = load_config(path, overrides)
    require_openai(str(path), cfg.provider)
    return cfg


def require_openai(source: str, provider: str) -> None:
    if provider != "openai":
        raise TunebenchError(
            f"{source}: provider is {provider}; `tunebench openai` needs a config of provider: openai "
            "(`tunebench estimate` prices any config, OpenAI cells included)"
        )


@openai_app.command("export")
def openai_export(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Write and validate RUN/openai/{train,validation}.jsonl (OpenAI chat format); no upload."""
    from tunebench.providers.openai import export_files

    cfg = load_openai_config(config, overrides)
    for split, info in export_files(cfg, prepared_run(cfg)).items():
        console.print(f"{split}: {len(info['rows'])} examples -> {info['path']}")


@openai_app.command("estimate")
def openai_estimate(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Export, validate and print the estimated training cost; nothing is uploaded."""
    from tunebench.providers.openai import estimate_for, export_files

    cfg = load_openai_config(config, overrides)
    for line in estimate_for(cfg, export_files(cfg, prepared_run(cfg))).lines():
        stdout().print(line, highlight=False)


@openai_app.command("train")
def openai_train(
    config: ConfigArg,
    yes: Annotated[bool, typer.Option("--yes", help="Allow spending: upload and start the job.")] = False,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="After a failed/cancelled job, create a NEW job (billed again)."),
    ] = False,
    overrides: SetOpt = None,
) -> None:
    """Run (or resume following) the run's OpenAI fine-tuning job."""
    from tunebench.providers.openai import train_openai

    cfg = load_openai_config(config, overrides)
    summary = train_openai(cfg, prepared_run(cfg), yes=yes, retry_failed=retry_failed)
    stdout().print_json(json.dumps(summary, default=str))


@openai_app.command("status")
def openai_status(run_dir: RunDirArg) -> None:
    """Show what RUN/openai_job.json records: job id, status, files, error (no network)."""
    from tunebench.providers.openai import status
    from tunebench.rundir import RunDir

    stdout().print_json(json.dumps(status(RunDir(run_dir)), default=str))


@openai_app.command("cancel")
def openai_cancel(run_dir: RunDirArg) -> None:
    """Cancel the run's remote OpenAI job."""
    from tunebench.providers.openai import cancel_job
    from tunebench.rundir import RunDir

    run = RunDir(run_dir)
    cfg = run.load_config()
    require_openai(str(run.config_path), cfg.provider)
    console.print(f"job status: {cancel_job(run, cfg.openai.base_url)}")


def main() -> None:
    """Entry point: one-line errors, no tracebacks (unless TUNEBENCH_DEBUG=1)."""
    import faulthandler

    from pydantic import ValidationError

    # a native crash (a segmentation fault in a CUDA, compiler or kernel library) prints every
    # thread's Python stack to stderr instead of ending the process without a word
    with contextlib.suppress(AttributeError, ValueError, OSError, RuntimeError):
        faulthandler.enable()  # fails only where stderr is no real file (some embedders)
    # bitsandbytes, which peft imports whenever it is installed, warns on CPUs with AVX512-bf16
    # that an optional 4-bit CPU kernel package ("kernels") is missing, and uses its own
    # fallback: a line on every run, 8-/4-bit or not, that asks the user for nothing needed
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if not sys.stderr.isatty():
        # weight-loading and conversion bars (huggingface_hub's, which transformers follows)
        # would fill a log file with carriage returns; our own stages print plain lines there
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    try:
        status = app(standalone_mode=False)  # typer's own errors come here, printed as ours
    except typer.TyperException as exc:  # a usage error: bad option value, unknown command ...
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer has printed the help already
            sys.exit(2)
        if os.environ.get("TUNEBENCH_DEBUG"):
            raise
        command = getattr(getattr(exc, "ctx", None), "command_path", None)
        hint = f" (see {command} --help)" if command else ""
        message = " ".join(exc.format_message().split())  # one line
        console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        console.print("[bold red]error:[/] aborted", highlight=False)
        sys.exit(1)
    except TunebenchError as exc:
        if os.environ.get("TUNEBENCH_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except ValidationError as exc:
        if os.environ.get("TUNEBENCH_DEBUG"):
            raise
        from tunebench.config import format_validation_error

        console.print(f"[bold red]error:[/] {format_validation_error('config', exc)}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume")
        sys.exit(130)
    if isinstance(status, int):  # typer.Exit(code) from a command, without standalone mode
        sys.exit(status)


if __name__ == "__main__":
    main()
