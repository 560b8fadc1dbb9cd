"""OpenAI fine-tuning as a tunebench provider (``provider: openai``).

Order of work, each step safe to interrupt:

1. export the run's prepared train/validation splits to OpenAI chat JSONL (``openai/*.jsonl``)
   and validate them by OpenAI's published rules;
2. print the estimated training cost; stop unless spending is allowed (``--yes`` or
   ``openai.yes: true``); read the API key (missing -> error, nothing uploaded);
3. upload the files (ids kept in ``openai_job.json``: a rerun does not upload again);
4. create the job and write its id to ``openai_job.json`` atomically right away: a rerun, or
   a run after a crash, follows that job and never creates (and pays for) a second one. A
   token sent as job metadata and stored *before* creation lets a rerun find a job whose
   creation succeeded but whose id was never stored;
5. follow status, events and checkpoints with a progress display until the job ends;
6. on success store the loss curve (from the job's result CSV) in ``metrics.jsonl`` and
   ``train_summary.json``; on failure mark the run failed and say how to start a new job.

Everything goes through the official ``openai`` SDK; tests point it at a local emulator.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tunebench.config import ExperimentConfig
from tunebench.cost import openai_model_price, per_1k, token_totals
from tunebench.errors import TunebenchError
from tunebench.inference.endpoint import describe_api_error, make_client, read_api_key
from tunebench.io import read_json, write_json, write_jsonl
from tunebench.providers.openai_export import (
    Estimate,
    estimate_cost,
    export_rows,
    validate_rows,
    write_export,
)
from tunebench.providers.registry import Provider
from tunebench.rundir import RunDir, now

STATE_FILE = "openai_job.json"
API_KEY_ENV = "OPENAI_API_KEY"
#: Test hook: ``after_create`` raises right after the job id is stored (simulates a crash).
FAULT_ENV = "TUNEBENCH_OPENAI_FAULT"
TERMINAL = ("succeeded", "failed", "cancelled")
SDK_RETRIES = 5


class InjectedFault(RuntimeError):
    """Raised by the ``$TUNEBENCH_OPENAI_FAULT`` test hook."""


# --- state ----------------------------------------------------------------------------------
def state_path(run: RunDir) -> Path:
    return run.root / STATE_FILE


def load_state(run: RunDir) -> dict[str, Any]:
    path = state_path(run)
    return read_json(path) if path.is_file() else {}


def save_state(run: RunDir, state: dict[str, Any]) -> None:
    state["updated"] = now()
    write_json(state_path(run), state)


def export_dir(run: RunDir) -> Path:
    return run.root / "openai"


def price_overrides(config: ExperimentConfig) -> dict[str, Any]:
    cfg = config.openai
    return {
        "training": cfg.training_price_per_1m,
        "input": cfg.input_price_per_1m,
        "output": cfg.output_price_per_1m,
        "date": cfg.price_date,
    }


# --- export and estimate ----------------------------------------------------------------------
def export_files(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """Write and validate ``openai/train.jsonl`` (+ ``validation.jsonl``) from the prepared splits."""
    from tunebench.tasks import get_task
    from tunebench.tasks.base import load_prepared

    if not run.stage_done("prepare"):
        raise TunebenchError(f"{run.root}: the prepare stage has not run (`tunebench prepare CONFIG`)")
    task = get_task(config.task)
    out: dict[str, Any] = {}
    for split in ("train", "validation"):
        examples = load_prepared(run, split) if run.prepared(split).is_file() else []
        rows = export_rows(task, examples)
        if split == "validation" and not rows:
            continue
        path = export_dir(run) / f"{split}.jsonl"
        write_export(path, rows)
        validate_rows(rows, config.openai.model, str(path), min_examples=10 if split == "train" else 1)
        out[split] = {"path": path, "rows": rows}
    return out


def estimate_for(config: ExperimentConfig, files: dict[str, Any]) -> Estimate:
    val = files.get("validation", {}).get("rows", [])
    return estimate_cost(
        files["train"]["rows"], val, config.openai.model, config.openai.n_epochs, price_overrides(config)
    )


# --- the provider ---------------------------------------------------------------------------
def train_openai(
    config: ExperimentConfig,
    run: RunDir,
    yes: bool = False,
    retry_failed: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Fine-tune through OpenAI (see the module docstring); returns ``train_summary.json``."""
    console = console or Console(stderr=True)
    cfg = config.openai
    state = load_state(run)
    if state.get("status") == "succeeded" and run.train_summary.is_file():
        return read_json(run.train_summary)
    if state.get("status") in ("failed", "cancelled"):
        if not retry_failed:
            raise TunebenchError(failed_message(state, run))
        state = start_over(state)
        save_state(run, state)

    files = export_files(config, run)
    estimate = estimate_for(config, files)
    for line in estimate.lines():
        console.print(line, highlight=False)
    if not state.get("job_id") and not (yes or cfg.yes):
        raise TunebenchError(
            f"not starting a paid OpenAI fine-tuning job (estimated ${estimate.cost_usd:,.2f}); "
            "rerun with --yes or set openai.yes: true to upload the files and start it"
        )
    key = read_api_key(API_KEY_ENV, cfg.base_url or "https://api.openai.com/v1", required=True)
    client = make_client(cfg.base_url, key, SDK_RETRIES)
    try:
        if not state.get("job_id"):
            state["estimate"] = estimate.as_dict()
            create_job(client, config, run, state, files, console)
        job = follow(client, run, state, cfg.poll_interval_s, console)
        if job.status == "succeeded":
            return finish(client, config, run, state, job, estimate, console)
    except (InjectedFault, KeyboardInterrupt):
        raise
    except TunebenchError:
        raise
    except Exception as exc:
        if _is_api_error(exc):
            raise TunebenchError(
                describe_api_error(exc, cfg.base_url, API_KEY_ENV, key)
                + f"; state kept in {state_path(run)}, rerun to resume"
            ) from None
        raise
    raise TunebenchError(failed_message(state, run))


def _is_api_error(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError)


def start_over(state: dict[str, Any]) -> dict[str, Any]:
    """``--retry-failed``: keep the failed job in the history and forget it (files are reused)."""
    history = [*state.get("previous_jobs", [])]
    history.append({k: state.get(k) for k in ("job_id", "status", "error", "created_at", "finished_at")})
    kept = {k: v for k, v in state.items() if k in ("files",)}
    return {**kept, "previous_jobs": history}


def failed_message(state: dict[str, Any], run: RunDir) -> str:
    job_id, status = state.get("job_id"), state.get("status")
    error = state.get("error") or {}
    reason = error.get("message") or "no error message from OpenAI"
    config = run.config_path
    return (
        f"OpenAI fine-tuning job {job_id} {status}: {reason}. The run is marked {status} in "
        f"{state_path(run)}; fix the cause, then `tunebench openai train {config} --yes --retry-failed` "
        "creates a NEW job (billed again)"
    )


# --- upload and create ------------------------------------------------------------------------
def upload_files(
    client: Any, run: RunDir, state: dict[str, Any], files: dict[str, Any], console: Console
) -> None:
    """Upload each file once; the stored id is reused while the file's content is unchanged."""
    import hashlib

    import openai

    stored = state.setdefault("files", {})
    for split, info in files.items():
        data = info["path"].read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        entry = stored.get(split)
        if entry and entry.get("sha256") == digest:
            try:
                client.files.retrieve(entry["id"])
                continue
            except openai.NotFoundError:
                console.print(f"uploaded {split} file {entry['id']} is gone; uploading again")
        uploaded = client.files.create(file=(f"{run.root.name}-{split}.jsonl", data), purpose="fine-tune")
        stored[split] = {"id": uploaded.id, "sha256": digest, "bytes": len(data), "uploaded": now()}
        save_state(run, state)
        console.print(f"uploaded {split}: {uploaded.id} ({len(data):,} bytes)")


def hyperparameters(config: ExperimentConfig) -> dict[str, Any]:
    cfg = config.openai
    return {
        "n_epochs": cfg.n_epochs,
        "batch_size": cfg.batch_size,
        "learning_rate_multiplier": cfg.learning_rate_multiplier,
    }


def create_job(
    client: Any,
    config: ExperimentConfig,
    run: RunDir,
    state: dict[str, Any],
    files: dict[str, Any],
    console: Console,
) -> None:
    """Create the job exactly once: adopt one created earlier (token), else create and store it."""
    cfg = config.openai
    token = state.get("request_token")
    if token:  # a previous attempt may have created the job without storing its id
        found = [j for j in client.fine_tuning.jobs.list(metadata={"tunebench_token": token}, limit=10).data]
        if found:
            adopt(run, state, found[0], console, "found the job an interrupted run created")
            return
    else:
        state["request_token"] = secrets.token_hex(8)
        save_state(run, state)
    upload_files(client, run, state, files, console)
    params: dict[str, Any] = {
        "model": cfg.model,
        "training_file": state["files"]["train"]["id"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters(config)}},
        "metadata": {"tunebench_token": state["request_token"], "tunebench_run": run.root.name[:64]},
    }
    if "validation" in state["files"]:
        params["validation_file"] = state["files"]["validation"]["id"]
    if cfg.seed is not None:
        params["seed"] = cfg.seed
    if cfg.suffix:
        params["suffix"] = cfg.suffix
    job = client.fine_tuning.jobs.create(**params)
    adopt(run, state, job, console, "created")
    if os.environ.get(FAULT_ENV) == "after_create":
        raise InjectedFault(f"{FAULT_ENV}=after_create: stopping after job {job.id} was created")


def adopt(run: RunDir, state: dict[str, Any], job: Any, console: Console, how: str) -> None:
    state.update(job_id=job.id, status=job.status, model=job.model, created_at=job.created_at)
    save_state(run, state)  # before anything else can fail: this is what prevents a second job
    console.print(f"{how} fine-tuning job {job.id} (stored in {state_path(run)})")


# --- follow ------------------------------------------------------------------------------------
def follow(client: Any, run: RunDir, state: dict[str, Any], poll_s: float, console: Console) -> Any:
    """Poll the job until it ends, printing new events; Ctrl-C offers to cancel it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    job_id = state["job_id"]
    seen: set[str] = set()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(f"{job_id}: starting", total=None)
            while True:
                job = client.fine_tuning.jobs.retrieve(job_id)
                if job.status != state.get("status") or job.error:
                    record_status(run, state, job)
                for event in new_events(client, job_id, seen):
                    progress.console.print(f"  [dim]{event.message}[/]", highlight=False)
                    step, total = event_step(event)
                    if total:
                        progress.update(bar, total=total)
                    if step is not None:
                        progress.update(bar, completed=step)
                progress.update(bar, description=f"{job_id}: {job.status}")
                if job.status in TERMINAL:
                    if job.status == "succeeded" and progress.tasks[0].total:
                        progress.update(bar, completed=progress.tasks[0].total)
                    return job
                time.sleep(poll_s)
    except KeyboardInterrupt:
        on_interrupt(client, run, state, console)
        raise


def record_status(run: RunDir, state: dict[str, Any], job: Any) -> None:
    state["status"] = job.status
    if job.error and getattr(job.error, "message", None):
        state["error"] = {"code": job.error.code, "message": job.error.message, "param": job.error.param}
    if job.finished_at:
        state["finished_at"] = job.finished_at
    save_state(run, state)


def new_events(client: Any, job_id: str, seen: set[str]) -> list[Any]:
    """Events not shown yet, oldest first (the API lists newest first)."""
    page = client.fine_tuning.jobs.list_events(job_id, limit=50)
    fresh = [e for e in page.data if e.id not in seen]
    seen.update(e.id for e in fresh)
    return sorted(reversed(fresh), key=lambda e: e.created_at)  # stable: same-second events keep order


def event_step(event: Any) -> tuple[int | None, int | None]:
    data = event.data if isinstance(event.data, dict) else {}
    step, total = data.get("step"), data.get("total_steps")
    return (int(step) if step is not None else None, int(total) if total else None)


def on_interrupt(client: Any, run: RunDir, state: dict[str, Any], console: Console) -> None:
    """Ctrl-C: on a terminal ask whether to cancel the remote job; otherwise leave it running."""
    job_id = state["job_id"]
    how = f"rerun `tunebench train {run.config_path} --yes` to follow it again"
    if sys.stdin is not None and sys.stdin.isatty():
        from rich.prompt import Confirm

        if Confirm.ask(f"Cancel the remote OpenAI job {job_id}?", default=False, console=console):
            job = client.fine_tuning.jobs.cancel(job_id)
            record_status(run, state, job)
            console.print(f"cancelled {job_id}")
            return
    console.print(
        f"job {job_id} keeps running at OpenAI; {how}, or cancel it with `tunebench openai cancel {run.root}`"
    )


def cancel_job(run: RunDir, base_url: str | None = None) -> str:
    """Cancel the run's remote job (``tunebench openai cancel``); returns its new status."""
    state = load_state(run)
    if not state.get("job_id"):
        raise TunebenchError(f"{state_path(run)}: no OpenAI job recorded for this run")
    key = read_api_key(API_KEY_ENV, base_url or "https://api.openai.com/v1", required=True)
    client = make_client(base_url, key, SDK_RETRIES)
    job = client.fine_tuning.jobs.cancel(state["job_id"])
    record_status(run, state, job)
    return str(job.status)


# --- results -------------------------------------------------------------------------------------
def read_result_csv(client: Any, file_id: str) -> list[dict[str, str]]:
    """The job's step metrics CSV (OpenAI serves it base64-encoded; plain text is accepted too)."""
    raw = client.files.content(file_id).read()
    text = raw.decode("utf-8", errors="replace")
    if not text.lstrip().lower().startswith("step"):
        try:
            text = base64.b64decode(raw, validate=False).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise TunebenchError(f"result file {file_id}: neither CSV nor base64 CSV") from None
    return list(csv.DictReader(io.StringIO(text)))


def _float(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        return None


def metrics_rows(
    rows: list[dict[str, str]], trained_tokens: int | None, n_epochs: int | None, wall_s: float | None
) -> list[dict[str, Any]]:
    """metrics.jsonl rows (step, split, loss, tokens, wall_time, as a LoRA run writes) from the result CSV.

    OpenAI reports no per-step token count or time: ``tokens`` and ``wall_time`` are the job's
    totals spread evenly over the steps and flagged with ``"interpolated": true``.
    """
    steps = [int(float(r["step"])) for r in rows if _float(r.get("step")) is not None]
    total = max(steps) if steps else 0
    out = []
    for row in rows:
        step_value = _float(row.get("step"))
        if step_value is None:
            continue
        step = int(step_value)
        share = step / total if total else 0.0
        base = {
            "step": step,
            "epoch": round(share * n_epochs, 4) if n_epochs else None,
            "tokens": round(share * trained_tokens) if trained_tokens else None,
            "wall_time": round(share * wall_s, 3) if wall_s else None,
            "lr": None,
            "interpolated": True,
        }
        train = _float(row.get("train_loss"))
        if train is not None:
            out.append(
                {**base, "split": "train", "loss": train, "accuracy": _float(row.get("train_accuracy"))}
            )
        valid = _float(row.get("valid_loss"))
        if valid is not None:
            acc = _float(row.get("valid_mean_token_accuracy"))
            out.append({**base, "split": "validation", "loss": valid, "accuracy": acc})
    return out


def finish(
    client: Any,
    config: ExperimentConfig,
    run: RunDir,
    state: dict[str, Any],
    job: Any,
    estimate: Estimate,
    console: Console,
) -> dict[str, Any]:
    """Store the loss curve, checkpoints and train_summary.json; record the train stage."""
    from tunebench.prices import openai_price

    rows = read_result_csv(client, job.result_files[0]) if job.result_files else []
    n_epochs = job.hyperparameters.n_epochs if job.hyperparameters else None
    n_epochs = n_epochs if isinstance(n_epochs, int) else estimate.epochs
    wall = float(job.finished_at - job.created_at) if job.finished_at and job.created_at else None
    metrics = metrics_rows(rows, job.trained_tokens, n_epochs, wall)
    write_jsonl(run.metrics_log, metrics)
    checkpoints = [
        {"step": c.step_number, "model": c.fine_tuned_model_checkpoint, "metrics": c.metrics.model_dump()}
        for c in client.fine_tuning.jobs.checkpoints.list(job.id).data
    ]
    validation = [m for m in metrics if m["split"] == "validation"]
    best = min(validation, key=lambda m: m["loss"]) if validation else None
    price = openai_price(config.openai.model, price_overrides(config))
    cost = round(job.trained_tokens * price.training / 1e6, 6) if job.trained_tokens else None
    summary = {
        "provider": "openai",
        "model": job.model,
        "steps": max((m["step"] for m in metrics), default=None),
        "epochs": n_epochs,
        "train_tokens": job.trained_tokens,
        "wall_time_s": wall,
        "gpu_type": None,
        "gpu_count": None,
        "peak_memory_gb": None,
        "best_validation_loss": best["loss"] if best else None,
        "best_step": best["step"] if best else None,
        "tokens_per_s": round(job.trained_tokens / wall, 3) if job.trained_tokens and wall else None,
        "skipped_steps": None,
        "job_id": job.id,
        "fine_tuned_model": job.fine_tuned_model,
        "trained_tokens": job.trained_tokens,
        "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
        "cost": {
            "usd": cost,
            "estimated_usd": estimate.cost_usd,
            "training_price_per_1m": price.training,
            "price_date": price.date,
            "price_source": price.source,
        },
        "checkpoints": checkpoints,
    }
    write_json(run.train_summary, summary)
    state.update(status="succeeded", fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
    save_state(run, state)
    run.record_stage(
        "train", provider="openai", job_id=job.id, fine_tuned_model=job.fine_tuned_model, wall_time_s=wall
    )
    console.print(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens:,} trained tokens)")
    return summary


# --- status ----------------------------------------------------------------------------------
def status(run: RunDir) -> dict[str, Any]:
    """What ``openai_job.json`` records (no network): for ``tunebench openai status``."""
    state = load_state(run)
    if not state:
        raise TunebenchError(f"{state_path(run)}: no OpenAI job recorded for this run")
    return {k: v for k, v in state.items() if k != "request_token"}


def fine_tuned_model(run: RunDir) -> str:
    """The OpenAI fine-tuned model name the train stage recorded."""
    if not run.train_summary.is_file():
        raise TunebenchError(f"{run.train_summary}: missing; run `tunebench train` for the OpenAI job first")
    name = read_json(run.train_summary).get("fine_tuned_model")
    if not name:
        raise TunebenchError(f"{run.train_summary}: field 'fine_tuned_model': missing (job not finished?)")
    return str(name)


def openai_cost(config: ExperimentConfig, run: RunDir, summary: dict[str, Any]) -> dict[str, Any]:
    model = config.openai.model
    price = openai_model_price(config)
    trained = summary.get("trained_tokens")
    out: dict[str, Any] = {
        "model": model,
        "fine_tuned_model": summary.get("fine_tuned_model"),
        "price": {
            "training_per_1m": price.training,
            "input_per_1m": price.input,
            "output_per_1m": price.output,
            "date": price.date,
            "source": price.source,
        },
        "training": {
            "trained_tokens": trained,
            "wall_time_s": summary.get("wall_time_s"),
            "cost_usd": round(trained * price.training / 1e6, 6) if trained is not None else None,
        },
        "inference": {},
    }
    for split in config.eval_splits:
        if not run.predictions(split).is_file():
            continue
        tokens = token_totals(run, split)
        usd = (tokens["prompt_tokens"] * price.input + tokens["completion_tokens"] * price.output) / 1e6
        info = run.manifest().get("stages", {}).get(f"predict:{split}", {})
        out["inference"][split] = {
            **tokens,
            "wall_time_s": info.get("wall_time_s"),
            "predictions_per_s": info.get("predictions_per_s"),
            "cost_usd": round(usd, 6),
            "cost_per_1k_predictions": per_1k(usd, tokens["n"]),
        }
    return out


class OpenAIProvider(Provider):
    name = "openai"
    trains = True
    priced_by = "tokens"
    runs_on = "OpenAI"

    def train(
        self, config: ExperimentConfig, run: RunDir, resume: bool = True, yes: bool = False
    ) -> dict[str, Any]:
        return train_openai(config, run, yes=yes)

    def predict(self, config: ExperimentConfig, run: RunDir, split: str) -> Path:
        from tunebench.providers.endpoint import request_predictions

        settings = {
            "base_url": config.openai.base_url,
            "model": fine_tuned_model(run),
            "api": "chat",
            "api_key_env": API_KEY_ENV,
            "max_concurrency": config.openai.max_concurrency,
            "max_retries": 5,
        }
        return request_predictions(config, run, split, settings)

    def cost(self, config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
        summary = read_json(run.train_summary) if run.train_summary.is_file() else {}
        record: dict[str, Any] = {"openai": openai_cost(config, run, summary)}
        record["training_cost_usd"] = record["openai"]["training"]["cost_usd"]
        return record


PROVIDER = OpenAIProvider()
