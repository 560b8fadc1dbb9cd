"""``tunebench serve RUN_DIR``: a fine-tuned run behind an OpenAI-compatible HTTP API.

The served model name is the run name, so a client written for a fine-tuned OpenAI model
(``client.chat.completions.create(model=..., messages=...)``) works unchanged against
``base_url="http://HOST:PORT/v1"``.

Endpoints (OpenAI wire format: ``id``, ``object``, ``created``, ``model``, ``choices`` with
``finish_reason`` ``stop``/``length``, ``usage``):

* ``GET /v1/models``: the one model.
* ``POST /v1/completions``: ``prompt`` (a string or a list of strings) -> raw continuation.
* ``POST /v1/chat/completions``: ``messages`` -> assistant message. Messages are turned into the
  model's prompt in one of two ways:

  1. **Task format.** When the messages have exactly the shape of the run's task chat format
     (``task.chat_messages``: for SQL a system message = instruction + ``### Context:`` + schema
     and a user message = the question), the fields are read back out of them and the prompt is
     the task's own training prompt. So the same request that goes to a fine-tuned GPT model
     reaches this model in the format it was fine-tuned on. The trailing newline the model
     learned to end its answer with is removed from the content.
  2. **Otherwise** the tokenizer's chat template renders them (``add_generation_prompt``); a
     tokenizer without one answers 400.

Parameters: ``max_tokens`` (default: the run's ``generation.max_new_tokens``), ``temperature``
(default: the run's decoding, greedy for the study; 0 = greedy), ``top_p``, ``n``, ``stop``
(string or list; the stop string is left out of the text, as OpenAI does), ``seed``. Streaming
is not supported (400).

Concurrent requests with the same decoding settings are **micro-batched**: a worker thread
gathers what arrives within ``batch_wait_ms`` (up to ``generation.batch_size`` prompts) into
one ``generate`` call, so 8 parallel clients cost about one batched call instead of 8.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tunebench.errors import TunebenchError
from tunebench.inference.local import (
    FINISH_LENGTH,
    LocalGenerator,
    Result,
    SamplingParams,
    generate_adaptive,
    load_generator,
)
from tunebench.rundir import RunDir
from tunebench.tasks import Example, Task, get_task


# --- prompt from chat messages -------------------------------------------------------------
class _Placeholders(dict):
    """Any field name maps to a marker, so ``task.chat_messages`` can be run on a probe example."""

    def __missing__(self, key: str) -> str:
        value = f"\x00{key}\x00"
        self[key] = value
        return value


PROMPT_MARK = "\x00__prompt__\x00"
_MARK = re.compile("\x00(\\w+)\x00")


def chat_pattern(task: Task) -> list[tuple[str, re.Pattern[str]]]:
    """The task's chat messages as (role, regex with one named group per field)."""
    probe = Example(id="probe", prompt=PROMPT_MARK, completion="", fields=_Placeholders())
    pattern = []
    for message in task.chat_messages(probe):
        parts, seen, last = [], set(), 0
        for match in _MARK.finditer(message["content"]):
            parts.append(re.escape(message["content"][last : match.start()]))
            name = match.group(1)
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*)")
            seen.add(name)
            last = match.end()
        parts.append(re.escape(message["content"][last:]))
        pattern.append((message["role"], re.compile("".join(parts), re.DOTALL)))
    return pattern


def task_prompt(
    task: Task, pattern: list[tuple[str, re.Pattern[str]]], messages: list[dict[str, Any]]
) -> str | None:
    """The task's training prompt when ``messages`` are in the task's chat format, else None."""
    if len(messages) != len(pattern):
        return None
    fields: dict[str, str] = {}
    for (role, regex), message in zip(pattern, messages, strict=True):
        content = message.get("content")
        if message.get("role") != role or not isinstance(content, str):
            return None
        match = regex.fullmatch(content)
        if match is None:
            return None
        fields.update(match.groupdict())
    if "__prompt__" in fields:
        return fields["__prompt__"]
    try:
        return task.render_prompt(fields)
    except (KeyError, TypeError, ValueError):
        return None


# --- micro-batching ---------------------------------------------------------------------------
@dataclass
class Job:
    prompts: list[str]
    params: SamplingParams
    future: concurrent.futures.Future[list[Result]] = field(default_factory=concurrent.futures.Future)


class MicroBatcher:
    """One worker thread owns the model; concurrent jobs with equal settings share a generate call."""

    def __init__(self, generator: LocalGenerator, max_batch: int, wait_s: float) -> None:
        self.generator = generator
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.batches = 0  # generate calls made (requests served = more, when they were grouped)
        self.thread = threading.Thread(target=self._loop, name="tunebench-generate", daemon=True)
        self.thread.start()

    def submit(self, prompts: list[str], params: SamplingParams) -> concurrent.futures.Future[list[Result]]:
        job = Job(prompts, params)
        self.jobs.put(job)
        return job.future

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        pending: list[Job] = []
        while True:
            if not pending:
                job = self.jobs.get()
                if job is None:
                    return
                pending.append(job)
            deadline = time.monotonic() + self.wait_s
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    job = self.jobs.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)  # finish what is pending, then stop
                    break
                pending.append(job)
            group, pending = self._take_group(pending)
            self._run(group)

    def _take_group(self, pending: list[Job]) -> tuple[list[Job], list[Job]]:
        params = pending[0].params
        group, rest, count = [], [], 0
        for job in pending:
            fits = count + len(job.prompts) <= self.max_batch or not group
            if job.params == params and fits:
                group.append(job)
                count += len(job.prompts)
            else:
                rest.append(job)
        return group, rest

    def _run(self, group: list[Job]) -> None:
        prompts = [p for job in group for p in job.prompts]
        self.batches += 1
        try:
            results = generate_adaptive(
                self.generator, prompts, group[0].params, [f"prompt {i}" for i in range(len(prompts))]
            )
        except Exception as exc:  # every waiting request must hear about it, and the worker lives on
            for job in group:
                job.future.set_exception(exc)
            return
        start = 0
        for job in group:
            job.future.set_result(results[start : start + len(job.prompts)])
            start += len(job.prompts)


# --- the app ----------------------------------------------------------------------------------
def create_app(
    run_dir: str | Path,
    *,
    device: str | None = None,
    batch_wait_ms: float = 5.0,
    generator: LocalGenerator | None = None,
) -> FastAPI:
    """The FastAPI app serving ``run_dir`` (provider local: base + adapter, or the fully
    fine-tuned model; base: the base model)."""
    run = RunDir(Path(run_dir))
    config = run.load_config()
    if config.provider not in ("local", "base"):
        raise TunebenchError(f"{run.config_path}: provider '{config.provider}' has no local model to serve")
    task = get_task(config.task)
    gen = config.generation
    if generator is None:
        method = getattr(getattr(config, "training", None), "method", "lora")
        adapter = run.trained_dir(method) if config.provider == "local" else None
        generator = load_generator(
            config.model,
            adapter,
            merge=gen.merge_adapter,
            device=device,
            long_prompts=gen.long_prompts,
            cache_implementation=gen.cache_implementation,
        )
    batcher = MicroBatcher(generator, max_batch=gen.batch_size, wait_s=batch_wait_ms / 1000)
    pattern = chat_pattern(task)
    name = config.name
    created = int(time.time())

    app = FastAPI(title=f"tunebench serve: {name}")
    app.state.batcher = batcher
    app.state.generator = generator

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg', 'invalid request')}", where or None)

    def params_from(body: dict[str, Any], stop_on_newline: bool = False) -> SamplingParams | JSONResponse:
        checked = check_params(body, gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_p)
        if isinstance(checked, str):
            return error(400, checked)
        return SamplingParams(stop_on_newline=stop_on_newline, **checked)

    async def run_prompts(prompts: list[str], params: SamplingParams) -> list[Result] | JSONResponse:
        try:
            return await asyncio.wrap_future(batcher.submit(prompts, params))
        except TunebenchError as exc:
            return error(400, str(exc))

    def check_model(body: dict[str, Any]) -> JSONResponse | None:
        if body.get("model") is None:  # OpenAI's wording, plus what to send
            return error(400, f"you must provide a model parameter; this server serves '{name}'", "model")
        if body.get("model") != name:
            return error(
                404, f"The model '{body.get('model')}' does not exist; this server serves '{name}'", "model"
            )
        return None

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name, created)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> Any:
        if model_id != name:
            return error(404, f"The model '{model_id}' does not exist", "model")
        return model_card(name, created)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await json_body(request)
        if isinstance(body, str):
            return error(400, body)
        if (problem := check_model(body)) is not None:
            return problem
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            return error(400, "prompt: expected a string or a list of strings", "prompt")
        params = params_from(body)
        if isinstance(params, JSONResponse):
            return params
        results = await run_prompts(prompts, params)
        if isinstance(results, JSONResponse):
            return results
        choices = [
            {"index": k, "text": c.text, "finish_reason": wire_reason(c.finish_reason), "logprobs": None}
            for k, c in enumerate(c for r in results for c in r.completions)
        ]
        return envelope("cmpl", "text_completion", name, choices, results)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await json_body(request)
        if isinstance(body, str):
            return error(400, body)
        if (problem := check_model(body)) is not None:
            return problem
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error(400, "messages: expected a non-empty list of {role, content} objects", "messages")
        # a run prompted in the model's chat format (generation.prompt_format: chat) was never
        # given the task's plain prompt: its messages go through the chat template as they are
        prompt = task_prompt(task, pattern, messages) if gen.prompt_format == "plain" else None
        in_task_format = prompt is not None
        if prompt is None:
            prompt = template_prompt(generator.tokenizer, messages)
            if prompt is None:
                return error(
                    400,
                    "messages are not in the task's chat format and the tokenizer has no chat template",
                    "messages",
                )
        params = params_from(body)
        if isinstance(params, JSONResponse):
            return params
        results = await run_prompts([prompt], params)
        if isinstance(results, JSONResponse):
            return results
        choices = []
        for k, c in enumerate(results[0].completions):
            text = c.text
            if in_task_format and c.finish_reason != FINISH_LENGTH:
                text = text.removesuffix(task.completion_suffix)
            message = {"role": "assistant", "content": text}
            choices.append(
                {
                    "index": k,
                    "message": message,
                    "finish_reason": wire_reason(c.finish_reason),
                    "logprobs": None,
                }
            )
        return envelope("chatcmpl", "chat.completion", name, choices, results)

    return app


async def json_body(request: Any) -> dict[str, Any] | str:
    try:
        body = await request.json()
    except ValueError:
        return "request body is not valid JSON"
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if body.get("stream"):
        return "stream: streaming is not supported by tunebench serve"
    return body


def check_params(
    body: dict[str, Any], max_new_tokens: int, do_sample: bool, temperature: float, top_p: float
) -> dict[str, Any] | str:
    """OpenAI request parameters -> :class:`SamplingParams` fields, or an error message."""
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens")) or max_new_tokens
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: expected a positive integer"
    n = body.get("n") or 1
    if not isinstance(n, int) or not 1 <= n <= 128:
        return "n: expected an integer from 1 to 128"
    temp = body.get("temperature")
    temp = (temperature if do_sample else 0.0) if temp is None else temp
    if not isinstance(temp, (int, float)) or not 0 <= temp <= 2:
        return "temperature: expected a number from 0 to 2"
    nucleus = body.get("top_p", top_p)
    if not isinstance(nucleus, (int, float)) or not 0 < nucleus <= 1:
        return "top_p: expected a number in (0, 1]"
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        return "stop: expected a string or a list of up to 4 strings"
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        return "seed: expected an integer"
    sampling = temp > 0
    return {
        "max_new_tokens": max_tokens,
        "do_sample": sampling,
        "temperature": float(temp) if sampling else 1.0,
        "top_p": float(nucleus) if sampling else 1.0,
        "n": n,
        "stop": tuple(s for s in stops if s),
        "seed": seed,
    }


def template_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str | None:
    """Messages rendered by the tokenizer's chat template (None when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def wire_reason(reason: str) -> str:
    """OpenAI knows ``stop`` and ``length``; a first-line stop is a stop."""
    return "length" if reason == FINISH_LENGTH else "stop"


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunebench"}


def envelope(
    prefix: str, kind: str, name: str, choices: list[dict[str, Any]], results: list[Result]
) -> dict[str, Any]:
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(c.completion_tokens for r in results for c in r.completions)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the run's model and serve it until interrupted."""
    import uvicorn

    app = create_app(run_dir)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        app.state.batcher.close()
