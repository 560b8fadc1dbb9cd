"""``tunebench serve`` over real HTTP on loopback: the openai SDK and the endpoint backend as clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from tests import test_inference_support as support
from tunebench.config import PROVIDER_SECTIONS, validate_experiment
from tunebench.inference.serve import create_app
from tunebench.io import read_jsonl
from tunebench.pipeline import open_run
from tunebench.pipeline import predict_stage as predict
from tunebench.tasks import Example, get_task

lively_model_dir = support.lively_model_dir  # the shared fixture
NAME = "sql-lora"


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port; yields its /v1 URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.batcher.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, lively_model_dir: Path) -> Any:
    """A LoRA run (random adapter) served by uvicorn in a thread on a free loopback port."""
    root = tmp_path_factory.mktemp("serve")
    config, run = support.make_run(root, lively_model_dir, name=NAME, n=8)
    support.save_random_adapter(lively_model_dir, run.adapter_dir)
    # a long batching window makes grouping of concurrent requests certain on a busy CI machine
    app = create_app(run.root, device="cpu", batch_wait_ms=300)
    with running(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        yield SimpleNamespace(url=url, config=config, run=run, app=app, client=client, root=root)


@pytest.fixture(scope="module")
def local_rows(served: Any) -> list[dict]:
    """The same run's predictions through the local batched path (the reference)."""
    return read_jsonl(predict(served.config, served.run, "test"))


def examples(served: Any) -> list[Example]:
    return [Example.from_row(r) for r in read_jsonl(served.run.prepared("test"))]


def test_models_lists_the_run(served: Any) -> None:
    models = served.client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].object == "model"
    assert served.client.models.retrieve(NAME).id == NAME


def test_completions_continue_like_local_predictions(served: Any, local_rows: list[dict]) -> None:
    task = get_task(served.config.task)
    for example, row in zip(examples(served), local_rows, strict=True):
        response = served.client.completions.create(
            model=NAME, prompt=example.prompt, max_tokens=24, temperature=0
        )
        (choice,) = response.choices
        assert (
            response.model == NAME
            and response.object == "text_completion"
            and response.id.startswith("cmpl-")
        )
        assert choice.text.startswith(row["raw"])  # same greedy path; local stopped at the first line
        assert task.postprocess(choice.text) == row["prediction"]
        assert choice.finish_reason in ("stop", "length")
        usage = response.usage
        assert usage.prompt_tokens == row["prompt_tokens"]
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_in_task_format_uses_the_training_prompt(served: Any, local_rows: list[dict]) -> None:
    task = get_task(served.config.task)
    for example, row in zip(examples(served), local_rows, strict=True):
        response = served.client.chat.completions.create(
            model=NAME, messages=task.chat_messages(example), max_tokens=24, temperature=0
        )
        choice = response.choices[0]
        assert response.object == "chat.completion" and choice.message.role == "assistant"
        assert task.postprocess(choice.message.content) == row["prediction"]
        assert response.usage.prompt_tokens == row["prompt_tokens"]


def test_endpoint_backend_against_the_server(served: Any, local_rows: list[dict]) -> None:
    """provider endpoint (the openai-SDK backend) -> tunebench serve -> same predictions as local."""
    for api in ("chat", "completions"):
        config = validate_experiment(
            {
                **{
                    k: v
                    for k, v in served.config.model_dump(mode="json").items()
                    if k not in PROVIDER_SECTIONS
                },
                "name": f"via-{api}",
                "provider": "endpoint",
                "endpoint": {"base_url": served.url, "model": NAME, "api": api, "max_concurrency": 4},
            }
        )
        run = open_run(config)
        from tunebench.pipeline.prepare import prepare

        prepare(config, run)
        rows = read_jsonl(predict(config, run, "test"))
        assert [r["id"] for r in rows] == [r["id"] for r in local_rows]
        for remote, local in zip(rows, local_rows, strict=True):
            if api == "completions" and local["raw"].startswith("\n"):
                # the backend sends stop=["\n"], which (as OpenAI does) ends at a leading newline
                assert remote["prediction"] == ""
            else:
                assert remote["prediction"] == local["prediction"], (api, remote["id"])
        assert run.manifest()["stages"]["predict:test"]["n"] == len(rows)


def test_concurrent_requests_are_micro_batched_and_exact(served: Any) -> None:
    prompts = [ex.prompt for ex in examples(served)][:6]

    def ask(prompt: str) -> str:
        response = served.client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
        return response.choices[0].text

    sequential = [ask(p) for p in prompts]
    before = served.app.state.batcher.batches
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(ask, prompts))
    assert concurrent == sequential  # fp32: batched greedy == one at a time
    assert served.app.state.batcher.batches - before < len(prompts)


def test_parameters_n_stop_max_tokens_and_prompt_lists(served: Any) -> None:
    prompt = examples(served)[0].prompt
    client = served.client
    sampled = client.completions.create(model=NAME, prompt=prompt, max_tokens=6, temperature=1.5, n=3, seed=3)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert len({c.text for c in sampled.choices}) > 1

    short = client.completions.create(model=NAME, prompt=[prompt, prompt], max_tokens=1, temperature=0)
    assert len(short.choices) == 2 and short.choices[0].text == short.choices[1].text
    assert short.usage.completion_tokens == 2

    full = client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0).choices[0].text
    candidates = [full[i : i + 2] for i in range(1, len(full) - 2) if full[i : i + 2].strip()]
    assert candidates, full
    stop = candidates[0]
    cut = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop]
    ).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"

    lengths = [
        client.completions.create(model=NAME, prompt=ex.prompt, max_tokens=2, temperature=0).choices[0]
        for ex in examples(served)
    ]
    assert any(c.finish_reason == "length" for c in lengths)


def test_chat_outside_the_task_format_uses_the_chat_template(served: Any) -> None:
    messages = [{"role": "user", "content": "How many singers do we have?"}]
    with pytest.raises(openai.BadRequestError, match="chat template"):
        served.client.chat.completions.create(model=NAME, messages=messages, max_tokens=4)
    tokenizer = served.app.state.generator.tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        chat = served.client.chat.completions.create(
            model=NAME, messages=messages, max_tokens=8, temperature=0
        )
        rendered = "<|user|>How many singers do we have?\n<|assistant|>"
        plain = served.client.completions.create(model=NAME, prompt=rendered, max_tokens=8, temperature=0)
        assert chat.choices[0].message.content == plain.choices[0].text
    finally:
        tokenizer.chat_template = None


def test_errors_in_openai_format(served: Any) -> None:
    client = served.client
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=2)
    # no model at all (the OpenAI client insists on one; plain HTTP does not): say what to send
    import httpx

    missing = httpx.post(f"{client.base_url}completions", json={"prompt": "x", "max_tokens": 2})
    assert missing.status_code == 400
    assert (
        missing.json()["error"]["message"]
        == f"you must provide a model parameter; this server serves '{NAME}'"
    )
    with pytest.raises(openai.BadRequestError, match="logprobs: log probabilities are not supported"):
        client.completions.create(model=NAME, prompt="x", max_tokens=2, logprobs=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=NAME, prompt="x", max_tokens=2, temperature=7)


def test_a_chat_format_base_run_serves_its_messages_through_the_chat_template(
    tmp_path: Path, lively_model_dir: Path
) -> None:
    """A run prompted in the model's chat format (generation.prompt_format: chat) answers the
    task's chat messages from the template rendering, as its predictions were made, not from
    the plain training prompt a LoRA run would get."""
    from fastapi.testclient import TestClient

    from tunebench.inference.prompts import chat_prompt
    from tunebench.tasks.base import load_prepared

    config, run = support.make_run(
        tmp_path, lively_model_dir, name="chat-base", provider="base", n=2, prompt_format="chat"
    )
    app = create_app(run.root, device="cpu", batch_wait_ms=1)
    tokenizer = app.state.generator.tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    task = get_task(config.task)
    example = load_prepared(run, "test")[0]
    try:
        with TestClient(app) as client:
            body = {
                "model": "chat-base",
                "messages": task.chat_messages(example),
                "max_tokens": 8,
                "temperature": 0,
            }
            chat = client.post("/v1/chat/completions", json=body).json()
            rendered = chat_prompt(tokenizer, task, example)
            assert rendered.startswith("<|system|>") and rendered != example.prompt
            plain = client.post(
                "/v1/completions",
                json={"model": "chat-base", "prompt": rendered, "max_tokens": 8, "temperature": 0},
            ).json()
        assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    finally:
        app.state.batcher.close()


def test_streaming_sends_the_same_answer_as_server_sent_events(served: Any) -> None:
    """The openai SDK with stream=True reads the events; the text equals the unstreamed answer."""
    client, task = served.client, get_task(served.config.task)
    example = examples(served)[0]
    whole = client.completions.create(model=NAME, prompt=example.prompt, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=example.prompt,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens

    messages = task.chat_messages(example)
    answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == answer.choices[0].message.content


def test_content_parts_are_served_as_their_joined_text(served: Any) -> None:
    task = get_task(served.config.task)
    messages = task.chat_messages(examples(served)[1])
    as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    plain = served.client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0)
    parts = served.client.chat.completions.create(model=NAME, messages=as_parts, max_tokens=12, temperature=0)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens  # the task format was recognised


def test_models_shows_how_chat_messages_become_the_prompt(served: Any) -> None:
    import httpx

    info = httpx.get(f"{served.url}/models").json()["data"][0]["tunebench"]
    task = get_task(served.config.task)
    shape = info["task_chat_format"]
    assert [m["role"] for m in shape] == [m["role"] for m in task.chat_messages(examples(served)[0])]
    assert "{question}" in shape[-1]["content"] and "{context}" in shape[0]["content"]
    assert info["chat_template"] is None  # the tiny tokenizer has none: other messages get a 400
    assert info["context_length"] == served.app.state.generator.max_context == info["max_prompt_tokens"]


def test_api_key_is_checked_as_a_bearer_token(served: Any) -> None:
    import httpx

    from tunebench.inference.serve import Limits

    app = create_app(served.run.root, generator=served.app.state.generator, limits=Limits(api_key="s3cret"))
    with running(app) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            refused = httpx.get(f"{url}/models", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data] == [NAME]
        bad = openai.OpenAI(base_url=url, api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=NAME, prompt="x", max_tokens=2)


def test_full_queue_is_429_and_a_slow_request_is_504(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The plain tiny model repeats one token forever, so a long request keeps the worker busy."""
    import httpx

    from tunebench.inference.serve import Limits

    _, run = support.make_run(tmp_path, tiny_model_dir, name="busy", provider="base", n=2)
    app = create_app(run.root, device="cpu", batch_wait_ms=1, limits=Limits(max_queue=1, timeout_s=2))
    scheduler = app.state.batcher
    body = {"model": "busy", "prompt": ["SELECT"] * 16, "max_tokens": 1000, "temperature": 0}
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        long = pool.submit(httpx.post, f"{url}/completions", json=body, timeout=60)
        deadline = time.monotonic() + 20
        while scheduler.batches == 0 and time.monotonic() < deadline:  # the worker is generating
            time.sleep(0.01)
        short = {**body, "prompt": "SELECT", "max_tokens": 2}
        queued = pool.submit(httpx.post, f"{url}/completions", json=short, timeout=60)
        while not scheduler.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = httpx.post(f"{url}/completions", json=short, timeout=60)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert long.result().status_code == 504 and queued.result().status_code == 504
        assert long.result().json()["error"]["code"] == "timeout"
        assert scheduler.batches == 1  # the queued request timed out before it ran: it never did
        while scheduler.busy and time.monotonic() < deadline + 60:  # a running call is not interrupted
            time.sleep(0.05)
        served_later = httpx.post(f"{url}/completions", json=short, timeout=60)
        assert served_later.status_code == 200 and scheduler.batches == 2


def test_a_round_runs_short_prompts_first_and_apart_from_long_ones() -> None:
    from tunebench.inference.local import SamplingParams
    from tunebench.inference.serve import Job, plan_round

    greedy, sampled = SamplingParams(max_new_tokens=8), SamplingParams(max_new_tokens=8, do_sample=True, n=4)
    long = Job(["l"], 900, greedy)
    shorts = [Job(["s"], 20 + i, greedy) for i in range(5)]
    many = Job(["m"] * 3, 30, greedy)
    other = Job(["o"], 25, sampled)
    groups = plan_round([long, *shorts, many, other], max_batch=6)
    assert [[j.tokens for j in g] for g in groups] == [[20, 21, 22, 23, 24], [25], [30], [900]]
    assert groups[1] == [other]  # different settings never share a generate call
    assert all(sum(j.sequences for j in g) <= 6 for g in groups)


def test_a_busy_port_is_one_line_before_the_model_loads(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The run has no adapter yet: had the model loaded first, that would be the error."""
    import os
    import subprocess
    import sys

    _, run = support.make_run(tmp_path, tiny_model_dir, name="no-adapter", n=2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "tunebench", "serve", str(run.root), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        elapsed = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0] and "adapter" not in lines[0]
    assert elapsed < 60


def test_an_unexpected_exception_is_a_json_500() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tunebench.inference.serve import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "internal error: RuntimeError",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
