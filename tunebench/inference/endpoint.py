"""Predictions from an OpenAI-compatible server (OpenAI itself, vLLM, llama.cpp, ``tunebench serve``).

Requests go through the official ``openai`` SDK, whose client retries 408/409/429/5xx and
connection errors with exponential backoff and honours ``Retry-After`` (``max_retries``
bounds it). Up to ``max_concurrency`` requests run at once in threads. Each finished row is
appended (and fsynced) to ``<out>.partial`` so an interrupted or failed run keeps its work; a
rerun skips the ids already there, and the final file is written atomically in example order.

The API key is read from the environment variable named by ``api_key_env`` and passed to the
client in memory only: it is never written to a file, a log line or an error message. A key goes
only where it was meant to: ``$OPENAI_API_KEY`` to OpenAI's API unless a config names that
variable for another endpoint, and an endpoint that names no variable is sent no key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tunebench.errors import TunebenchError
from tunebench.inference.resume import append_rows, load_partial, partial_paths, payload_digest
from tunebench.io import read_json, read_jsonl, write_json, write_jsonl
from tunebench.tasks.base import Example, Task

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
OPENAI_API_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key"  # what a server that needs no key is sent (the SDK insists on some key)


def is_openai(base_url: str | None) -> bool:
    """Whether ``base_url`` is OpenAI's own API (None: the SDK's default, which is)."""
    if base_url is None:
        return True
    parsed = urlparse(base_url)
    return parsed.scheme == "https" and parsed.hostname == "api.openai.com"


def key_env_for(api_key_env: str | None, base_url: str | None) -> str | None:
    """The variable whose key goes to ``base_url``: the one named, else OpenAI's for OpenAI only.

    No other host ever gets ``$OPENAI_API_KEY`` unless the config names that variable itself.
    """
    if api_key_env:
        return api_key_env
    return OPENAI_KEY_ENV if is_openai(base_url) else None


def read_api_key(api_key_env: str | None, base_url: str | None, required: bool = False) -> str:
    """The key from ``$api_key_env``; local servers that ignore keys get a placeholder unless ``required``.

    ``api_key_env`` None: the endpoint takes no key, and a placeholder is sent.
    """
    if api_key_env is None:
        return NO_KEY
    key = os.environ.get(api_key_env, "").strip()
    if key:
        return key
    host = urlparse(base_url or "").hostname
    if host in LOCAL_HOSTS and not required:
        return NO_KEY
    where = base_url or "the OpenAI API"
    raise TunebenchError(f"${api_key_env} is not set: export your API key for {where} in that variable")


def make_client(base_url: str | None, api_key: str, max_retries: int, timeout_s: float = 60.0) -> Any:
    """An ``openai.OpenAI`` client with bounded retries (the SDK's own backoff and Retry-After).

    The URL is always passed: left out, the SDK would take ``$OPENAI_BASE_URL`` and could send
    the OpenAI key wherever that variable points.
    """
    from openai import OpenAI

    url = base_url or OPENAI_API_URL
    return OpenAI(base_url=url, api_key=api_key, max_retries=max_retries, timeout=timeout_s)


def describe_api_error(exc: Exception, base_url: str | None, api_key_env: str | None, secret: str) -> str:
    """One line for an SDK error, with the key scrubbed (servers may echo part of it)."""
    import openai

    where = base_url or "api.openai.com"
    if isinstance(exc, openai.AuthenticationError) and api_key_env is None:
        return f"{where} wants an API key (HTTP 401): name the variable holding it in endpoint.api_key_env"
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
    """Where finished rows wait until the whole split is done (the shared resume format)."""
    return partial_paths(out_path)[0]


def request_fingerprint(**options: Any) -> str:
    """What the answers depend on: another model, server or decoding setting starts over."""
    return payload_digest(options)


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
    api_key_env: str | None = None,
    max_concurrency: int = 8,
    max_retries: int = 5,
    out_path: str | Path,
    resume: bool = True,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Predict ``examples`` through the endpoint into ``out_path``; returns timing and token usage.

    A request that still fails after the SDK's retries stops the run with a one-line
    :class:`TunebenchError`; rows finished so far stay in the partial file (:mod:`.resume`) and a
    rerun with the same model, server and decoding settings resumes from them.
    """
    if api not in ("chat", "completions"):
        raise TunebenchError(f"endpoint api must be 'chat' or 'completions', got '{api}'")
    out = Path(out_path)
    api_key_env = key_env_for(api_key_env, base_url)
    key = read_api_key(api_key_env, base_url)
    partial, meta = partial_paths(out)
    key_of_run = request_fingerprint(
        base_url=base_url, model=model, api=api, max_new_tokens=max_new_tokens, temperature=temperature
    )
    if not resume:
        partial.unlink(missing_ok=True)
    done, _ = load_partial(partial, meta, key_of_run)
    if resume and out.is_file() and meta.is_file() and read_json(meta).get("fingerprint") == key_of_run:
        # an earlier finished request run of the same settings (a split grown since, say)
        done = {**{str(r["id"]): r for r in read_jsonl(out, required=("id",), allow_empty=True)}, **done}
    write_json(meta, {"fingerprint": key_of_run, "generation_s": 0.0})
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
    partial.unlink(missing_ok=True)  # the fingerprint stays beside the file for the next rerun
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
    api_key_env: str | None,
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

    def keep(row: dict[str, Any]) -> None:
        done[row["id"]] = row
        append_rows(log, [row])

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
                keep(future.result())
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
                keep(future.result())
    if failure is not None:
        reason = describe_api_error(failure, base_url, api_key_env, key)  # type: ignore[arg-type]
        kept = len(done)
        raise TunebenchError(
            f"{reason}; {kept} prediction(s) kept in {log if log.is_file() else out}; rerun to resume"
        )
