"""Hostile and careless input to ``tunebench serve``: every row gets a 4xx JSON error in OpenAI's shape.

Each row is sent as raw bytes over real HTTP on loopback (so malformed JSON, lone surrogates and
odd content types reach the server exactly as written), and the answer must be the status given
with ``{"error": {"message", "type", "param", "code"}}``: never a 500, never plain text.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.test_serve import NAME, lively_model_dir, served  # noqa: F401 (fixtures)

JSON = {"Content-Type": "application/json"}
CHAT = "/chat/completions"
COMPLETE = "/completions"


def completion(**fields: Any) -> bytes:
    return json.dumps({"model": NAME, "prompt": "SELECT", "max_tokens": 2, **fields}).encode()


def chat(messages: Any, **fields: Any) -> bytes:
    return json.dumps({"model": NAME, "messages": messages, "max_tokens": 2, **fields}).encode()


DEEP = 100_000
# (id, path, body, headers, status, param)
ROWS: list[tuple[str, str, bytes, dict[str, str], int, str | None]] = [
    # the eight inputs that were a plain-text 500
    ("seed 2**70", COMPLETE, completion(seed=2**70), JSON, 400, "seed"),
    ("empty prompt", COMPLETE, completion(prompt=""), JSON, 400, "prompt"),
    (
        "lone surrogate",
        COMPLETE,
        b'{"model": "%s", "prompt": "\\ud800", "max_tokens": 2}' % NAME.encode(),
        JSON,
        400,
        "prompt",
    ),
    (
        "100,000-deep nesting",
        COMPLETE,
        b'{"model": "%s", "prompt": ' % NAME.encode() + b"[" * DEEP + b"]" * DEEP + b"}",
        JSON,
        400,
        None,
    ),
    ("messages [{}]", CHAT, chat([{}]), JSON, 400, "messages.0.role"),
    ("message without content", CHAT, chat([{"role": "user"}]), JSON, 400, "messages.0.content"),
    ("content 5", CHAT, chat([{"role": "user", "content": 5}]), JSON, 400, "messages.0.content"),
    # limits on one request's work
    ("prompts x n over 256", COMPLETE, completion(prompt=["SELECT"] * 64, n=5), JSON, 400, "n"),
    ("prompt over the context", COMPLETE, completion(prompt="SELECT name " * 2000), JSON, 400, "prompt"),
    ("a 5 MB prompt", COMPLETE, completion(prompt="x" * 5_000_000), JSON, 400, "prompt"),
    ("max_tokens over the context", COMPLETE, completion(max_tokens=5000), JSON, 400, "max_tokens"),
    ("max_tokens 0", COMPLETE, completion(max_tokens=0), JSON, 400, "max_tokens"),
    ("max_tokens true", COMPLETE, completion(max_tokens=True), JSON, 400, "max_tokens"),
    ("max_tokens '2'", COMPLETE, completion(max_tokens="2"), JSON, 400, "max_tokens"),
    ("n 0", COMPLETE, completion(n=0), JSON, 400, "n"),
    ("n 129", COMPLETE, completion(n=129), JSON, 400, "n"),
    ("seed 2**63", COMPLETE, completion(seed=2**63), JSON, 400, "seed"),
    ("temperature true", COMPLETE, completion(temperature=True), JSON, 400, "temperature"),
    ("temperature 7", COMPLETE, completion(temperature=7), JSON, 400, "temperature"),
    ("top_p 0", COMPLETE, completion(top_p=0), JSON, 400, "top_p"),
    ("five stop strings", COMPLETE, completion(stop=["a", "b", "c", "d", "e"]), JSON, 400, "stop"),
    ("stop 5", COMPLETE, completion(stop=5), JSON, 400, "stop"),
    ("stream 'yes'", COMPLETE, completion(stream="yes"), JSON, 400, "stream"),
    # what is refused rather than ignored
    ("logprobs 1", COMPLETE, completion(logprobs=1), JSON, 400, "logprobs"),
    ("chat logprobs", CHAT, chat([{"role": "user", "content": "hi"}], logprobs=True), JSON, 400, "logprobs"),
    (
        "top_logprobs",
        CHAT,
        chat([{"role": "user", "content": "hi"}], top_logprobs=2),
        JSON,
        400,
        "top_logprobs",
    ),
    # malformed bodies
    ("not JSON", COMPLETE, b"{prompt: SELECT", JSON, 400, None),
    ("a JSON list", COMPLETE, b"[1, 2]", JSON, 400, None),
    ("empty body", COMPLETE, b"", JSON, 400, None),
    ("empty prompt list", COMPLETE, completion(prompt=[]), JSON, 400, "prompt"),
    ("a number in the prompt list", COMPLETE, completion(prompt=["a", 5]), JSON, 400, "prompt.1"),
    ("no messages", CHAT, chat([]), JSON, 400, "messages"),
    ("messages a string", CHAT, chat("hi"), JSON, 400, "messages"),
    ("unknown role", CHAT, chat([{"role": "wizard", "content": "hi"}]), JSON, 400, "messages.0.role"),
    (
        "image content part",
        CHAT,
        chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        JSON,
        400,
        "messages.0.content.0.type",
    ),
    (
        "surrogate in a content part",
        CHAT,
        b'{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'
        % NAME.encode(),
        JSON,
        400,
        "messages.0.content.0.text",
    ),
    ("surrogate model name", COMPLETE, b'{"model": "\\ud800", "prompt": "x"}', JSON, 400, "model"),
    ("no template for free chat", CHAT, chat([{"role": "user", "content": "hi"}]), JSON, 400, "messages"),
    ("unknown model", COMPLETE, completion(model="gpt-4o"), JSON, 404, "model"),
    # content types
    ("text/plain", COMPLETE, completion(), {"Content-Type": "text/plain"}, 415, None),
    ("form", COMPLETE, b"prompt=SELECT", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None),
    ("no content type", COMPLETE, completion(), {}, 415, None),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "param"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_bad_input_is_a_clean_openai_error(
    served: Any,  # noqa: F811 (the fixture)
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    param: str | None,
) -> None:
    response = httpx.post(f"{served.url}{path}", content=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nowhere", 404), ("GET", COMPLETE, 405)])
def test_wrong_routes_are_openai_errors(served: Any, method: str, path: str, status: int) -> None:  # noqa: F811
    response = httpx.request(method, f"{served.url}{path}", timeout=10)
    assert response.status_code == status and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_the_server_still_answers_after_the_corpus(served: Any) -> None:  # noqa: F811
    response = httpx.post(f"{served.url}{COMPLETE}", content=completion(), headers=JSON, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )
