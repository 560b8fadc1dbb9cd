"""LoRA step time and peak memory of Code Llama-shaped models with random weights.

Step time does not depend on the weights' values, so a Llama model is built from its shape
(random bf16 weights made directly on the GPU, one decoder layer at a time, each layer's linear
layers optionally replaced by bitsandbytes 8-bit (LLM.int8) or 4-bit (NF4, double quantisation)
layers before the next is made, so 34B at 8/4-bit never holds its 68 GB of bf16 weights), then
wrapped in peft LoRA at the study's settings (r=8, alpha 16, dropout 0.05, q/k/v/o). Each step
is one packed row of --tokens tokens, position ids restarting every 512 tokens; attention is
sdpa with is_causal over the whole row (so it attends across the 512-token examples: a little
more attention work than var-len packing, recorded as "attention" in the JSON). Loss on every
token through the model's own lm_head and cross-entropy.

Each model x quantization is built once, in its own subprocess, and measured there at every
token count (ascending) and checkpointing setting: an out-of-memory step records {"oom": true}
and the next point goes on (with --grad-ckpt auto, a token count that ran out of memory without
checkpointing is measured again with it, and larger counts go straight to checkpointing). A
crash ends only that build's remaining points. --compare-estimate puts
tunebench.sizing's estimate beside each measured point; --calibration-out writes the measured
points in tunebench/calibration.json's format.

Usage (GPU):  python benchmarks/bench_scale.py --models 7b,13b,34b --quant 8bit,4bit,bf16 \\
                  --tokens 4096,8192,16384 --grad-ckpt auto --steps 4 --out scale.json --compare-estimate
Smoke (CPU):  python benchmarks/bench_scale.py --tiny --steps 2 --out /tmp/scale.json --compare-estimate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunebench import sizing  # noqa: E402

TINY = sizing.Architecture("tiny", 64, 2, 4, 2, 176, 1000, False)
EXAMPLE_TOKENS = 512
ATTENTION = "sdpa is_causal over the packed row (attends across its 512-token examples)"


def shape(name: str) -> sizing.Architecture:
    return TINY if name == "tiny" else sizing.resolve_architecture(f"codellama-{name}")


def build_model(arch: sizing.Architecture, quant: str, device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        intermediate_size=arch.intermediate,
        vocab_size=arch.vocab,
        tie_word_embeddings=arch.tied_embeddings,
        attn_implementation="sdpa",
        use_cache=False,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # to_empty allocates in the default dtype: 34B in fp32 is 136 GB
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        # the layers are materialised one at a time below, each quantized before the next, so
        # the peak is the quantized model plus one bf16 layer (34B in bf16 alone is 68 GB)
        layers = model.model.layers
        model.model.layers = torch.nn.ModuleList()
        materialise(model, device, dtype)
        for layer in layers:
            materialise(layer, device, dtype)
            if quant != "none":
                quantize_linears(layer, quant)
            model.model.layers.append(layer)
    finally:
        torch.set_default_dtype(default)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def materialise(module: Any, device: str, dtype: Any) -> None:
    """Allocate a meta module on ``device`` and fill it with random weights (norms at one)."""
    import torch

    module.to_empty(device=device)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    module.to(dtype)


def quantize_linears(layer: Any, quant: str) -> None:
    """Replace one decoder layer's linear layers by their bitsandbytes versions on the GPU."""
    import bitsandbytes as bnb
    import torch

    for parent in (layer.self_attn, layer.mlp):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            if quant == "8bit":
                new = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    has_fp16_weights=False,
                    threshold=6.0,
                )
                new.weight = bnb.nn.Int8Params(
                    child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False
                )
            else:
                new = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    compute_dtype=torch.bfloat16,
                    quant_type="nf4",
                    compress_statistics=True,
                )
                new.weight = bnb.nn.Params4bit(
                    child.weight.data.cpu(),
                    requires_grad=False,
                    quant_type="nf4",
                    compress_statistics=True,
                )
            setattr(parent, name, new.cuda())
            del child
    torch.cuda.empty_cache()


def plan_points(tokens: list[int], mode: str) -> list[tuple[int, bool]]:
    """The (tokens, checkpointing) points of one build, ascending; ``auto`` lists both settings
    and :func:`measure_build` skips what an earlier out-of-memory point makes pointless."""
    tries = {"on": [True], "off": [False], "auto": [False, True], "both": [False, True]}[mode]
    return [(n, ckpt) for n in sorted(tokens) for ckpt in tries]


def measure_build(model_name: str, quant: str, tokens: list[int], mode: str, steps: int, warmup: int) -> None:
    """Build one model and print one JSON line per point (see :func:`plan_points`)."""
    import torch
    from peft import LoraConfig, get_peft_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = shape(model_name)
    built = time.perf_counter()
    model = build_model(arch, quant, device)
    build_s = time.perf_counter() - built
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=list(sizing.ATTENTION_TARGETS))
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    fits_without = True  # until a token count runs out of memory without checkpointing
    for n, ckpt in plan_points(tokens, mode):
        if not ckpt and not fits_without:
            continue  # a smaller count already ran out of memory without checkpointing
        if mode == "auto" and ckpt and fits_without:
            continue  # auto: checkpointing only where the same count ran out of memory without it
        point = {"tokens": n, "gradient_checkpointing": ckpt, "build_s": build_s}
        try:
            point |= measure(model, optimizer, arch, n, ckpt, steps, warmup, device)
        except torch.cuda.OutOfMemoryError as error:
            point |= {"oom": True, "error": str(error).splitlines()[:1]}
            if not ckpt:
                fits_without = False
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(point), flush=True)


def set_checkpointing(model: Any, on: bool) -> None:
    base = model.get_base_model()
    if on and not base.is_gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    elif not on and base.is_gradient_checkpointing:
        base.gradient_checkpointing_disable()


def measure(
    model: Any,
    optimizer: Any,
    arch: sizing.Architecture,
    tokens: int,
    grad_ckpt: bool,
    steps: int,
    warmup: int,
    device: str,
) -> dict[str, Any]:
    """One point on a built model: warm-up steps, then timed optimizer steps."""
    import torch

    set_checkpointing(model, grad_ckpt)
    model.train()
    ids = torch.randint(0, arch.vocab, (1, tokens), device=device)
    positions = (torch.arange(tokens, device=device) % EXAMPLE_TOKENS).unsqueeze(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    tps = tokens / seconds
    trainable = sizing.lora_parameters(arch, 8, sizing.ATTENTION_TARGETS)
    fpt = sizing.flops_per_token(arch, trainable, EXAMPLE_TOKENS, 1.0)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    peak = None
    if gpu:
        from tunebench.prices import gpu_card

        peak = gpu_card(gpu).bf16_tflops * 1e12
    return {
        "oom": False,
        "step_s": seconds,
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "mfu": tps * fpt / peak if peak else None,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if gpu else None,
        "gpu": gpu or "cpu",
        "loss": float(loss.detach()),
    }


def run_build(args: argparse.Namespace, model: str, quant: str, tokens: list[int]) -> list[dict[str, Any]]:
    """One build's points in a subprocess: a crash (or a hang past --point-timeout) ends only
    that build, and its unmeasured points record the error."""
    cmd = [
        sys.executable,
        __file__,
        "--build",
        json.dumps([model, quant, tokens, args.grad_ckpt]),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.point_timeout)
        stdout, stderr, failed = proc.stdout, proc.stderr, proc.returncode != 0
    except subprocess.TimeoutExpired as timeout:
        stdout, stderr, failed = _text(timeout.stdout), _text(timeout.stderr) + "\ntimed out", True
    base = {"model": model, "quantization": quant, "attention": ATTENTION}
    points = [{**base, **json.loads(ln)} for ln in stdout.splitlines() if ln.startswith("{")]
    if failed:
        done = {(p["tokens"], p["gradient_checkpointing"]) for p in points}
        oom = "out of memory" in stderr.lower() or "OutOfMemoryError" in stderr
        # the last lines say where it failed (building the model or a step) and how much was in use
        error = stderr.strip().splitlines()[-3:]
        for n, ckpt in plan_points(tokens, args.grad_ckpt):
            if (n, ckpt) not in done and not (args.grad_ckpt == "auto" and ckpt):
                points.append(
                    {**base, "tokens": n, "gradient_checkpointing": ckpt, "oom": oom, "error": error}
                )
    return points


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def estimate_beside(point: dict[str, Any]) -> dict[str, Any]:
    """tunebench.sizing's prediction for a measured point, and measured/estimated ratios."""
    from tunebench.prices import gpu_card

    arch = shape(point["model"])
    setup = sizing.Setup(
        quantization=point["quantization"],
        tokens_per_micro_batch=point["tokens"],
        context=point["tokens"],  # sdpa is_causal attends over the whole row
        labeled_fraction=1.0,
        fused_loss=False,
        kbit_prepared=False,
        gradient_checkpointing=point["gradient_checkpointing"],
    )
    card = gpu_card(point["gpu"]) if point.get("gpu") not in (None, "cpu") else gpu_card("H100")
    memory = sizing.memory_parts(arch, setup)["allocated"]
    speed = sizing.throughput(arch, setup, card)["tokens_per_s"]
    out = {"estimated_memory_gib": memory, "estimated_tokens_per_s": speed}
    if point.get("peak_allocated_gib"):
        out["memory_ratio"] = point["peak_allocated_gib"] / memory
    if point.get("tokens_per_s") and point.get("gpu") != "cpu":
        out["speed_ratio"] = point["tokens_per_s"] / speed
    return out


def calibration_row(point: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": f"benchmarks/bench_scale.py {point['model']} {point['quantization']} {point['tokens']}",
        "card": point["gpu"],
        "model": f"codellama-{point['model']}",
        "quantization": point["quantization"],
        "tokens_per_micro_batch": point["tokens"],
        "micro_batches_per_step": 1,
        "context": point["tokens"],
        "labeled_fraction": 1.0,
        "r": 8,
        "targets": list(sizing.ATTENTION_TARGETS),
        "gradient_checkpointing": point["gradient_checkpointing"],
        "fused_loss": False,
        "compile": False,
        "tokens_per_s": point["tokens_per_s"],
        "peak_memory_gib": point["peak_allocated_gib"],
        "kbit_prepared": False,
        "note": f"random weights, {ATTENTION}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="7b,13b,34b")
    parser.add_argument("--quant", default="8bit,4bit,bf16")
    parser.add_argument("--tokens", default="4096,8192,16384")
    parser.add_argument(
        "--grad-ckpt",
        choices=("auto", "on", "off", "both"),
        default="auto",
        help="auto: without checkpointing first, with it only where that ran out of memory; "
        "both: each token count without and with it (without only up to the first out-of-memory)",
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--point-timeout", type=int, default=1800, help="seconds for one build and all its points"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU, no bitsandbytes")
    parser.add_argument("--compare-estimate", action="store_true")
    parser.add_argument("--calibration-out", type=Path)
    parser.add_argument("--out", type=Path, default=Path("scale.json"))
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        model, quant, tokens, mode = json.loads(args.build)
        measure_build(model, quant, tokens, mode, args.steps, args.warmup)
        return
    models = ["tiny"] if args.tiny else args.models.split(",")
    quants = ["none"] if args.tiny else [{"bf16": "none"}.get(q, q) for q in args.quant.split(",")]
    tokens = [256, 512] if args.tiny else [int(t) for t in args.tokens.split(",")]
    points = []
    for model in models:
        for quant in quants:
            for point in run_build(args, model, quant, tokens):
                if args.compare_estimate:
                    point["estimate"] = estimate_beside(point)
                points.append(point)
                print(json.dumps(point), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps(
                    {
                        "benchmark": "scale",
                        "args": vars(args)
                        | {"out": str(args.out), "calibration_out": str(args.calibration_out)},
                        "points": points,
                    },
                    indent=2,
                )
            )
    if args.calibration_out:
        rows = [
            calibration_row(p) for p in points if not p["oom"] and p.get("gpu") != "cpu" and "error" not in p
        ]
        args.calibration_out.write_text(json.dumps({"points": rows}, indent=1))
    print(
        f"{'model':6} {'quant':5} {'tokens':>6} {'ckpt':4} {'tok/s':>9} {'MFU':>6} {'alloc GiB':>9} {'est GiB':>8} {'est tok/s':>9}"
    )
    for p in points:
        est = p.get("estimate", {})
        mfu = f"{p['mfu']:.3f}" if p.get("mfu") else "-"
        speed = "OOM" if p["oom"] else f"{p.get('tokens_per_s', 0):.0f}"
        alloc = f"{p['peak_allocated_gib']:.1f}" if p.get("peak_allocated_gib") else "-"
        print(
            f"{p['model']:6} {p['quantization']:5} {p['tokens']:>6} {p['gradient_checkpointing']!s:4} {speed:>9} "
            f"{mfu:>6} {alloc:>9} {est.get('estimated_memory_gib', 0):>8.1f} {est.get('estimated_tokens_per_s', 0):>9.0f}"
        )


if __name__ == "__main__":
    main()
