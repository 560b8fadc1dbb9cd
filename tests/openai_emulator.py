"""A local stand-in for the OpenAI API, speaking its wire format on loopback.

Only the endpoints tunebench uses: files (multipart upload, retrieve, content), fine-tuning
jobs (create, retrieve, events, checkpoints, cancel), chat completions and completions. Jobs
move validating_files -> queued -> running -> succeeded (or failed) one step per retrieve, and
write a result file (base64-encoded CSV, as OpenAI serves it). Failure modes are injected per
path: ``emu.fail("POST /v1/chat/completions", 429, times=1, retry_after="1")``.

The real ``openai`` SDK is pointed at ``emu.base_url``; nothing here is tunebench code.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import itertools
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROGRESSION = ["validating_files", "queued", "running", "running", "succeeded"]


@dataclass
class Fault:
    status: int
    times: int
    retry_after: str | None = None
    message: str = "injected failure"


@dataclass
class Emulator:
    """State of the fake API; see the module docstring."""

    api_key: str = "sk-test-emulator-key-0123456789"
    answers: dict[str, str] = field(default_factory=dict)
    job_outcome: str = "succeeded"  # or "failed"
    hold_running: bool = False  # jobs never get past "running" (to test interrupting a follow)
    job_error: str = "The job failed due to an invalid training file. Line 3: missing assistant message."
    steps: int = 6
    trained_tokens: int = 12345
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, str, float]] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    seen_models: Counter[str] = field(default_factory=Counter)
    delay_s: float = 0.0  # per completion request, to make concurrency observable
    in_flight: int = 0
    max_in_flight: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    # --- control ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail(self, route: str, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """The next ``times`` requests to ``route`` ("METHOD /v1/path") answer ``status``."""
        self.faults.setdefault(route, []).append(Fault(status, times, retry_after))

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == method and p == path)

    def times(self, method: str, path: str) -> list[float]:
        return [t for m, p, t in self.calls if m == method and p == path]

    def new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids):06d}"

    def start(self) -> Emulator:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        """Count requests being answered at once (and hold each for ``delay_s``)."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    # --- files ----------------------------------------------------------------------------
    def add_file(self, filename: str, data: bytes, purpose: str) -> dict[str, Any]:
        file_id = self.new_id("file")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = obj
        self.contents[file_id] = data
        return obj

    # --- jobs -----------------------------------------------------------------------------
    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        for key in ("training_file", "validation_file"):
            if body.get(key) and body[key] not in self.files:
                raise KeyError(body[key])
        job_id = self.new_id("ftjob")
        hyper = (
            (body.get("method") or {}).get("supervised", {}).get("hyperparameters")
            or body.get("hyperparameters")
            or {}
        )
        job = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": int(time.time()) - 100,
            "model": body["model"],
            "status": "validating_files",
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "hyperparameters": {
                "n_epochs": hyper.get("n_epochs", "auto"),
                "batch_size": hyper.get("batch_size", "auto"),
                "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto"),
            },
            "result_files": [],
            "trained_tokens": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "error": None,
            "organization_id": "org-emulator",
            "seed": body.get("seed") or 42,
            "metadata": body.get("metadata"),
            "_polls": 0,
        }
        self.jobs[job_id] = job
        self.events[job_id] = []
        self.add_event(job_id, f"Created fine-tuning job: {job_id}")
        return job

    def add_event(self, job_id: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.events[job_id].append(
            {
                "id": self.new_id("ftevent"),
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": "info",
                "message": message,
                "type": "metrics" if data else "message",
                "data": data or {},
            }
        )

    def advance(self, job: dict[str, Any]) -> None:
        """One step along the progression per retrieve."""
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        job["_polls"] += 1
        status = PROGRESSION[min(job["_polls"], len(PROGRESSION) - 1)]
        if self.hold_running and status == "succeeded":
            status = "running"
        if status == "running" and job["status"] != "running":
            self.add_event(job["id"], "Fine-tuning job started")
        if status == "running":
            step = job["_polls"]
            data = {"step": step, "total_steps": self.steps, "train_loss": 0.5}
            self.add_event(job["id"], f"Step {step}/{self.steps}: training loss=0.5", data)
        if status == "succeeded" and self.job_outcome == "failed":
            job.update(status="failed", finished_at=int(time.time()))
            job["error"] = {
                "code": "invalid_training_file",
                "message": self.job_error,
                "param": "training_file",
            }
            self.add_event(job["id"], self.job_error)
            return
        if status == "succeeded":
            self.finish(job)
            return
        job["status"] = status

    def result_csv(self) -> str:
        lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        for step in range(1, self.steps + 1):
            loss = round(2.0 / step, 4)
            valid = f"{round(2.2 / step, 4)}" if step % 2 == 0 else ""
            acc = f"{round(0.9 - 0.1 / step, 4)}" if valid else ""
            lines.append(f"{step},{loss},{round(0.5 + 0.05 * step, 4)},{valid},{acc}")
        return "\n".join(lines) + "\n"

    def finish(self, job: dict[str, Any]) -> None:
        csv_text = self.result_csv()
        result = self.add_file("step_metrics.csv", base64.b64encode(csv_text.encode()), "fine-tune-results")
        job.update(
            status="succeeded",
            finished_at=job["created_at"] + 3600,
            trained_tokens=self.trained_tokens,
            fine_tuned_model=f"ft:{job['model']}:emulator::{job['id'][-6:]}",
            result_files=[result["id"]],
        )
        self.add_event(job["id"], "The job has successfully completed")

    def checkpoints(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        if job["status"] != "succeeded":
            return []
        return [
            {
                "id": f"ftckpt-{job['id']}-{step}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": job["finished_at"],
                "fine_tuned_model_checkpoint": f"{job['fine_tuned_model']}:ckpt-step-{step}",
                "fine_tuning_job_id": job["id"],
                "metrics": {"step": step, "train_loss": round(2.0 / step, 4)},
                "step_number": step,
            }
            for step in (self.steps // 2, self.steps)
        ]

    # --- completions ----------------------------------------------------------------------
    def answer(self, key: str) -> str:
        return self.answers.get(key, "I do not know")


def _handler(emu: Emulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        # --- plumbing -----------------------------------------------------------------
        def send(
            self, status: int, obj: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
        ) -> None:
            body = raw if raw is not None else json.dumps(obj).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/octet-stream" if raw is not None else "application/json"
            )
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def error(
            self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
        ) -> None:
            kind = {401: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_exceeded"}
            err = {"message": message, "type": kind.get(status, "server_error"), "param": None, "code": code}
            self.send(status, {"error": err}, headers)

        def body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            emu.calls.append((method, path, time.monotonic()))
            raw = self.body()
            for key in (f"{method} {path}", f"{method} *"):
                queue = emu.faults.get(key) or []
                if queue:
                    fault = queue[0]
                    fault.times -= 1
                    if fault.times <= 0:
                        queue.pop(0)
                    headers = {"retry-after": fault.retry_after} if fault.retry_after else None
                    self.error(fault.status, fault.message, headers=headers)
                    return
            if self.headers.get("Authorization") != f"Bearer {emu.api_key}":
                self.error(401, "Incorrect API key provided.", "invalid_api_key")
                return
            try:
                self.dispatch(method, path, raw)
            except KeyError as exc:
                self.error(404, f"No such object: {exc.args[0]}", "not_found")

        def do_GET(self) -> None:
            self.route("GET")

        def do_POST(self) -> None:
            self.route("POST")

        # --- endpoints ----------------------------------------------------------------
        def dispatch(self, method: str, path: str, raw: bytes) -> None:
            parts = path.strip("/").split("/")[1:]  # drop "v1"
            if method == "POST" and parts == ["files"]:
                self.send(200, self.upload(raw))
            elif method == "GET" and len(parts) == 2 and parts[0] == "files":
                self.send(200, emu.files[parts[1]])
            elif method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                self.send(200, None, raw=emu.contents[parts[1]])
            elif method == "GET" and parts == ["fine_tuning", "jobs"]:
                self.send(200, {"object": "list", "data": self.list_jobs(), "has_more": False})
            elif method == "POST" and parts == ["fine_tuning", "jobs"]:
                job = emu.create_job(json.loads(raw))
                self.send(200, public(job))
            elif parts[:2] == ["fine_tuning", "jobs"] and len(parts) >= 3:
                self.job_endpoint(method, parts[2], parts[3:])
            elif method == "POST" and parts == ["chat", "completions"]:
                with emu.tracked():
                    answer = self.chat(json.loads(raw))
                self.send(200, answer)
            elif method == "POST" and parts == ["completions"]:
                self.send(200, self.completion(json.loads(raw)))
            else:
                self.error(404, f"Unknown endpoint {method} {path}")

        def upload(self, raw: bytes) -> dict[str, Any]:
            head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
            fields: dict[str, Any] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                fields[name] = (part.get_filename(), part.get_payload(decode=True))
            filename, data = fields["file"]
            purpose = fields["purpose"][1].decode()
            return emu.add_file(filename or "upload.jsonl", data, purpose)

        def list_jobs(self) -> list[dict[str, Any]]:
            """Jobs newest first, filtered by ``metadata[key]=value`` query parameters."""
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            wanted = {k[len("metadata[") : -1]: v[0] for k, v in query.items() if k.startswith("metadata[")}
            jobs = [
                j
                for j in emu.jobs.values()
                if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())
            ]
            return [public(j) for j in reversed(jobs)]

        def job_endpoint(self, method: str, job_id: str, rest: list[str]) -> None:
            job = emu.jobs[job_id]
            if method == "GET" and not rest:
                emu.advance(job)
                self.send(200, public(job))
            elif method == "GET" and rest == ["events"]:
                data = list(reversed(emu.events[job_id]))  # newest first, as OpenAI lists them
                self.send(200, {"object": "list", "data": data, "has_more": False})
            elif method == "GET" and rest == ["checkpoints"]:
                data = emu.checkpoints(job)
                first = data[0]["id"] if data else None
                last = data[-1]["id"] if data else None
                self.send(
                    200,
                    {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last},
                )
            elif method == "POST" and rest == ["cancel"]:
                job.update(status="cancelled", finished_at=int(time.time()))
                emu.add_event(job_id, "Fine-tuning job cancelled")
                self.send(200, public(job))
            else:
                self.error(404, f"Unknown job endpoint {rest}")

        def chat(self, body: dict[str, Any]) -> dict[str, Any]:
            emu.seen_models[body["model"]] += 1
            user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
            text = emu.answer(user)
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
            return {
                "id": emu.new_id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": usage(prompt_tokens, len(text.split())),
            }

        def completion(self, body: dict[str, Any]) -> dict[str, Any]:
            emu.seen_models[body["model"]] += 1
            text = emu.answer(body["prompt"]) + "\nextra line"
            stops = body.get("stop") or []
            finish = "stop"
            for stop in stops if isinstance(stops, list) else [stops]:
                if stop in text:
                    text = text.split(stop, 1)[0]
            return {
                "id": emu.new_id("cmpl"),
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "usage": usage(len(body["prompt"].split()), len(text.split())),
            }

    return Handler


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}
