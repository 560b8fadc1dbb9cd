"""``tunebench serve`` under concurrent load: latency of short requests beside a long one, and memory.

Builds a small random model (the tiny tokenizer of tests/tiny.py; 256 wide, 4 layers, 4096
tokens of context by default) and a run directory once, starts
``python -m tunebench serve`` on a free loopback port in a subprocess (the ``tunebench`` on
``PYTHONPATH`` is the code measured, so the same script times two checkouts), then:

1. ``--clients`` concurrent clients each send ``--requests`` completions one after another;
   client 0 sends a long prompt (``--long-tokens``), the others short ones. Reported: p50/p95/max
   latency of the short requests, the long ones' latency, and the errors.
2. The server's RSS before, at the peak of and 2 s after one large request
   (``--large-prompts`` prompts x n=4, sampled).

    PYTHONPATH=$PWD TUNEBENCH_DATA_DIR=/path/to/data python benchmarks/bench_serve.py /tmp/bench \\
        --out results/bench_serve.json

Prints a table; writes the figures as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

RUN_NAME = "bench"
SHORT_QUESTIONS = [
    "How many singers do we have?",
    "List the names of all stadiums.",
    "What is the average age of all singers?",
    "Show the name of every concert in 2014.",
    "Which country has the most singers?",
]


def make_run(root: Path, hidden: int, layers: int, context: int) -> Path:
    """A base-model run over a random Qwen2 model with the tiny BPE tokenizer (tests/tiny.py).

    Random weights repeat one token under greedy decoding, so every request runs ``max_tokens``
    steps: the work per request is fixed. Size it (``hidden``, ``layers``, ``context``) so that a
    long prompt costs real time, as it does with a real model.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tests.test_inference_support import TOKENIZER_FILES
    from tests.test_inference_support import make_run as make_test_run
    from tests.tiny import build_tiny_model

    run_dir = root / RUN_NAME
    if (run_dir / "config.yaml").is_file():
        return run_dir
    data = Path(os.environ.get("TUNEBENCH_DATA_DIR", "data"))
    tiny = build_tiny_model(root / "tiny", data)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=context,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_dir = root / "model"
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny / name, model_dir / name)
    _, run = make_test_run(root, model_dir, name=RUN_NAME, provider="base", n=4)
    return run.root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(run_dir: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tunebench", "serve", str(run_dir), "--port", str(port)]
    log = (run_dir.parent / "server.log").open("wb")
    # run from outside any checkout: `python -m` puts the working folder first on sys.path
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir.parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def load(url: str, clients: int, requests: int, long_prompt: str, max_tokens: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = {"short": [], "long": []}
    statuses: dict[str, int] = {}

    async def client(index: int, http: httpx.AsyncClient) -> None:
        kind = "long" if index == 0 else "short"
        for r in range(requests):
            prompt = long_prompt if kind == "long" else SHORT_QUESTIONS[(index + r) % len(SHORT_QUESTIONS)]
            body = {"model": RUN_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
            start = time.perf_counter()
            response = await http.post(f"{url}/completions", json=body)
            elapsed = time.perf_counter() - start
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            if response.status_code == 200:
                timings[kind].append(elapsed)

    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    short = timings["short"]
    return {
        "wall_s": round(wall, 2),
        "statuses": statuses,
        "short_n": len(short),
        "short_p50_s": round(statistics.median(short), 3) if short else None,
        "short_p95_s": round(percentile(short, 0.95), 3) if short else None,
        "short_max_s": round(max(short), 3) if short else None,
        "long_s": [round(t, 3) for t in timings["long"]],
    }


def memory(url: str, pid: int, prompts: int, prompt: str) -> dict[str, Any]:
    """RSS before, at the peak of, and 2 s after one large request."""
    before = rss_mb(pid)
    body = {"model": RUN_NAME, "prompt": [prompt] * prompts, "n": 4, "max_tokens": 64, "temperature": 1.0}
    peak = before
    with httpx.Client(timeout=600) as http:
        future_start = time.perf_counter()
        import threading

        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(r=http.post(f"{url}/completions", json=body)))
        thread.start()
        while thread.is_alive():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.02)
        took = time.perf_counter() - future_start
    time.sleep(2)
    return {
        "sequences": prompts * 4,
        "status": result["r"].status_code,
        "took_s": round(took, 2),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(rss_mb(pid), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder for the tiny model and the run (reused)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--long-tokens", type=int, default=3000, help="tokens in the long prompt")
    parser.add_argument("--hidden", type=int, default=256, help="model width")
    parser.add_argument("--layers", type=int, default=4, help="model depth")
    parser.add_argument("--context", type=int, default=4096, help="model context in tokens")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--large-prompts", type=int, default=64, help="prompts in the memory request (x n=4)")
    parser.add_argument("--label", default="", help="a name for this checkout in the table")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    run_dir = make_run(args.root, args.hidden, args.layers, args.context)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.root / "model")
    schema = "CREATE TABLE singer (singer_id INT, name TEXT, country TEXT, age INT); "
    long_ids = tokenizer(schema * (args.long_tokens // 10))["input_ids"][: args.long_tokens]
    long_prompt = tokenizer.decode(long_ids)
    medium_prompt = tokenizer.decode(long_ids[:400])

    port = free_port()
    server = start_server(run_dir, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        asyncio.run(load(url, 4, 1, long_prompt, args.max_tokens))  # warm-up
        figures = asyncio.run(load(url, args.clients, args.requests, long_prompt, args.max_tokens))
        figures["memory"] = memory(url, server.pid, args.large_prompts, medium_prompt)
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures.update(
        label=args.label,
        clients=args.clients,
        requests_per_client=args.requests,
        long_prompt_tokens=len(long_ids),
        max_tokens=args.max_tokens,
    )
    mem = figures["memory"]
    print(
        f"{'checkout':<12} {'short p50':>10} {'short p95':>10} {'short max':>10} {'long (s)':>24} {'statuses':>16}"
    )
    print(
        f"{args.label:<12} {figures['short_p50_s']:>10} {figures['short_p95_s']:>10} {figures['short_max_s']:>10} "
        f"{figures['long_s']!s:>24} {json.dumps(figures['statuses']):>16}"
    )
    print(
        f"memory: {mem['sequences']} sequences, HTTP {mem['status']} in {mem['took_s']} s; RSS "
        f"{mem['rss_before_mb']} MB before, {mem['rss_peak_mb']} MB peak, {mem['rss_after_mb']} MB 2 s after"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
