"""LoRA training throughput: plain HF Trainer + peft (padded) vs tunebench's engine (packed).

Every variant trains the same base model with the same LoRA (study defaults), learning-rate
schedule and seed on the *same examples in the same order* (optimizer step s uses the examples
of tunebench's data order for step s), so loss curves are comparable step by step. Measured
after ``--warmup`` steps: real (non-pad) tokens/s, MFU by the LoRA formula
(:mod:`tunebench.training.mfu`, the engine's useful FLOPs for every variant so MFU ratios equal
throughput ratios), peak GPU memory, and the per-step losses.

Variants (``--variants``, comma-separated):
  hf-b8, hf-b32      transformers.Trainer, pad to longest, micro-batch 8/32, accumulation to --batch
  packed             tunebench, padding-free packing, 16384-token micro-batches (the defaults)
  packed-4k          same with 4096-token micro-batches (less attention over a packed row)
  padded             tunebench without packing (length-grouped padded micro-batches of 8)
  packed-liger       packed + liger-kernel fused linear cross-entropy (skipped when not installed)
  packed-flex        packed with attn_implementation flex_attention
  packed-compile     packed + torch.compile of the decoder
  packed-nodrop, packed-compile-nodrop
                     the same two with LoRA dropout 0: what remains of the eager/compiled loss gap
                     without random dropout masks (the gap is there at step 1 already, where LoRA
                     adds nothing, so dropout cannot be all of it)
  packed-compile-liger  packed-compile + liger-kernel's fused linear cross-entropy
  packed-compile-liger-inductor-rounding
                     the same with training.compile_eager_rounding off: fused kernels round bf16
                     intermediates where inductor likes (the compiled default before 2026-12-06;
                     its losses ran 0.7-4.2% below eager's on the H100). Until then the
                     rounding-emulating variant was packed-compile-liger-emulate
                     (TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1, tree 06e264b)
  lora-all-linear-r16, full, full-8bit-adamw, full-ckpt
                     LoRA on all linear layers (r=16) against every weight trained
                     (training.method full, float32 masters): with float32 AdamW moments,
                     bitsandbytes' 8-bit AdamW, and float32 moments with gradient checkpointing
  packed-8bit, packed-4bit
                     the base model loaded 8-bit / 4-bit (NF4) through bitsandbytes, as the study
                     loaded Code Llama 34B (needs the bitsandbytes wheel)

Usage (GPU):  python benchmarks/bench_train.py --model qwen2.5-coder-1.5b
Smoke (CPU):  python benchmarks/bench_train.py --model <tiny dir> --device cpu --steps 3
Writes a table to stdout and JSON to $OUT/train.json (else benchmarks/results/train.json),
rewritten after every variant so a time-out keeps what finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_VARIANTS = "hf-b8,hf-b32,packed,packed-4k,padded,packed-liger,packed-flex,packed-compile"
#: every weight trained (float32 masters), at a learning rate for full fine-tuning, liger on
FULL = {"training.method": "full", "training.learning_rate": 2e-5, "training.liger": True}
ENGINE = {
    "packed": {},  # attention auto: var-len flash kernel on CUDA
    "packed-sdpa": {"model.attn_implementation": "sdpa"},
    "packed-4k": {"training.tokens_per_micro_batch": 4096},
    "padded": {"training.packing": False, "training.micro_batch_size": 8},
    "packed-liger": {"training.liger": True},
    "packed-flex": {"model.attn_implementation": "flex_attention"},
    "packed-compile": {"training.compile": True},
    "packed-nodrop": {"lora.dropout": 0.0},
    "packed-compile-nodrop": {"training.compile": True, "lora.dropout": 0.0},
    "packed-compile-liger": {"training.compile": True, "training.liger": True},
    # inductor's own bf16 rounding (compile's default before training.compile_eager_rounding)
    "packed-compile-liger-inductor-rounding": {
        "training.compile": True,
        "training.liger": True,
        "training.compile_eager_rounding": False,
    },
    "packed-8bit": {"model.quantization": "8bit"},
    "packed-4bit": {"model.quantization": "4bit"},
    # full fine-tuning against the LoRA it competes with (all linear layers, r=16), liger on
    "lora-all-linear-r16": {
        "training.liger": True,
        "lora.r": 16,
        "lora.alpha": 32,
        "lora.target_modules": "all-linear",
    },
    "full": FULL,
    "full-8bit-adamw": {**FULL, "training.optimizer": "adamw_8bit"},
    "full-ckpt": {**FULL, "training.gradient_checkpointing": True},
}
HF = {"hf-b8": 8, "hf-b32": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="preset, folder or GGUF")
    p.add_argument("--task", default="sql", choices=["sql", "viggo"])
    p.add_argument(
        "--data-dir", default=None, help="data mirror (default: $TUNEBENCH_DATA_DIR or ../shared/data)"
    )
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="steps excluded from the timing")
    p.add_argument("--batch", type=int, default=128, help="examples per optimizer step (study: 128)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="after the steps, run the timed steps' data again this many times (engine variants): "
        "shapes seen before, so no compilation or CUDA-graph recording; reported as steady_*",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="model.dtype of every variant",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every variant in this process (default: a fresh process each, so no variant "
        "inherits another's CUDA memory or library state)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps, profile 2 more steps of each engine variant: GPU busy time "
        "vs wall, kernel launches, CPU time per operator (is a step launch-bound?)",
    )
    p.add_argument(
        "--out", default=None, help="JSON path (default $OUT/train.json or benchmarks/results/train.json)"
    )
    args = p.parse_args(argv)
    args.warmup = min(args.warmup, max(0, args.steps - 1))
    return args


def make_config(args: argparse.Namespace, workdir: Path, name: str, overrides: dict[str, Any]) -> Any:
    from tunebench.config import set_dotted, validate_experiment

    data: dict[str, Any] = {
        "name": name,
        "runs_dir": str(workdir),
        "model": {"name": args.model, "dtype": args.dtype},
        "task": {
            "name": args.task,
            "data_dir": args.data_dir,
            "max_train_examples": args.steps * args.batch,
            "max_eval_examples": 8,
        },
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "warmup_steps": 2,
            "eval_every": 10**6,
            "early_stopping_patience": None,
            "liger": False,
        },
    }
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return validate_experiment(data)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# --- tunebench engine ---------------------------------------------------------------------------
def run_engine(args: argparse.Namespace, workdir: Path, name: str) -> dict[str, Any]:
    from tunebench.pipeline import ensure_prepared, open_run
    from tunebench.training.loop import Trainer
    from tunebench.training.lora import liger_loss_fn

    overrides = ENGINE[name]
    if overrides.get("training.liger") and liger_loss_fn() is None:
        return {"status": "skipped: liger-kernel not installed"}
    cfg = make_config(args, workdir, name, overrides)
    run = open_run(cfg)
    ensure_prepared(cfg, run)
    trainer = Trainer(cfg, run, resume=False)
    if overrides.get("training.liger") and trainer.device.type != "cuda":
        return {"status": "skipped: liger needs CUDA"}
    reset_memory()
    losses, times, tokens, norms, rates = [], [], [], [], []
    for step in range(args.steps):
        seconds, out = timed_step(trainer, step)
        times.append(seconds)
        losses.append(float(out["loss"]))
        tokens.append(out["tokens"])
        norms.append(float(out["grad_norm"]))  # non-finite: the step was skipped
        rates.append(out["lr"])
    result = summarize(args, times, tokens, losses, trainer.b.flops_per_token)
    result.update(grad_norms=norms, learning_rates=rates, step_times_s=times)
    if args.repeat:
        result.update(steady_state(args, trainer))
    result["peak_memory_gb"] = peak_gb()
    result["micro_batches_note"] = f"tokens_per_micro_batch={cfg.training.tokens_per_micro_batch}"
    if cfg.training.compile:  # the rounding its compiled layers used
        result["compile_eager_rounding"] = cfg.training.compile_eager_rounding
    if args.profile:
        result["profile"] = profile_steps(trainer, args.steps, 2)
    del trainer
    return result


def timed_step(trainer: Any, step: int) -> tuple[float, dict[str, Any]]:
    """One optimizer step, timed until the GPU has finished it."""
    t0 = time.perf_counter()
    out = trainer.train_step(step)
    sync()
    return time.perf_counter() - t0, out


def steady_state(args: argparse.Namespace, trainer: Any) -> dict[str, Any]:
    """Throughput over repeats of the timed steps' data: every shape has been compiled by then,
    as in a long run where a handful of shapes recur."""
    import torch

    from tunebench.training.mfu import mfu

    times, tokens = [], 0
    for _ in range(args.repeat):
        for step in range(args.warmup, args.steps):
            seconds, out = timed_step(trainer, step)
            times.append(seconds)
            tokens += out["tokens"]
    tps = tokens / sum(times)
    gpu = torch.cuda.get_device_name(0) if trainer.device.type == "cuda" else None
    return {
        "steady_tokens_per_s": tps,
        "steady_mfu": mfu(tps, trainer.b.flops_per_token, gpu),
        "steady_step_times_s": times,
    }


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")


def kernel_seconds(events: Any) -> float:
    """Seconds of GPU kernels among profiler events, each kernel counted once.

    An operator's row carries the device time of the kernels it launched, and those kernels are
    rows of their own too (as are compiled regions' GPU annotations), so summing every row's
    device time counts kernels twice; only device-side events that are not annotations count.
    """
    from torch.autograd import DeviceType

    return (
        sum(
            e.self_device_time_total
            for e in events
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)
        )
        / 1e6
    )


def profile_steps(trainer: Any, first: int, count: int) -> dict[str, Any]:
    """Where a step's time goes: GPU kernel time against wall time, and CPU time per operator.

    If the GPU is busy for much less than the step's wall time, the step is bound by the CPU
    issuing kernels (Python, dispatcher, launches), not by the GPU's arithmetic: then more tokens
    per step cost little extra time, and fewer operators (fusion, CUDA graphs) is the lever.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        tokens = sum(trainer.train_step(first + i)["tokens"] for i in range(count))
        sync()
    wall = (time.perf_counter() - t0) / count
    events = prof.key_averages()
    gpu_s = kernel_seconds(prof.events()) / count
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return {
        "steps": count,
        "tokens_per_step": tokens / count,
        "wall_s_per_step_profiled": wall,
        "gpu_kernel_s_per_step": gpu_s,
        "gpu_busy_fraction": gpu_s / wall if wall else None,
        "kernel_launches_per_step": sum(e.count for e in events if e.key in LAUNCHES) / count,
        "aten_ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / count,
        "top_gpu_ops": prof.key_averages().table(sort_by=sort, row_limit=20),
        "top_cpu_ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20),
    }


# --- baseline: transformers.Trainer -------------------------------------------------------------
def run_hf(args: argparse.Namespace, workdir: Path, name: str) -> dict[str, Any]:
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from tunebench.pipeline import open_run
    from tunebench.pipeline.prepare import prepare
    from tunebench.tasks import get_task
    from tunebench.tasks.base import load_prepared
    from tunebench.training.data import step_example_indices, tokenize_examples
    from tunebench.training.lora import apply_lora, load_base
    from tunebench.training.mfu import model_flops_per_token

    micro = min(HF[name], args.batch)
    cfg = make_config(
        args, workdir, name, {"model.attn_implementation": "sdpa"}
    )  # HF Trainer: padded batches, sdpa
    run = open_run(cfg)
    prepare(cfg, run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tokenizer, eos, pad = load_base(cfg, device)
    model = apply_lora(base, cfg.lora, cfg.training.seed)
    train_set, stats = tokenize_examples(
        load_prepared(run, "train"),
        tokenizer,
        eos,
        get_task(cfg.task).completion_suffix,
        cfg.training.max_length,
    )
    order = [
        i
        for s in range(args.steps)
        for i in step_example_indices(len(train_set), args.batch, s, cfg.training.seed)
    ]
    rows = [{"input_ids": train_set[i].input_ids, "labels": train_set[i].labels} for i in order]
    step_tokens = [
        sum(len(r["input_ids"]) for r in rows[s * args.batch : (s + 1) * args.batch])
        for s in range(args.steps)
    ]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if not times or len(times) % 2 == 0:
                sync()
                times.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync()
            times.append(time.perf_counter())

    class InOrder(Trainer):
        def _get_train_sampler(self, *a: Any, **k: Any) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    training_args = TrainingArguments(
        output_dir=str(workdir / name / "hf"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=max(1, args.batch // micro),
        max_steps=args.steps,
        learning_rate=cfg.training.learning_rate,
        lr_scheduler_type=cfg.training.lr_scheduler,
        warmup_steps=cfg.training.warmup_steps,
        max_grad_norm=cfg.training.max_grad_norm,
        bf16=base.dtype == torch.bfloat16,  # autocast, as on the GPU
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.training.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
    )
    losses: list[float] = []
    norms: list[float] = []
    rates: list[float] = []

    class Losses(TrainerCallback):
        def on_log(
            self, _args: Any, _state: Any, _control: Any, logs: dict[str, Any] | None = None, **k: Any
        ) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                norms.append(float(logs.get("grad_norm", float("nan"))))
                rates.append(float(logs.get("learning_rate", float("nan"))))

    trainer = InOrder(
        model=model,
        args=training_args,
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
        callbacks=[Clock(), Losses()],
    )
    reset_memory()
    trainer.train()
    step_times = [times[2 * i + 1] - times[2 * i] for i in range(len(times) // 2)]
    context = sum(len(ex) for ex in train_set) / len(train_set)
    flops = model_flops_per_token(model, context, stats.labeled_tokens / max(1, stats.tokens))
    result = summarize(args, step_times, step_tokens[: len(step_times)], losses, flops)
    result.update(grad_norms=norms, learning_rates=rates)
    result["peak_memory_gb"] = peak_gb()
    del trainer, model, base
    return result


# --- common ---------------------------------------------------------------------------------------
def summarize(
    args: argparse.Namespace, times: list[float], tokens: list[int], losses: list[float], flops: float
) -> dict[str, Any]:
    import torch

    from tunebench.training.mfu import mfu

    w = args.warmup
    measured_time = sum(times[w:])
    tps = sum(tokens[w:]) / measured_time if measured_time > 0 else 0.0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "status": "ok",
        "tokens_per_s": tps,
        "step_time_s": measured_time / max(1, len(times) - w),
        "mfu": mfu(tps, flops, gpu),
        "flops_per_token": flops,
        "losses": losses,
        "tokens_per_step": sum(tokens) / max(1, len(tokens)),
    }


def print_table(results: dict[str, Any], reference: list[float] | None) -> None:
    head = f"{'variant':16} {'status':8} {'tok/s':>10} {'s/step':>8} {'MFU':>7} {'peak GB':>8} {'loss[0]':>8} {'loss[-1]':>8} {'max rel Δ':>9}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        if r.get("status") != "ok":
            print(f"{name:16} {r.get('status', '?')[:60]}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "-"
        diff = "-"
        if reference and len(reference) == len(r["losses"]):
            diff = f"{max(abs(a - b) / abs(b) for a, b in zip(r['losses'], reference, strict=True)):.2e}"
        print(
            f"{name:16} ok       {r['tokens_per_s']:10.0f} {r['step_time_s']:8.3f} {mfu:>7} {mem:>8} "
            f"{r['losses'][0]:8.4f} {r['losses'][-1]:8.4f} {diff:>9}"
        )
        if "steady_tokens_per_s" in r:
            steady = f"{100 * r['steady_mfu']:.1f}%" if r["steady_mfu"] is not None else "-"
            print(f"{'  steady':16} {'':8} {r['steady_tokens_per_s']:10.0f} {'':8} {steady:>7}")


def run_variant(args: argparse.Namespace, workdir: Path, name: str) -> dict[str, Any]:
    """One variant here; a failure becomes its status (one broken variant must not lose the rest)."""
    import torch

    try:
        return (run_hf if name in HF else run_engine)(args, workdir, name)
    except torch.cuda.OutOfMemoryError:
        return {"status": "oom"}
    except Exception as exc:
        return {"status": f"error: {type(exc).__name__}: {exc}".splitlines()[0][:300]}
    finally:
        reset_memory()


def run_isolated(argv: list[str] | None, name: str, workdir: Path) -> dict[str, Any]:
    """One variant in a fresh ``python bench_train.py --in-process --variants NAME``.

    Why: a transformers.Trainer that fails mid-accumulation leaves accelerate's process-wide
    GradientState behind (this once made a later variant skip every optimizer step), and
    CUDA caching keeps earlier variants' memory around.
    """
    import subprocess

    part = workdir / f"{name}.json"
    rest = list(sys.argv[1:] if argv is None else argv)
    command = [sys.executable, __file__, *rest, "--in-process", "--variants", name, "--out", str(part)]
    proc = subprocess.run(command, check=False)
    if not part.is_file():
        return {"status": f"error: exit status {proc.returncode}, no result"}
    return json.loads(part.read_text(encoding="utf-8"))["results"].get(name, {"status": "missing"})


def main(argv: list[str] | None = None) -> int:
    import faulthandler

    faulthandler.enable()  # a variant that crashes natively leaves its Python stack in the log
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from tunebench.rundir import environment

    out = (
        Path(args.out)
        if args.out
        else Path(os.environ["OUT"]) / "train.json"
        if os.environ.get("OUT")
        else (Path(__file__).resolve().parent / "results" / "train.json")
    )
    results: dict[str, Any] = {}
    report = {
        "benchmark": "train",
        "args": vars(args),
        "environment": environment(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "results": results,
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
            if name not in ENGINE and name not in HF:
                raise SystemExit(f"unknown variant {name}; choose from {DEFAULT_VARIANTS}")
            t0 = time.perf_counter()
            if args.in_process:
                results[name] = run_variant(args, Path(tmp), name)
            else:
                results[name] = run_isolated(argv, name, Path(tmp))
            results[name]["wall_s"] = time.perf_counter() - t0
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            print(
                f"[{name}] {results[name].get('status')} in {results[name]['wall_s']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    ref = results.get("packed", {}).get("losses")
    print_table(results, ref)
    for name, r in results.items():
        prof = r.get("profile")
        if prof:
            print(
                f"\n[{name}] profiled step ({prof['tokens_per_step']:.0f} tokens): wall "
                f"{prof['wall_s_per_step_profiled']:.3f}s, GPU kernels {prof['gpu_kernel_s_per_step']:.3f}s "
                f"({100 * (prof['gpu_busy_fraction'] or 0):.0f}% busy), "
                f"{prof['kernel_launches_per_step']:.0f} kernel launches, {prof['aten_ops_per_step']:.0f} aten ops"
            )
            print(prof["top_gpu_ops"])
            print(prof["top_cpu_ops"])
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
