"""Which key ``provider: endpoint`` sends where: a loopback server records the Authorization it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunebench.config import validate_experiment
from tunebench.inference.endpoint import OPENAI_API_URL, key_env_for, make_client
from tunebench.pipeline import open_run
from tunebench.pipeline import predict_stage as predict
from tunebench.pipeline.prepare import prepare

OPENAI_SECRET = "sk-openai-secret-never-elsewhere-1234"
ENDPOINT_SECRET = "endpoint-secret-5678"


class Recorder(BaseHTTPRequestHandler):
    """Answers every chat completion with "x" and keeps each request's Authorization header."""

    seen: list[str]

    def do_POST(self) -> None:
        self.server.seen.append(self.headers.get("Authorization", ""))  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("MY_ENDPOINT_KEY", ENDPOINT_SECRET)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)


def headers_sent(tmp_path: Path, server: ThreadingHTTPServer, **endpoint: Any) -> set[str]:
    """Predict 3 ViGGO examples through the recorder with this ``endpoint`` config; the headers it got."""
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = validate_experiment(
        {
            "name": "secrets",
            "runs_dir": str(tmp_path),
            "provider": "endpoint",
            "task": {"name": "viggo", "max_eval_examples": 3, "max_train_examples": 3},
            "endpoint": {"base_url": url, "model": "m", "api": "chat", "max_concurrency": 1, **endpoint},
        }
    )
    run = open_run(config)
    prepare(config, run)
    predict(config, run, "test")
    assert len(server.seen) == 3  # type: ignore[attr-defined]
    return set(server.seen)  # type: ignore[attr-defined]


def test_an_endpoint_without_a_named_variable_gets_no_key(tmp_path: Path, recorder: Any) -> None:
    sent = headers_sent(tmp_path, recorder)
    assert sent == {"Bearer no-key"} and not any(OPENAI_SECRET in h for h in sent)


def test_an_endpoint_gets_the_key_of_its_own_variable(tmp_path: Path, recorder: Any) -> None:
    assert headers_sent(tmp_path, recorder, api_key_env="MY_ENDPOINT_KEY") == {f"Bearer {ENDPOINT_SECRET}"}


def test_the_openai_key_goes_elsewhere_only_when_named(tmp_path: Path, recorder: Any) -> None:
    assert headers_sent(tmp_path, recorder, api_key_env="OPENAI_API_KEY") == {f"Bearer {OPENAI_SECRET}"}


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.openai.com/v1", "OPENAI_API_KEY"),
        (None, "OPENAI_API_KEY"),
        ("https://api.openai.com.attacker.example/v1", None),
        ("http://api.openai.com/v1", None),  # not over TLS
        ("https://evil.example/api.openai.com/v1", None),
        ("http://127.0.0.1:8000/v1", None),
    ],
)
def test_only_openai_gets_the_openai_key_by_default(base_url: str | None, expected: str | None) -> None:
    assert key_env_for(None, base_url) == expected


def test_openai_base_url_in_the_environment_does_not_redirect_the_key(
    recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{recorder.server_address[1]}/v1")
    client = make_client(None, OPENAI_SECRET, max_retries=0)
    assert str(client.base_url).rstrip("/") == OPENAI_API_URL
