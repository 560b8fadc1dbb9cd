"""``tunebench serve RUN_DIR``: a fine-tuned run behind an OpenAI-compatible HTTP API.

The served model name is the run name, so a client written for a fine-tuned OpenAI model
(``client.chat.completions.create(model=..., messages=...)``) works unchanged against
``base_url="http://HOST:PORT/v1"``.

Endpoints (OpenAI wire format: ``id``, ``object``, ``created``, ``model``, ``choices`` with
``finish_reason`` ``stop``/``length``, ``usage``; errors as ``{"error": {message, type, param,
code}}`` with a 4xx status for every bad request):

* ``GET /v1/models``: the one model, with how chat messages become its prompt (``tunebench``).
* ``POST /v1/completions``: ``prompt`` (a string or a list of strings) -> raw continuation.
* ``POST /v1/chat/completions``: ``messages`` (``content`` a string or a list of text parts)
  -> assistant message. Messages are turned into the model's prompt in one of two ways:

  1. **Task format.** When the messages have exactly the shape of the run's task chat format
     (``task.chat_messages``: for SQL a system message = instruction + ``### Context:`` + schema
     and a user message = the question), the fields are read back out of them and the prompt is
     the task's own training prompt. So the same request that goes to a fine-tuned GPT model
     reaches this model in the format it was fine-tuned on. The trailing newline the model
     learned to end its answer with is removed from the content.
  2. **Otherwise** the tokenizer's chat template renders them (``add_generation_prompt``); a
     tokenizer without one answers 400. A LoRA task model was trained on one kind of prompt
     only: to anything else it answers in its task's format, or with little or nothing.

Parameters: ``max_tokens`` (default: the run's ``generation.max_new_tokens``), ``temperature``
(default: the run's decoding, greedy for the study; 0 = greedy), ``top_p``, ``n``, ``stop``
(string or list; the stop string is left out of the text, as OpenAI does), ``seed``, ``stream``
(server-sent events, sent once the answer is complete). ``logprobs`` is refused (400).

Limits (each an option of ``tunebench serve``): sequences per request (prompts x ``n``), prompt
tokens, waiting requests (429 beyond), seconds a request may wait and run (504 beyond), and an
optional API key (``Authorization: Bearer``; 401 otherwise).

**Scheduling.** One worker thread owns the model. It takes every waiting request at once (a
*round*), groups them by decoding settings and by prompt length, and runs the groups shortest
first, each as one batched ``generate`` call of up to ``generation.batch_size`` sequences. So
short requests are not padded to, or queued behind, a long one that arrived with them, and a
long one waits at most one round. After a round the freed memory is handed back to the system.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

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

DEFAULT_MAX_SEQUENCES = 256
DEFAULT_MAX_QUEUE = 64
DEFAULT_TIMEOUT_S = 300.0
BEARER = HTTPBearer(auto_error=False)  # module level: FastAPI resolves the annotation in these globals


# --- errors -----------------------------------------------------------------------------------
class ApiError(Exception):
    """A request the server answers with an OpenAI-shaped error."""

    TYPES: ClassVar[dict[int, str]] = {
        401: "authentication_error",
        429: "rate_limit_error",
        504: "timeout_error",
    }

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        # a message may quote the request, which can hold text that is not valid UTF-8
        message = self.message.encode("utf-8", "backslashreplace").decode("utf-8")
        body = {"error": {"message": message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure, expected or not, reaches the client as JSON in OpenAI's error shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors() or [{}]
        if errors[0].get("type") == "json_invalid":
            return ApiError(
                400, f"the body is not valid JSON: {errors[0].get('ctx', {}).get('error')}"
            ).response()
        # in a union (a string or a list of parts) the deepest error says most
        paths = [[str(p) for p in e.get("loc", ()) if not _union_tag(p)] for e in errors]
        deepest = max(range(len(errors)), key=lambda i: len(paths[i]))
        where = ".".join(paths[deepest])
        message = str(errors[deepest].get("msg", "invalid request")).removeprefix("Value error, ")
        return ApiError(400, f"{where}: {message}" if where else message, where or None).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}").response()


def _union_tag(part: str | int) -> bool:
    """Whether a pydantic error location part names a union member (``str``, ``list[TextPart]``)."""
    return isinstance(part, str) and (part in ("body", "str", "int", "bool", "float") or "[" in part)


# --- request bodies ---------------------------------------------------------------------------
def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("invalid Unicode (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
Prompt = Annotated[Text, Field(min_length=1)]


class Body(BaseModel):
    # strict: `true` is not 1, "5" is not 5; unknown OpenAI parameters are ignored
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """The parameters both endpoints share."""

    model: Text | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> None:
        if value is not None and value is not False:
            raise ValueError("log probabilities are not supported by tunebench serve")
        return None


class CompletionRequest(Sampling):
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1)]


class TextPart(Body):
    type: Literal["text"]
    text: Text


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        """The message with its text parts joined, as templates and the task format read it."""
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


# --- prompt from chat messages -------------------------------------------------------------
class _Placeholders(dict):
    """Any field name maps to a marker, so ``task.chat_messages`` can be run on a probe example."""

    def __init__(self, wrap: str = "\x00{}\x00") -> None:
        super().__init__()
        self.wrap = wrap

    def __missing__(self, key: str) -> str:
        value = self.wrap.format(key)
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


def task_chat_format(task: Task) -> list[dict[str, str]]:
    """The task's chat messages with ``{field}`` where a request puts its own text (for /v1/models)."""
    probe = Example(id="probe", prompt="{prompt}", completion="", fields=_Placeholders("{{{}}}"))
    return task.chat_messages(probe)


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


# --- scheduling -------------------------------------------------------------------------------
@dataclass
class Job:
    prompts: list[str]
    tokens: int  # the longest prompt's length in tokens (rounds run short jobs first)
    params: SamplingParams
    future: concurrent.futures.Future[list[Result]] = field(default_factory=concurrent.futures.Future)

    @property
    def sequences(self) -> int:
        return len(self.prompts) * self.params.n


def plan_round(jobs: list[Job], max_batch: int) -> list[list[Job]]:
    """A round's jobs as generate calls: equal settings, similar lengths, shortest first.

    A group closes when it would exceed ``max_batch`` sequences, or when the next job's prompt is
    more than twice as long as the group's shortest (plus 32 tokens): padding then costs at most
    about as much as the useful work, and short prompts never pay for a long one.
    """
    groups: list[list[Job]] = []
    by_params: dict[SamplingParams, list[Job]] = {}
    for job in jobs:
        by_params.setdefault(job.params, []).append(job)
    for same in by_params.values():
        group: list[Job] = []
        for job in sorted(same, key=lambda j: j.tokens):
            too_many = sum(j.sequences for j in group) + job.sequences > max_batch
            too_long = bool(group) and job.tokens > 2 * group[0].tokens + 32
            if group and (too_many or too_long):
                groups.append(group)
                group = []
            group.append(job)
        groups.append(group)
    return sorted(groups, key=lambda g: g[-1].tokens)


def release_memory() -> None:
    """Hand memory freed by a large batch back to the system (CUDA cache, glibc's heap).

    No ``gc.collect()``: tensors are freed when their last reference goes, and a full collection
    with a model loaded costs about 0.4 s, which the next request would wait for.
    """
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator keeps its own policy
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Scheduler:
    """One worker thread owns the model and runs the waiting requests round by round."""

    def __init__(self, generator: LocalGenerator, max_batch: int, wait_s: float, max_queue: int) -> None:
        self.generator = generator
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.ready = threading.Condition()
        self.closing = False
        self.busy = False  # a generate call is running
        self.batches = 0  # generate calls made (requests served = more, when they were grouped)
        self.thread = threading.Thread(target=self._loop, name="tunebench-generate", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future[list[Result]]:
        with self.ready:
            live = [j for j in self.waiting if not j.future.cancelled()]  # timed-out ones leave the queue
            if len(live) >= self.max_queue:
                raise ApiError(429, f"the server is busy: {self.max_queue} requests are waiting; retry later")
            self.waiting = deque([*live, job])
            self.ready.notify()
        return job.future

    def close(self) -> None:
        with self.ready:
            self.closing = True
            self.ready.notify()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while jobs := self._gather():
            for group in plan_round(jobs, self.max_batch):
                self._run(group)
            if not self.waiting:
                release_memory()

    def _gather(self) -> list[Job]:
        """Every waiting job, once the first has waited ``wait_s`` for company ([] when closing)."""
        with self.ready:
            self.ready.wait_for(lambda: self.waiting or self.closing)
            if self.waiting and self.wait_s > 0:
                self.ready.wait_for(lambda: self.closing, timeout=self.wait_s)
            jobs, self.waiting = list(self.waiting), deque()
        return jobs

    def _run(self, group: list[Job]) -> None:
        group = [job for job in group if job.future.set_running_or_notify_cancel()]  # timed out: gone
        if not group:
            return
        prompts = [p for job in group for p in job.prompts]
        self.batches += 1
        self.busy = True
        try:
            results = generate_adaptive(
                self.generator, prompts, group[0].params, [f"prompt {i}" for i in range(len(prompts))]
            )
        except Exception as exc:  # every waiting request must hear about it, and the worker lives on
            for job in group:
                job.future.set_exception(exc)
            return
        finally:
            self.busy = False
        start = 0
        for job in group:
            job.future.set_result(results[start : start + len(job.prompts)])
            start += len(job.prompts)


# --- the app ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the options of ``tunebench serve``)."""

    max_sequences: int = DEFAULT_MAX_SEQUENCES
    max_prompt_tokens: int | None = None  # None: the model's context
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    api_key: str | None = None


def create_app(
    run_dir: str | Path,
    *,
    device: str | None = None,
    batch_wait_ms: float = 5.0,
    generator: LocalGenerator | None = None,
    limits: Limits = Limits(),
) -> FastAPI:
    """The FastAPI app serving ``run_dir`` (provider local: base + adapter, or the fully
    fine-tuned model; base: the base model)."""
    run = RunDir(Path(run_dir))
    config = run.load_config()
    if "model" not in config.own_sections:  # an API or a vote: no weights of ours
        raise TunebenchError(f"{run.config_path}: provider '{config.provider}' has no local model to serve")
    task = get_task(config.task)
    gen = config.generation
    if generator is None:
        training = getattr(config, "training", None)  # a run that trains serves what it trained
        adapter = run.trained_dir(training.method) if training is not None else None
        generator = load_generator(
            config.model,
            adapter,
            merge=gen.merge_adapter,
            device=device,
            long_prompts=gen.long_prompts,
            cache_implementation=gen.cache_implementation,
        )
    scheduler = Scheduler(generator, gen.batch_size, batch_wait_ms / 1000, limits.max_queue)
    pattern = chat_pattern(task)
    name = config.name
    created = int(time.time())
    max_prompt_tokens = min(limits.max_prompt_tokens or generator.max_context, generator.max_context)
    longest_token = max(map(len, generator.tokenizer.get_vocab()))  # in characters (byte-level: bytes)

    app = FastAPI(title=f"tunebench serve: {name}", dependencies=[Depends(bearer_check(limits.api_key))])
    app.state.batcher = scheduler
    app.state.generator = generator
    install_error_handlers(app)

    def card() -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "tunebench",
            "tunebench": {
                "task": config.task.name,
                "context_length": generator.max_context,
                "max_prompt_tokens": max_prompt_tokens,
                "max_sequences_per_request": limits.max_sequences,
                # messages of exactly this shape get the task's training prompt; any other
                # messages go through chat_template (null: such messages are refused)
                "task_chat_format": task_chat_format(task) if gen.prompt_format == "plain" else None,
                "chat_template": getattr(generator.tokenizer, "chat_template", None) or None,
            },
        }

    def check_model(body: Sampling) -> None:
        if body.model is None:  # OpenAI's wording, plus what to send
            raise ApiError(400, f"you must provide a model parameter; this server serves '{name}'", "model")
        if body.model != name:
            raise ApiError(
                404, f"The model '{body.model}' does not exist; this server serves '{name}'", "model"
            )

    def params_for(body: Sampling, prompts: list[str]) -> SamplingParams:
        if len(prompts) * body.n > limits.max_sequences:
            raise ApiError(
                400,
                f"{len(prompts)} prompt(s) x n={body.n} = {len(prompts) * body.n} sequences, more than "
                f"this server's limit of {limits.max_sequences} per request",
                "n",
            )
        return sampling_params(body, gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_p)

    async def answer(prompts: list[str], params: SamplingParams) -> list[Result]:
        if params.max_new_tokens >= generator.max_context:
            raise ApiError(
                400,
                f"max_tokens: must be less than the model's context of {generator.max_context}",
                "max_tokens",
            )
        lengths = await run_in_threadpool(
            prompt_lengths, generator.tokenizer, prompts, max_prompt_tokens, longest_token
        )
        future = scheduler.submit(Job(prompts, max(lengths), params))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
        except TimeoutError:
            future.cancel()  # not started yet: the worker skips it
            raise ApiError(
                504, f"the request took longer than {limits.timeout_s:g} s", code="timeout"
            ) from None
        except TunebenchError as exc:
            raise ApiError(400, str(exc)) from None

    json_only = [Depends(require_json)]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> Any:
        if model_id != name:
            raise ApiError(404, f"The model '{model_id}' does not exist", "model")
        return card()

    @app.post("/v1/completions", dependencies=json_only)
    async def completions(body: CompletionRequest) -> Any:
        check_model(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        params = params_for(body, prompts)
        results = await answer(prompts, params)
        choices = [
            {"index": k, "text": c.text, "finish_reason": wire_reason(c.finish_reason), "logprobs": None}
            for k, c in enumerate(c for r in results for c in r.completions)
        ]
        return reply(body, envelope("cmpl", "text_completion", name, choices, results))

    @app.post("/v1/chat/completions", dependencies=json_only)
    async def chat_completions(body: ChatRequest) -> Any:
        check_model(body)
        messages = [m.as_dict() for m in body.messages]
        # a run prompted in the model's chat format (generation.prompt_format: chat) was never
        # given the task's plain prompt: its messages go through the chat template as they are
        prompt = task_prompt(task, pattern, messages) if gen.prompt_format == "plain" else None
        in_task_format = prompt is not None
        if prompt is None:
            prompt = template_prompt(generator.tokenizer, messages)
        params = params_for(body, [prompt])
        results = await answer([prompt], params)
        choices = []
        for k, c in enumerate(results[0].completions):
            text = c.text
            if in_task_format and c.finish_reason != FINISH_LENGTH:
                text = text.removesuffix(task.completion_suffix)
            choices.append(
                {
                    "index": k,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": wire_reason(c.finish_reason),
                    "logprobs": None,
                }
            )
        return reply(body, envelope("chatcmpl", "chat.completion", name, choices, results))

    return app


def bearer_check(api_key: str | None) -> Any:
    """A dependency that lets a request in only with ``Authorization: Bearer <api_key>`` (if set)."""

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(
                401, "invalid or missing API key: send Authorization: Bearer <key>", code="invalid_api_key"
            )

    return check


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got '{media or 'none'}'")


def prompt_lengths(tokenizer: Any, prompts: list[str], limit: int, longest_token: int) -> list[int]:
    """Tokens per prompt; 400 when one is over ``limit``.

    No token spells more than ``longest_token`` characters, so a prompt longer than ``limit``
    times that is refused without spending time on tokenizing it.
    """
    for index, prompt in enumerate(prompts):
        if len(prompt) > limit * longest_token:
            raise ApiError(
                400, f"prompt {index} has more tokens than this server's limit of {limit}", "prompt"
            )
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    for index, length in enumerate(lengths):
        if length > limit:
            raise ApiError(
                400, f"prompt {index} has {length} tokens, more than this server's limit of {limit}", "prompt"
            )
    return lengths


def sampling_params(
    body: Sampling, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float
) -> SamplingParams:
    """A validated request's parameters (the run's own decoding where it leaves them out)."""
    max_tokens = body.max_tokens or body.max_completion_tokens or max_new_tokens
    temp = (temperature if do_sample else 0.0) if body.temperature is None else body.temperature
    nucleus = top_p if body.top_p is None else body.top_p
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    sampling = temp > 0
    return SamplingParams(
        max_new_tokens=max_tokens,
        do_sample=sampling,
        temperature=float(temp) if sampling else 1.0,
        top_p=float(nucleus) if sampling else 1.0,
        n=body.n,
        stop=tuple(s for s in stops if s),
        seed=body.seed,
    )


def template_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Messages rendered by the tokenizer's chat template (400 when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(
            400,
            "messages are not in the task's chat format and the tokenizer has no chat template",
            "messages",
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # templates raise their own errors (e.g. "roles must alternate")
        raise ApiError(400, f"messages: the chat template refused them: {exc}", "messages") from None


def wire_reason(reason: str) -> str:
    """OpenAI knows ``stop`` and ``length``; a first-line stop is a stop."""
    return "length" if reason == FINISH_LENGTH else "stop"


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


def reply(body: Sampling, response: dict[str, Any]) -> Any:
    """The response as it is, or as server-sent events when the request asked to stream."""
    if not body.stream:
        return response
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def events() -> AsyncIterator[str]:
        for chunk in stream_chunks(response, include_usage):
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def stream_chunks(response: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """A finished response as OpenAI's stream: per choice its text, then its finish reason."""
    chat = response["object"] == "chat.completion"
    head = {k: response[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    for choice in response["choices"]:
        if chat:
            delta = {"role": "assistant", "content": choice["message"]["content"]}
            parts = [
                {"delta": delta, "finish_reason": None},
                {"delta": {}, "finish_reason": choice["finish_reason"]},
            ]
        else:
            parts = [
                {"text": choice["text"], "finish_reason": None},
                {"text": "", "finish_reason": choice["finish_reason"]},
            ]
        for part in parts:
            yield {**head, "choices": [{"index": choice["index"], "logprobs": None, **part}]}
    if include_usage:
        yield {**head, "choices": [], "usage": response["usage"]}


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened before the model loads so a busy port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise TunebenchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits()) -> None:
    """Load the run's model and serve it until interrupted."""
    import uvicorn

    sock = bind(host, port)
    app = create_app(run_dir, limits=limits)
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run(sockets=[sock])
    finally:
        app.state.batcher.close()
