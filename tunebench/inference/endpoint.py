"""Predictions from an OpenAI-compatible server (OpenAI itself, vLLM, llama.cpp, ``tunebench serve``).

Requests go through the official ``openai`` SDK, whose client retries 408/409/429/5xx and
connection errors with exponential backoff and honours ``Retry-After`` (``max_retries``
bounds it). Up to ``max_concurrency`` requests run at once in threads. Each finished row is
appended (and fsynced) to ``<out>.partial`` so an interrupted or failed run keeps its work; a
rerun skips the ids already there, and the final file is written atomically in example order.

The API key is read from the environment variable named by ``api_key_env`` and passed to the
client in memory only: it is never written to a file, a log line or an error message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tunebench.errors import TunebenchError
from tunebench.io import append_jsonl, jsonl_lines, write_jsonl
from tunebench.tasks.base import Example, Task

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def read_api_key(api_key_env: str, base_url: str | None, required: bool = False) -> str:
    """The key from ``$api_key_env``; local servers that ignore keys get a placeholder unless ``required``."""
    key = os.environ.get(api_key_env, "").strip()
    if key:
        return key
    host = urlparse(base_url or "").hostname
    if host in LOCAL_HOSTS and not required:
        return "no-key-needed"
    where = base_url or "the OpenAI API"
    raise TunebenchError(f"${api_key_env} is not set: export your API key for {where} in that variable")


def make_client(base_url: str | None, api_key: str, max_retries: int, timeout_s: float = 60.0) -> Any:
    """An ``openai.OpenAI`` client with bounded retries (the SDK's own backoff and Retry-After)."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout_s)


def describe_api_error(exc: Exception, base_url: str | None, api_key_env: str, secret: str) -> str:
    """One line for an SDK error, with the key scrubbed (servers may echo part of it)."""
    import openai

    where = base_url or "api.openai.com"
    if isinstance(exc, openai.AuthenticationError):
        return f"{where} rejected the API key from ${api_key_env} (HTTP 401)"
    if isinstance(exc, openai.PermissionDeniedError):
        return f"{where} denied access with the key from ${api_key_env} (HTTP 403)"
    if isinstance(exc, openai.APITimeoutError):
        text = f"{where} timed out"
    elif isinstance(exc, openai.APIConnectionError):
        text = f"cannot reach {where}"
    elif isinstance(exc, openai.APIStatusError):
        text = f"{where} answered HTTP {exc.status_code}: {_message(exc)}"
    else:
        text = f"{where}: {type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text.replace(secret, "***") if secret else text


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", exc))


def partial_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".partial")


def load_done(out_path: Path) -> dict[str, dict[str, Any]]:
    """Rows already predicted (final file and partial log); a torn last line is ignored."""
    done: dict[str, dict[str, Any]] = {}
    for path in (out_path, partial_path(out_path)):
        if not path.is_file():
            continue
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: predicted again
            if isinstance(row, dict) and "id" in row:
                done[str(row["id"])] = row
    return done


def request_one(
    client: Any,
    task: Task,
    example: Example,
    *,
    model: str,
    api: str,
    max_new_tokens: int,
    temperature: float,
) -> dict[str, Any]:
    """One request -> one predictions row (the same fields as a local run's rows)."""
    if api == "chat":
        response = client.chat.completions.create(
            model=model,
            messages=task.chat_messages(example),
            temperature=temperature,
            max_tokens=max_new_tokens,
        )
        choice = response.choices[0]
        raw = choice.message.content or ""
    else:
        response = client.completions.create(
            model=model,
            prompt=example.prompt,
            temperature=temperature,
            max_tokens=max_new_tokens,
            stop=["\n"] if task.stops_on_newline else None,
        )
        choice = response.choices[0]
        raw = choice.text or ""
    usage = response.usage
    finish = choice.finish_reason if choice.finish_reason in ("stop", "length") else "stop"
    return {
        "id": example.id,
        "prompt": example.prompt,
        "prediction": task.postprocess(raw),
        "gold": example.completion,
        **task.eval_fields(example),
        "raw": raw,
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        "completion_tokens": getattr(usage, "completion_tokens", None),
        "finish_reason": finish,
    }


def predict_endpoint(
    examples: Sequence[Example],
    *,
    task: Task,
    base_url: str | None,
    model: str,
    api: str = "chat",
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 8,
    max_retries: int = 5,
    out_path: str | Path,
    resume: bool = True,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Predict ``examples`` through the endpoint into ``out_path``; returns timing and token usage.

    A request that still fails after the SDK's retries stops the run with a one-line
    :class:`TunebenchError`; rows finished so far stay in ``<out>.partial`` and a rerun resumes.
    """
    if api not in ("chat", "completions"):
        raise TunebenchError(f"endpoint api must be 'chat' or 'completions', got '{api}'")
    out = Path(out_path)
    key = read_api_key(api_key_env, base_url)
    done = load_done(out) if resume else {}
    if not resume:
        partial_path(out).unlink(missing_ok=True)
    todo = [ex for ex in examples if ex.id not in done]
    client = make_client(base_url, key, max_retries, timeout_s)
    start = time.perf_counter()
    _run_requests(
        client,
        task,
        todo,
        out,
        done,
        api_key_env,
        base_url,
        key,
        model,
        api,
        max_new_tokens,
        temperature,
        max_concurrency,
    )
    wall = time.perf_counter() - start
    rows = [done[ex.id] for ex in examples]
    write_jsonl(out, rows)
    partial_path(out).unlink(missing_ok=True)
    return {
        "wall_time_s": round(wall, 3),
        "n": len(rows),
        "n_requested": len(todo),
        "predictions_per_s": round(len(todo) / wall, 3) if todo and wall > 0 else None,
        "gpu_type": None,
        "gpu_count": 0,
        "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in rows),
        "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in rows),
        "model": model,
        "api": api,
    }


def _run_requests(
    client: Any,
    task: Task,
    todo: list[Example],
    out: Path,
    done: dict[str, dict[str, Any]],
    api_key_env: str,
    base_url: str | None,
    key: str,
    model: str,
    api: str,
    max_new_tokens: int,
    temperature: float,
    max_concurrency: int,
) -> None:
    """Run the requests ``max_concurrency`` at a time; the first hard failure stops the rest."""
    if not todo:
        return
    log = partial_path(out)
    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="endpoint")
    options = {"model": model, "api": api, "max_new_tokens": max_new_tokens, "temperature": temperature}
    pending: set[Future[dict[str, Any]]] = set()
    queue = iter(todo)
    failure: BaseException | None = None
    try:
        for example in queue:  # prime the pool; more are submitted as rows finish
            pending.add(pool.submit(request_one, client, task, example, **options))
            if len(pending) >= max_concurrency:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                error = future.exception()
                if error is not None:
                    failure = failure or error
                    continue
                row = future.result()
                done[row["id"]] = row
                append_jsonl(log, row)
            if failure is not None:
                break
            for example in queue:
                pending.add(pool.submit(request_one, client, task, example, **options))
                if len(pending) >= max_concurrency:
                    break
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for future in pending:  # requests already in flight when another one failed: keep them
            if future.done() and not future.cancelled() and future.exception() is None:
                row = future.result()
                done[row["id"]] = row
                append_jsonl(log, row)
    if failure is not None:
        reason = describe_api_error(failure, base_url, api_key_env, key)  # type: ignore[arg-type]
        kept = len(done)
        raise TunebenchError(
            f"{reason}; {kept} prediction(s) kept in {log if log.is_file() else out}; rerun to resume"
        )
