"""``tunebench serve`` over real HTTP on loopback: the openai SDK and the endpoint backend as clients."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from tests import test_inference_support as support
from tunebench.config import validate_experiment
from tunebench.inference.serve import create_app
from tunebench.io import read_jsonl
from tunebench.pipeline import open_run
from tunebench.pipeline import predict_stage as predict
from tunebench.tasks import Example, get_task

lively_model_dir = support.lively_model_dir  # the shared fixture
NAME = "sql-lora"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, lively_model_dir: Path) -> Any:
    """A LoRA run (random adapter) served by uvicorn in a thread on a free loopback port."""
    import uvicorn

    root = tmp_path_factory.mktemp("serve")
    config, run = support.make_run(root, lively_model_dir, name=NAME, n=8)
    support.save_random_adapter(lively_model_dir, run.adapter_dir)
    # a long batching window makes grouping of concurrent requests certain on a busy CI machine
    app = create_app(run.root, device="cpu", batch_wait_ms=300)
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
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    yield SimpleNamespace(url=url, config=config, run=run, app=app, client=client, root=root)
    server.should_exit = True
    thread.join(timeout=10)
    app.state.batcher.close()


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
                **served.config.model_dump(mode="json"),
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
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model=NAME, prompt="x", max_tokens=2, stream=True)
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
