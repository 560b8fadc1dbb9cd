"""Batched predictions vs a batch-1 ``model.generate`` loop, beside the hardware floor.

What it measures (one process, one model load, back to back on the same device):

1. **tunebench** — :func:`tunebench.inference.predict.predict_local` on every prompt of the split
   (SQL test: the 568 Spider-dev prompts), the product path itself: left-padded batches sorted
   by length, first-line + EOS stopping, merged LoRA, rows fsync'd to the partial file and the
   final JSONL written atomically. Once per ``--batch-sizes`` value, after an untimed warm-up.
2. **batch-1 baseline** — a plain loop of ``model.generate`` on one prompt at a time with the
   *same* model (merged adapter), greedy, the same stop ids, the same first-line stop and
   ``max_new_tokens``: the difference is batching alone. Only the first ``--baseline-limit``
   prompts are run; its time per prompt is **extrapolated** to the whole split (said in the
   output).
3. **Floor** — what the hardware allows for the batched run's actual work: for each batch,
   decode steps (= its longest completion) × max(weights + KV-cache bytes / memory bandwidth,
   2·params·batch / peak FLOP/s), plus prefill 2·params·prompt tokens / peak FLOP/s.
4. **Equality** — greedy predictions of the batched path vs the batch-1 loop on the baseline
   prompts; mismatches are listed (in bf16 a batch-size-dependent reduction order can flip
   a near-tie between two tokens, after which the texts diverge; fp32 on CPU is exact, see
   tests/test_inference.py).

Adapter: ``--adapter DIR`` (a trained run's ``adapter/``), ``random`` (default: LoRA r=8 on
q/k/v/o with ``init_lora_weights=False``, realistic shapes; its outputs are noise, so most
generations run to ``max_new_tokens``: a worst case for decode length) or ``none``.

Writes a table to stdout and JSON to ``$OUT/predict.json`` (else benchmarks/results/predict.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Memory bandwidth (bytes/s) from the vendors' datasheets, keyed like tunebench.training.mfu.
BANDWIDTH = {"H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "A100": 2.039e12, "L40S": 0.864e12}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="preset, model folder or GGUF")
    parser.add_argument("--adapter", default="random", help="adapter folder, 'random' or 'none'")
    parser.add_argument("--task", default="sql")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="cap on prompts (CPU smoke runs)")
    parser.add_argument("--batch-sizes", default="568,284,142", help="comma-separated batch sizes to time")
    parser.add_argument("--baseline-limit", type=int, default=16, help="prompts in the batch-1 loop")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--unmerged", action="store_true", help="keep the LoRA adapter unmerged")
    parser.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "sdpa", "sdpa_grouped", "eager"],
        help="model.attn_implementation (auto: sdpa_grouped on CUDA, no per-head KV-cache copies)",
    )
    parser.add_argument(
        "--cache",
        default="dynamic",
        choices=["dynamic", "static"],
        help="generation.cache_implementation; static: one untimed pass per batch size first "
        "(transformers compiles the decode step per shape on CUDA)",
    )
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="override memory bandwidth (GB/s)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override peak bf16 TFLOP/s")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/predict.json)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also split the best batch size's time into prefill and per-decode-step cost "
        "(forced lengths, no stops) and list the top operators under torch.profiler",
    )
    return parser.parse_args()


def step_costs(generator: Any, prompts: list[str], short: int = 1, long: int = 33) -> dict[str, Any]:
    """Prefill and per-decode-step seconds of ``generate`` on these prompts (one batch).

    Two runs forced to exactly ``short`` and ``long`` new tokens (``min_new_tokens``, no stop
    criteria): the difference over the extra steps is the cost of one decode step at this batch
    size. The first new token comes out of the prefill pass itself, so a run of ``short`` tokens
    holds ``short - 1`` decode steps; the rest of its time is prefill plus fixed overhead. Then a
    profiled run of a few steps names the operators that take the time, on the GPU and on the
    CPU (launch overhead shows there).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    token_lists, _ = generator.encode(prompts, long)
    input_ids, mask = generator._left_pad(token_lists)

    def run(steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            generator.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                do_sample=False, cache_implementation=generator.cache_implementation,
            )  # fmt: skip
        sync()
        return time.perf_counter() - t0

    run(short)  # warm-up for this shape
    first, last = run(short), run(long)
    per_step = (last - first) / (long - short)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        run(9)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    cpu_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return {
        "batch": len(prompts),
        "prompt_width": int(input_ids.shape[1]),
        "short_steps": short,
        "long_steps": long,
        "short_s": first,
        "long_s": last,
        "per_decode_step_ms": per_step * 1000,
        "prefill_and_fixed_s": first - per_step * (short - 1),
        "top_ops": table,
        "top_cpu_ops": cpu_table,
    }


def make_config(args: argparse.Namespace, runs_dir: Path, provider: str, batch_size: int) -> Any:
    from tunebench.config import validate_experiment

    return validate_experiment(
        {
            "name": "bench-predict",
            "runs_dir": str(runs_dir),
            "provider": provider,
            "model": {"name": args.model, "dtype": args.dtype, "attn_implementation": args.attn},
            "task": {"name": args.task, "max_eval_examples": args.limit, "validation": "study"},
            "generation": {
                "batch_size": batch_size,
                "max_new_tokens": args.max_new_tokens,
                "merge_adapter": not args.unmerged,
                "cache_implementation": args.cache,
            },
        }
    )


def random_adapter(model: Any, out_dir: Path) -> None:
    """LoRA r=8 on q/k/v/o with random A and B (peft's ``init_lora_weights=False``)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(out_dir)
    peft_model.unload()  # give the base model back without the adapter layers


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def baseline_loop(generator: Any, prompts: list[str], max_new_tokens: int) -> tuple[float, list[Any]]:
    """Plain ``model.generate`` one prompt at a time (same model, stops and length)."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from tunebench.inference.local import FirstLineStop, SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, stop_on_newline=True)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=generator.stop_ids,
        pad_token_id=generator.pad_id,
    )
    tables = generator.newline_tables()
    out = []
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            ids = generator.tokenizer(prompt, return_tensors="pt").to(generator.device)
            n = ids["input_ids"].shape[1]
            stop = StoppingCriteriaList([FirstLineStop(tables, n)])
            tokens = generator.model.generate(**ids, generation_config=config, stopping_criteria=stop)
            out.append(generator._finish(tokens[0, n:].tolist(), params))
    sync()
    return time.perf_counter() - start, out


def floor_seconds(
    generator: Any, rows: list[dict[str, Any]], batches: list[list[int]], bandwidth: float, peak: float
) -> dict[str, float]:
    """Hardware floor of the batched run: decode (memory or compute bound per step) + prefill."""
    model = generator.model
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    tied = getattr(cfg, "tie_word_embeddings", False)
    head = embed.numel()  # lm_head: V x d, the same matrix when tied
    body = params - embed.numel() - (0 if tied else head)  # per-token matmuls besides lm_head
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if tied:
        weight_bytes += head * embed.element_size()  # read once more as the lm_head
    matmul_params = body + head  # embedding lookups are free, the lm_head is not
    heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * heads * head_dim * generator.dtype.itemsize
    decode = 0.0
    steps_total = 0
    for batch in batches:
        lengths = [rows[i]["completion_tokens"] for i in batch]
        prompt_len = max(rows[i]["prompt_tokens"] for i in batch)  # left-padded width
        steps = max(lengths)
        steps_total += steps
        for step in range(steps):
            kv_bytes = kv_per_token * len(batch) * (prompt_len + step)
            memory = (weight_bytes + kv_bytes) / bandwidth
            compute = 2 * matmul_params * len(batch) / peak
            decode += max(memory, compute)
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    prefill = 2 * body * prompt_tokens / peak  # the lm_head runs on the last position only
    return {
        "decode_floor_s": decode,
        "prefill_floor_s": prefill,
        "floor_s": decode + prefill,
        "decode_steps": steps_total,
        "weight_bytes": weight_bytes,
    }


def adapter_of(run: Any) -> Path | None:
    """The run's LoRA adapter, if it has one (a base-model run has none)."""
    return run.adapter_dir if (run.adapter_dir / "adapter_config.json").is_file() else None


def main() -> int:
    args = parse_args()
    import torch

    from tunebench.inference.local import LocalGenerator, apply_adapter, default_device, load_base_model
    from tunebench.inference.predict import predict_local
    from tunebench.inference.prompts import model_prompts
    from tunebench.inference.shards import length_sorted_batches
    from tunebench.io import read_jsonl
    from tunebench.pipeline import open_run
    from tunebench.pipeline.prepare import prepare
    from tunebench.tasks import get_task
    from tunebench.tasks.base import load_prepared
    from tunebench.training.mfu import gpu_key, peak_flops

    device = default_device()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    provider = "base" if args.adapter == "none" else "local"
    config = make_config(args, work, provider, sizes[0])
    run = open_run(config)
    prepare(config, run)
    task = get_task(config.task)
    examples = load_prepared(run, args.split)
    n = len(examples)

    start = time.perf_counter()
    model, tokenizer = load_base_model(config.model, device)
    if args.adapter == "random":
        random_adapter(model, run.adapter_dir)
    elif args.adapter != "none":
        shutil.copytree(args.adapter, run.adapter_dir)
    if provider == "local":
        model = apply_adapter(model, run.adapter_dir, merge=not args.unmerged)
    generator = LocalGenerator(model, tokenizer, device=device, cache_implementation=args.cache)
    load_s = time.perf_counter() - start
    print(
        f"device {gpu}, {n} prompts, model {args.model} ({generator.dtype}, attention "
        f"{generator.model.config._attn_implementation}), adapter {args.adapter}, load {load_s:.1f}s",
        flush=True,
    )

    # warm-up: CUDA context, kernels, the newline lookup table (untimed)
    from tunebench.inference.local import SamplingParams

    warm = SamplingParams(max_new_tokens=8, stop_on_newline=task.stops_on_newline)
    generator.generate([ex.prompt for ex in examples[:8]], warm)

    results: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for size in sizes:
        cfg = make_config(args, work, provider, size)
        if args.cache == "static":  # compile warm-up for this batch shape (untimed)
            predict_local(cfg, run, args.split, task, examples, adapter=adapter_of(run), generator=generator)
            run.predictions(args.split).unlink()
        sync()
        t0 = time.perf_counter()
        path = predict_local(
            cfg, run, args.split, task, examples, adapter=adapter_of(run), generator=generator
        )
        sync()
        wall = time.perf_counter() - t0
        rows = read_jsonl(path)
        info = run.manifest()["stages"][f"predict:{args.split}"]
        tokens = sum(r["completion_tokens"] for r in rows)
        results.append(
            {
                "path": f"tunebench batch {size}",
                "batch_size": size,
                "prompts": n,
                "wall_s": wall,
                "generation_s": info["wall_time_s"],
                "predictions_per_s": n / wall,
                "generated_tokens": tokens,
                "generated_tokens_per_s": tokens / wall,
                "finish_reasons": {
                    k: sum(r["finish_reason"] == k for r in rows) for k in ("stop", "newline", "length")
                },
            }
        )
        print(
            f"  batch {size}: {wall:.2f}s, {n / wall:.1f} predictions/s, {tokens / wall:.0f} tokens/s",
            flush=True,
        )
    best = min(results, key=lambda r: r["wall_s"])
    best_rows = read_jsonl(run.predictions(args.split)) if best is results[-1] else None
    if best_rows is None:  # rerun the best size so its rows (and batches) back the floor and equality
        cfg = make_config(args, work, provider, best["batch_size"])
        best_rows = read_jsonl(
            predict_local(cfg, run, args.split, task, examples, adapter=adapter_of(run), generator=generator)
        )

    limit = min(args.baseline_limit, n)
    prompts = model_prompts(config, run, task, examples)
    base_s, base_out = baseline_loop(generator, prompts[:limit], args.max_new_tokens)
    base_tokens = sum(c.completion_tokens for c in base_out)
    per_prompt = base_s / limit
    baseline = {
        "path": f"batch-1 model.generate loop (first {limit} prompts, extrapolated to {n})",
        "prompts_run": limit,
        "measured_s": base_s,
        "wall_s": per_prompt * n,
        "predictions_per_s": limit / base_s,
        "generated_tokens": base_tokens,
        "generated_tokens_per_s": base_tokens / base_s,
        "extrapolated": True,
    }

    mismatches = []
    for example, row, single in zip(examples[:limit], best_rows[:limit], base_out, strict=True):
        if task.postprocess(single.text) != row["prediction"] or single.text != row["raw"]:
            mismatches.append({"id": example.id, "batched": row["raw"], "batch1": single.text})

    key = gpu_key(gpu)
    bandwidth = (args.bandwidth_gbs * 1e9) if args.bandwidth_gbs else BANDWIDTH.get(key or "")
    peak = (args.peak_tflops * 1e12) if args.peak_tflops else peak_flops(gpu)
    floor = None
    if bandwidth and peak:
        batches = length_sorted_batches(generator, prompts, best["batch_size"])
        floor = floor_seconds(generator, best_rows, batches, bandwidth, peak)

    print()
    print("| path | prompts | wall s | predictions/s | generated tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    for r in [*results, baseline]:
        print(
            f"| {r['path']} | {n} | {r['wall_s']:.2f} | {r['predictions_per_s']:.1f} | {r['generated_tokens_per_s']:.0f} |"
        )
    speedup = baseline["wall_s"] / best["wall_s"]
    print(f"\nspeed-up, best batched vs batch-1 (extrapolated from {limit} prompts): {speedup:.1f}x")
    if floor:
        print(
            f"floor for the best batched run's work: {floor['floor_s']:.2f}s (decode {floor['decode_floor_s']:.2f}s over "
            f"{floor['decode_steps']} steps, prefill {floor['prefill_floor_s']:.2f}s) at "
            f"{bandwidth / 1e9:.0f} GB/s, {peak / 1e12:.0f} TFLOP/s; measured {best['wall_s']:.2f}s = "
            f"{best['wall_s'] / floor['floor_s']:.1f}x the floor"
        )
    else:
        print("floor: unknown device peaks (pass --bandwidth-gbs and --peak-tflops)")
    print(f"batched vs batch-1 greedy on {limit} prompts: {limit - len(mismatches)}/{limit} identical")
    for m in mismatches:
        print(f"  MISMATCH {m['id']}:\n    batched: {m['batched']!r}\n    batch-1: {m['batch1']!r}")

    costs = None
    if args.profile:
        costs = step_costs(generator, prompts[: best["batch_size"]])
        print(
            f"\nbatch {costs['batch']} (prompt width {costs['prompt_width']}): one decode step "
            f"{costs['per_decode_step_ms']:.1f} ms, prefill + fixed {costs['prefill_and_fixed_s']:.2f}s"
        )
        print(costs["top_ops"])
        print(costs["top_cpu_ops"])

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": gpu,
        "torch": torch.__version__,
        "model": args.model,
        "dtype": str(generator.dtype),
        "attention": generator.model.config._attn_implementation,
        "adapter": args.adapter,
        "merged": not args.unmerged,
        "task": args.task,
        "split": args.split,
        "prompts": n,
        "max_new_tokens": args.max_new_tokens,
        "load_s": load_s,
        "batched": results,
        "baseline": baseline,
        "speedup_vs_batch1": speedup,
        "floor": floor,
        "bandwidth_bytes_per_s": bandwidth,
        "peak_flops": peak,
        "equality": {"compared": limit, "identical": limit - len(mismatches), "mismatches": mismatches},
        "step_costs": costs,
        "command": " ".join(sys.argv),
    }
    out = (
        Path(args.out)
        if args.out
        else Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results") / "predict.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
