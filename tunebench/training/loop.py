"""The LoRA training loop: one function, :func:`train`, for 1 or N processes.

Why our own loop rather than ``transformers.Trainer``: the study's comparison needs (1) a loss
that is exactly "sum of token losses / labeled tokens in the whole optimizer step", whatever
the split into micro-batches and ranks; (2) token-budget micro-batches of *padding-free packed*
rows (a variable number of micro-batches per step and per rank); (3) logits only at labeled
positions; (4) skipping non-finite steps without touching AdamW's state; (5) a stateless data
order so a checkpoint resumes on any process count. Each of these fights Trainer's
assumptions (fixed micro-batch count, mean-of-means loss, padded batches); the loop is ~300 lines
over accelerate (DDP/FSDP), peft and ``transformers.get_scheduler``.

Precision: on GPU the frozen base is bfloat16 and runs under bf16 autocast, the LoRA weights
and AdamW states are float32 (see :func:`.lora.apply_lora`); on CPU everything is float32.

Known hazard (why packing is the default): bf16 + SDPA with *padded* batches gave non-finite
gradients on the SQL set on an H100 from step ~26, while fp32 or eager attention did not. With
a padding mask SDPA cannot use the flash kernel and falls back to the memory-efficient one, whose
backward has known NaN cases with masks (pytorch issues 119320, 125674, 178251); left padding
also creates fully masked query rows, which a naive softmax turns into NaN (all -inf row) and
torch's CPU SDPA (>= 2.5) maps to 0. Padding-free packing has no padding and no fully masked
row at all. Either way every step checks loss and gradient norm and skips a non-finite one.

Host and device: the loop waits for the GPU once per step, where loss and gradient norm are
read back together to decide on the update (with ``overlap_steps`` not even then: the decision
stays on the device). Nothing of ours inside a micro-batch waits: the labeled positions come from
the collator (:func:`.data.labeled_positions`); liger-kernel's fused loss (``training.liger``)
still reads its label count once per micro-batch (``.item()`` in liger 0.8.5). Where the host's share of a
step (Python, kernel launches) rivals the GPU's, each wait leaves the GPU idle until the host
catches up; ``benchmarks/bench_step_scaling.py`` measures that, and lists every wait.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import append_jsonl, iter_jsonl, write_json, write_jsonl
from tunebench.models import resolve_dtype
from tunebench.rundir import RunDir
from tunebench.training import checkpoint as ckpt
from tunebench.training import fsdp
from tunebench.training.choose import lowest_validation_losses
from tunebench.training.data import (
    GRAPH_ROW_MULTIPLE,
    TokenizedExample,
    collate,
    plan_micro_batches,
    rank_share,
    real_tokens,
    step_example_indices,
    tokenize_examples,
)
from tunebench.training.lora import LossModel, apply_lora, causal_lm, liger_loss_fn, load_base
from tunebench.training.mfu import mfu, model_flops_per_token

log = logging.getLogger("tunebench.training")

#: Fault injection for tests and drills (part of the product, read every step):
#: comma-separated 1-based steps whose loss is made NaN, and a step after whose optimizer
#: update the process kills itself with SIGKILL (a real crash, before that step's checkpoint).
FAULT_NAN_ENV = "TUNEBENCH_FAULT_NAN_STEP"
FAULT_KILL_ENV = "TUNEBENCH_FAULT_KILL_STEP"


#: seconds between plain progress lines when stderr is not a terminal
PLAIN_PROGRESS_EVERY_S = 30.0


def _fault_steps(name: str) -> set[int]:
    raw = os.environ.get(name, "")
    return {int(x) for x in raw.split(",") if x.strip()}


def total_steps(config: ExperimentConfig, n_train: int) -> int:
    tc = config.training
    if tc.max_steps is not None:
        return tc.max_steps
    assert tc.epochs is not None
    return max(1, math.ceil(tc.epochs * n_train / tc.batch_size))


def new_state() -> dict[str, Any]:
    return {
        "step": 0,
        "tokens": 0,
        "wall_time": 0.0,
        "train_time": 0.0,
        "best_loss": None,
        "best_step": None,
        "bad_evals": 0,
        "skipped_steps": 0,
        "stopped_early": False,
    }


def step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout RNG seed of one (step, rank): resume is exact without per-rank RNG state."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class Trainer:
    """State of one training run; :func:`train` drives it."""

    def __init__(self, config: ExperimentConfig, run: RunDir, resume: bool) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.config, self.run, self.tc = config, run, config.training
        # Buffers (rotary inv_freq) are identical on every rank: not broadcasting them keeps
        # forward passes collective-free, so ranks may run different numbers of micro-batches.
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
        self.device = self.acc.device
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.fsdp = self.tc.fsdp and self.world > 1  # one process: nothing to shard
        kind = str(self.acc.distributed_type).rsplit(".", 1)[-1]
        if kind not in ("NO", "MULTI_GPU", "MULTI_CPU"):
            # the loop shards by itself (training.fsdp); accelerate's FSDP/DeepSpeed wrapping
            # from an accelerate config file would fight it
            raise TunebenchError(
                f"accelerate is configured for {kind}; launch plain DDP and set training.fsdp: true "
                "to shard (ACCELERATE_CONFIG_FILE with distributed_type MULTI_GPU, or none)"
            )
        if self.tc.batch_size < self.world:
            raise TunebenchError(
                f"training.batch_size {self.tc.batch_size} < {self.world} processes: every process needs an example"
            )
        check_cuda_graphs_allowed(self.tc.cuda_graphs, self.device.type, os.environ)
        self.resume = resume
        self.start = time.perf_counter()
        self.last_progress_line = 0.0  # perf_counter of the last plain progress line

    # --- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import get_scheduler

        from tunebench.data.prepare import load_prepared, prepare
        from tunebench.tasks import get_task

        if not self.run.stage_done("prepare"):
            if self.main:
                prepare(self.config, self.run)
            self.acc.wait_for_everyone()
        base, tokenizer, self.eos_id, self.pad_id = load_base(self.config, self.device)
        if self.tc.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = apply_lora(base, self.config.lora, self.tc.seed)
        # the compute dtype the config asks for, not the first parameter's: a k-bit base keeps its
        # embeddings and norms in float32 (peft's preparation) but computes in bfloat16
        self.dtype = resolve_dtype(self.config.model.dtype, self.device)
        suffix = get_task(self.config.task).completion_suffix
        tok = dict(
            tokenizer=tokenizer,
            eos_id=self.eos_id,
            suffix=suffix,
            max_length=self.tc.max_length,
            loss_on=self.tc.loss_on,
        )
        self.train_set, self.train_stats = tokenize_examples(load_prepared(self.run, "train"), **tok)
        val = load_prepared_or_empty(self.run, "validation")
        self.val_set, _ = tokenize_examples(val, split="validation", **tok) if val else ([], None)
        if self.train_stats.truncated and self.main:
            self.say(
                f"{self.train_stats.truncated} of {self.train_stats.examples} training prompts were "
                f"cut from the left to fit training.max_length {self.tc.max_length}"
            )
        self.total = total_steps(self.config, len(self.train_set))
        fused = None
        if self.tc.liger and self.device.type == "cuda":
            fused = liger_loss_fn()
            log.info(
                "liger fused linear cross-entropy: %s", "on" if fused else "not installed, using chunked loss"
            )
        if self.tc.compile:
            compile_layers(
                causal_lm(self.model),
                cuda_graphs=self.tc.cuda_graphs,
                eager_rounding=self.tc.compile_eager_rounding,
            )
        self.state = new_state()
        self.restore_or_start()  # the adapter's weights, before FSDP would shard them
        # CUDA graphs: a fixed var-len max length (at least the longest filler), so the graphs'
        # scalar inputs repeat too
        fixed = max(self.tc.max_length, GRAPH_ROW_MULTIPLE) if self.tc.cuda_graphs else None
        loss_model = LossModel(self.model, fused, fixed)
        if self.fsdp:
            fsdp.shard(loss_model, list(causal_lm(self.model).get_decoder().layers), self.dtype)
        params = [p for p in loss_model.parameters() if p.requires_grad]  # FSDP: the local shards
        self.params = params
        if self.tc.cuda_graphs:
            # gradients accumulate into memory of their own: the first backward of a step would
            # otherwise adopt a graph's output buffer as .grad, which the next replay overwrites
            for p in params:
                p.grad = torch.zeros_like(p)
        optimizer = torch.optim.AdamW(
            params,
            lr=self.tc.learning_rate,
            weight_decay=self.tc.weight_decay,
            fused=True if fused_adamw(self.tc.overlap_steps, self.device.type, self.fsdp) else None,
        )
        self.scheduler = get_scheduler(
            self.tc.lr_scheduler,
            optimizer,
            num_warmup_steps=self.tc.warmup_steps,
            num_training_steps=self.total,
        )
        # The optimizer stays a plain torch one: accelerate's wrapper steps only when its
        # process-wide GradientState says gradients are in sync, state that another
        # library's loop in the same process (a transformers.Trainer stopped mid-accumulation)
        # can leave False, and then no update would ever happen. The loop syncs by itself.
        self.optimizer = optimizer
        # FSDP: sharded already (accelerate would wrap it in DDP)
        self.loss_model = loss_model if self.fsdp else self.acc.prepare(loss_model)
        if self.resume_from is not None:
            restored = ckpt.load_checkpoint(
                self.resume_from, self.bare_loss_model(), self.optimizer, self.scheduler
            )
            self.state = restored["state"]
            ckpt.set_rng_state(restored["rng"])
        context = sum(len(ex) for ex in self.train_set) / len(self.train_set)
        labeled = self.train_stats.labeled_tokens / max(1, self.train_stats.tokens)
        self.flops_per_token = model_flops_per_token(self.model, context, labeled)

    def restore_or_start(self) -> None:
        """Load the adapter of the latest checkpoint (resume) or clear a previous attempt."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        root = self.run.checkpoints_dir
        latest = ckpt.latest_checkpoint(root) if self.resume else None
        self.resume_from = latest
        if latest is not None:
            weights = load_file(str(latest / "adapter" / "adapter_model.safetensors"))
            set_peft_model_state_dict(self.model, weights)
            step = ckpt.load_state(latest)["step"]
            if self.main:
                self.say(f"resuming from {latest} (step {step})")
                keep = [r for r in _metrics_rows(self.run.metrics_log) if r.get("step", 0) <= step]
                write_jsonl(self.run.metrics_log, keep)
        elif self.main:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
            self.run.metrics_log.unlink(missing_ok=True)
        self.acc.wait_for_everyone()

    def bare_loss_model(self) -> torch.nn.Module:
        """The LossModel without accelerate's DDP wrapper (FSDP's is the module itself)."""
        return self.loss_model if self.fsdp else self.acc.unwrap_model(self.loss_model)

    def passes_everywhere(self, count: int) -> int:
        """FSDP: the most forward passes any process runs (each pass all-gathers, so all must
        run as many); DDP: ``count`` (forwards are collective-free, see ``broadcast_buffers``)."""
        if not self.fsdp:
            return count
        most = torch.tensor(count, device=self.device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        return int(most)

    # --- one step -------------------------------------------------------------------------
    def graph_step(self) -> None:
        """CUDA graphs: a new forward starts (earlier replays' outputs may be overwritten)."""
        if self.tc.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Tensors to the device; other entries (the packed example lengths) as they are."""
        return {
            k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
        }

    def train_step(self, step: int) -> dict[str, Any]:
        """Forward/backward every micro-batch of this rank's share of ``step``; one update."""
        tc = self.tc
        indices = step_example_indices(len(self.train_set), tc.batch_size, step, tc.seed)
        examples = [self.train_set[i] for i in indices]
        labeled = sum(ex.n_labeled for ex in examples)  # global: every rank knows the whole step
        mine = [examples[i] for i in rank_share(range(len(examples)), self.rank, self.world)]
        micro = plan_micro_batches(mine, tc.packing, tc.tokens_per_micro_batch, tc.micro_batch_size)
        passes = self.passes_everywhere(len(micro))
        torch.manual_seed(step_seed(tc.seed, step, self.rank))
        poison = (step + 1) in _fault_steps(FAULT_NAN_ENV)
        loss_sum = torch.zeros((), device=self.device)
        for j in range(passes):
            # FSDP: a process out of micro-batches repeats its first one with weight 0
            weight = 1.0 if j < len(micro) else 0.0
            group = micro[j] if weight else micro[0]
            with profiler_scope("tunebench/collate"):
                batch = self.to_device(collate(group, tc.packing, self.pad_id, tc.cuda_graphs))
            self.graph_step()
            last = j == passes - 1  # one gradient all-reduce per step, at the last pass
            if self.fsdp:
                fsdp.set_gradient_sync(self.loss_model, last)
                sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last else self.acc.no_sync(self.loss_model)
            with sync:
                with self.autocast(), profiler_scope("tunebench/forward"):
                    total = self.loss_model(**batch) * weight
                # DDP and FSDP average gradients over ranks: scale by world / labeled so the
                # result is sum(token losses) / labeled tokens of the whole step.
                scaled = total * (self.world / labeled)
                if poison:
                    scaled = scaled * float("nan")
                with profiler_scope("tunebench/backward"):
                    scaled.backward()  # not acc.backward: it divides by a process-wide accumulation count
            loss_sum += total.detach() * (float("nan") if poison else 1.0)
        if tc.overlap_steps:
            return self.update_without_waiting(loss_sum, labeled, real_tokens(examples))
        with profiler_scope("tunebench/update"):
            reduced = self.acc.reduce(loss_sum, "sum")
            norm = self.clip_gradients()
            # one wait for the device per step: loss and norm are read back together (a Python
            # number copied to the GPU would be a wait of its own, so the token count stays
            # here: every rank knows the whole step's examples)
            loss_total, grad_norm = torch.stack([reduced, norm]).tolist()
            loss = loss_total / labeled
            finite = math.isfinite(loss) and math.isfinite(grad_norm)
            lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses
            if finite:
                self.optimizer.step()
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=not self.tc.cuda_graphs)  # graphs: keep the buffers
        return {
            "loss": loss,
            "grad_norm": grad_norm,
            "tokens": real_tokens(examples),
            "finite": finite,
            "lr": lr,
        }

    def update_without_waiting(
        self, loss_sum: torch.Tensor, labeled: int, step_tokens: int
    ) -> dict[str, Any]:
        """overlap_steps: the same update with nothing read back from the device. The finite
        check becomes fused AdamW's ``found_inf`` (the kernel then leaves weights, moments and
        step count alone); loss and norm are returned as tensors for :meth:`settle`.
        ``step_tokens``: every rank knows the whole step's examples, so no reduce is needed."""
        loss = self.acc.reduce(loss_sum, "sum") / labeled
        norm = self.acc.clip_grad_norm_(self.params, self.tc.max_grad_norm)
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        self.optimizer.step()
        self.scheduler.step()  # advances over a skipped step too: deciding would mean waiting
        self.optimizer.zero_grad(set_to_none=not self.tc.cuda_graphs)
        return {"loss": loss, "grad_norm": norm, "tokens": step_tokens, "finite": finite, "lr": lr}

    def clip_gradients(self) -> torch.Tensor:
        """Clip to ``training.max_grad_norm``; returns the norm before clipping (inf/nan kept)
        as a float32 scalar on the device, not yet read back."""
        if not self.fsdp:
            return self.acc.clip_grad_norm_(self.params, self.tc.max_grad_norm).float()
        # the norm over DTensor shards is itself a DTensor: its full value is the global norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.tc.max_grad_norm)
        return fsdp.full_tensor(norm).float()

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Same loss definition over the whole validation split (ranks share it, then reduce)."""
        if not self.val_set:
            return None
        module = self.bare_loss_model()  # DDP: no collectives per forward; FSDP: needs its own
        module.eval()
        mine = rank_share(self.val_set, self.rank, self.world)
        groups = plan_micro_batches(
            mine, self.tc.packing, self.tc.tokens_per_micro_batch, self.tc.micro_batch_size
        )
        filler = groups[0] if groups else [self.train_set[0]]  # FSDP: a pass whose loss is dropped
        total = torch.zeros((), device=self.device)
        for j in range(self.passes_everywhere(len(groups))):
            group = groups[j] if j < len(groups) else filler
            self.graph_step()
            with self.autocast():
                batch = collate(group, self.tc.packing, self.pad_id, self.tc.cuda_graphs)
                loss = module(**self.to_device(batch)).float()
            if j < len(groups):
                total += loss
        module.train()
        labeled = sum(ex.n_labeled for ex in self.val_set)
        return float(self.acc.reduce(total, "sum")) / labeled

    # --- loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        s = self.state
        elapsed_before = s["wall_time"]
        session_start = time.perf_counter()
        kill_steps = _fault_steps(FAULT_KILL_ENV)
        writer = self.tensorboard()
        progress, task = self.progress(s["step"])
        pending: tuple[dict[str, Any], dict[str, Any]] | None = None  # overlap_steps: read late
        loss = float("nan")  # the latest step whose outcome has been read
        try:
            while s["step"] < self.total and not s["stopped_early"]:
                t0 = time.perf_counter()
                out = self.train_step(s["step"])
                s["train_time"] += time.perf_counter() - t0
                s["step"] += 1
                s["tokens"] += out["tokens"]
                s["wall_time"] = elapsed_before + time.perf_counter() - session_start
                if pending is not None:  # the previous step's numbers, now that this one is queued
                    loss = self.settle(s, *pending, writer)
                pending = (dict(s), out)
                if not self.tc.overlap_steps or any(self.evaluates_and_saves(s["step"])):
                    # validation and checkpoints see every step's outcome first
                    loss = self.settle(s, *pending, writer)
                    pending = None
                if s["step"] in kill_steps:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.maybe_evaluate_and_save(s, writer)
                tps = s["tokens"] / max(s["train_time"], 1e-9)
                if progress is not None:
                    progress.update(task, completed=s["step"], loss=loss, tps=tps)
                elif self.main and self.plain_progress_due(s["step"], s["stopped_early"]):
                    shown = f"loss {loss:.4f}, " if math.isfinite(loss) else ""  # overlap: not read yet
                    self.say(f"train step {s['step']}/{self.total}: {shown}{tps:.0f} tokens/s")
        except KeyboardInterrupt:
            last = ckpt.latest_checkpoint(self.run.checkpoints_dir)
            where = f"last checkpoint {last.name}" if last else "no checkpoint yet"
            raise TunebenchError(
                f"training interrupted at step {s['step']} ({where}); run the same "
                "`tunebench train CONFIG` again to resume (--no-resume starts over)"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise TunebenchError(
                f"out of GPU memory at step {s['step'] + 1}: lower training.tokens_per_micro_batch "
                f"(now {self.tc.tokens_per_micro_batch}) or training.micro_batch_size, or set "
                "training.gradient_checkpointing: true"
            ) from None
        finally:
            if progress is not None:
                progress.stop()
            if writer is not None:
                writer.close()
        return self.finish()

    def plain_progress_due(self, step: int, last: bool = False) -> bool:
        """Without a terminal (a log file, CI, nohup) a line every 30 s, and at the first and
        last step (``last``: early stopping ends the run here), stands in for the progress bar."""
        now = time.perf_counter()
        if last or step in (1, self.total) or now - self.last_progress_line >= PLAIN_PROGRESS_EVERY_S:
            self.last_progress_line = now
            return True
        return False

    def settle(self, s: dict[str, Any], at_step: dict[str, Any], out: dict[str, Any], writer: Any) -> float:
        """Read one step's outcome (``at_step``: the state right after it) into the live state
        ``s`` and the log; abort after too many non-finite steps. Returns the step's loss."""
        if any(isinstance(v, torch.Tensor) for v in out.values()):  # overlap_steps
            t0 = time.perf_counter()
            out = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
            s["train_time"] += time.perf_counter() - t0  # waiting for a step's GPU work is step time
        if not out["finite"]:
            s["skipped_steps"] += 1
        self.log_train(at_step, out, writer)
        if not out["finite"] and s["skipped_steps"] > self.tc.max_bad_steps:
            raise TunebenchError(
                f"training aborted at step {at_step['step']}: {s['skipped_steps']} non-finite steps "
                f"(> training.max_bad_steps {self.tc.max_bad_steps}); lower training.learning_rate, "
                "keep training.packing on, or use model.attn_implementation: eager"
            )
        return float(out["loss"])

    def evaluates_and_saves(self, step: int) -> tuple[bool, bool]:
        """Whether the loop validates, and whether it saves, after ``step`` (the last step does
        both). Early stopping happens only at a validation, so the loop ends at one of these."""
        tc = self.tc
        evaluate = step % tc.eval_every == 0 or step >= self.total
        return evaluate, evaluate or (tc.save_every is not None and step % tc.save_every == 0)

    def maybe_evaluate_and_save(self, s: dict[str, Any], writer: Any) -> None:
        tc = self.tc
        step = s["step"]
        final = step >= self.total
        evaluate, save = self.evaluates_and_saves(step)
        if evaluate:
            val = self.validation_loss()
            if val is not None:
                self.log_row(
                    {"step": step, "split": "validation", "loss": val, **self.progress_fields(s)}, writer
                )
                best = s["best_loss"]
                if best is None or val < best - tc.early_stopping_min_delta:
                    s["best_loss"], s["best_step"], s["bad_evals"] = val, step, 0
                else:
                    s["bad_evals"] += 1
                    patience = tc.early_stopping_patience
                    if patience is not None and s["bad_evals"] >= patience and not final:
                        s["stopped_early"] = True
                        if self.main:
                            self.say(
                                f"early stopping at step {step}: best validation loss {best:.4f} at step {s['best_step']}"
                            )
            else:  # no validation split: the latest adapter is the one kept
                s["best_step"] = step
        if save or s["stopped_early"]:
            self.save(s)

    def save(self, s: dict[str, Any]) -> None:
        # FSDP: every process joins the gathers (collectives); the main process alone writes,
        # so under DDP only it copies its (full, identical) optimizer state
        if self.fsdp or self.main:
            optimizer_state = ckpt.optimizer_state(self.bare_loss_model(), self.optimizer)
        adapter_state = fsdp.full_adapter_state(self.model) if self.fsdp else None
        if self.main:
            root = self.run.checkpoints_dir
            ckpt.save_checkpoint(
                root,
                s["step"],
                self.model,
                optimizer_state,
                self.scheduler,
                dict(s),
                ckpt.rng_state(),
                adapter_state=adapter_state,
            )
            ckpt.prune(root, self.steps_to_keep(s))
        self.acc.wait_for_everyone()

    def steps_to_keep(self, s: dict[str, Any]) -> set[int]:
        """The latest and the best checkpoint; with checkpoint choice by metric also the
        ``checkpoints_to_compare`` lowest validation losses (see :mod:`.choose`)."""
        keep = {s["step"], s["best_step"] or s["step"]}
        if self.tc.select_checkpoint_by == "validation_metric":
            lowest = lowest_validation_losses(self.run.metrics_log, self.tc.checkpoints_to_compare)
            keep |= {step for step, _ in lowest}
        return keep

    def finish(self) -> dict[str, Any]:
        s = self.state
        gpu = torch.cuda.get_device_name(0) if self.device.type == "cuda" else None
        tps = s["tokens"] / s["train_time"] if s["train_time"] > 0 else 0.0
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        summary = {
            "provider": "local",
            "model": self.config.model.name,
            "steps": s["step"],
            "epochs": s["step"] * self.tc.batch_size / len(self.train_set),
            "train_tokens": s["tokens"],
            "wall_time_s": s["wall_time"],
            "gpu_type": gpu or "cpu",
            "gpu_count": self.world if gpu else 0,
            "peak_memory_gb": peak,
            "best_validation_loss": s["best_loss"],
            "best_step": s["best_step"],
            "tokens_per_s": tps,
            "skipped_steps": s["skipped_steps"],
            "mfu": mfu(tps, self.flops_per_token, gpu, self.world),
            "flops_per_token": self.flops_per_token,
            "stopped_early": s["stopped_early"],
            "truncated_prompts": self.train_stats.truncated,
            "processes": self.world,
            "sharding": "fsdp" if self.fsdp else "ddp" if self.world > 1 else None,
            "packing": self.tc.packing,
        }
        if self.main:
            best = self.run.checkpoints_dir / f"step-{s['best_step']}"
            ckpt.publish_adapter(best / "adapter", self.run.adapter_dir)
            write_json(self.run.train_summary, summary)
            self.run.record_stage(
                "train",
                steps=s["step"],
                best_step=s["best_step"],
                best_validation_loss=s["best_loss"],
                wall_time_s=s["wall_time"],
                tokens_per_s=tps,
                gpu_type=summary["gpu_type"],
                gpu_count=summary["gpu_count"],
            )
        self.acc.wait_for_everyone()
        return summary

    # --- logging --------------------------------------------------------------------------
    def progress_fields(self, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": s["step"] * self.tc.batch_size / len(self.train_set),
            "tokens": s["tokens"],
            "wall_time": round(s["wall_time"], 3),
            "train_time": round(s["train_time"], 3),  # in training steps (no validation, saving)
            "lr": self.scheduler.get_last_lr()[0],
        }

    def log_train(self, s: dict[str, Any], out: dict[str, Any], writer: Any) -> None:
        row = {"step": s["step"], "split": "train", "loss": out["loss"], **self.progress_fields(s)}
        row["lr"], row["grad_norm"] = out["lr"], out["grad_norm"]
        if not out["finite"]:
            row["skipped"] = True
            if self.main:
                self.say(f"step {s['step']}: non-finite loss/gradient, update skipped")
        self.log_row(row, writer)

    def log_row(self, row: dict[str, Any], writer: Any) -> None:
        if not self.main:
            return
        append_jsonl(self.run.metrics_log, {k: _json_float(v) for k, v in row.items()})
        if writer is not None and math.isfinite(row["loss"]):
            writer.add_scalar(f"loss/{row['split']}", row["loss"], row["step"])

    def tensorboard(self) -> Any:
        if not self.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run.root / "tensorboard"))

    def progress(self, done: int) -> tuple[Any, Any]:
        if not self.main or not sys.stderr.isatty():
            return None, None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[tps]:.0f} tok/s"),
            TimeRemainingColumn(),
            transient=True,
        )
        task = progress.add_task("train", total=self.total, completed=done, loss=float("nan"), tps=0.0)
        progress.start()
        return progress, task

    def say(self, message: str) -> None:
        from rich.console import Console

        Console(stderr=True).print(message, highlight=False)


def fused_adamw(overlap_steps: bool, device_type: str, sharded: bool) -> bool:
    """Fused AdamW (one kernel for every LoRA tensor) where it is known to work: with
    ``overlap_steps``, which needs it (it alone can skip a step on the device), and on one GPU
    or DDP, where the default multi-tensor AdamW launches dozens of small kernels per step while
    the GPU waits on the host. Not under FSDP, whose parameters are DTensor shards."""
    return overlap_steps or (device_type == "cuda" and not sharded)


def profiler_scope(name: str) -> contextlib.AbstractContextManager[Any]:
    """A named range in torch.profiler traces (``benchmarks/bench_step_scaling.py`` reads
    them to say where the GPU waits); ~1 µs when no profiler runs."""
    return torch.profiler.record_function(name)


def _json_float(v: Any) -> Any:
    """NaN/inf as null in JSON (metrics.jsonl stays valid JSON)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path)) if path.is_file() else []


def load_prepared_or_empty(run: RunDir, split: str) -> list[Any]:
    from tunebench.data.prepare import load_prepared

    path = run.prepared(split)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return []
    return load_prepared(run, split)


#: opt-in for training.cuda_graphs on a GPU, where its only run so far crashed
CUDA_GRAPHS_OPT_IN = "TUNEBENCH_EXPERIMENTAL_CUDA_GRAPHS"


def check_cuda_graphs_allowed(requested: bool, device_type: str, env: Any) -> None:
    """Refuse ``training.cuda_graphs`` on a GPU unless opted in: on both its GPU runs (one H100,
    torch 2.11, 2026-11-28 and 2026-12-06) the process died of a segmentation fault, the second
    time (with faulthandler on) inside inductor's generated code for a compiled layer's backward,
    run on autograd's device thread; the cause below that is not known. On the CPU it only fills
    rows (what tests check)."""
    if requested and device_type == "cuda" and env.get(CUDA_GRAPHS_OPT_IN) != "1":
        raise TunebenchError(
            "training.cuda_graphs crashed (segmentation fault) on both its GPU runs so far (H100, "
            "torch 2.11; BENCHMARKS.md), so it is off until that is understood: set "
            "training.cuda_graphs: false (training.compile alone is the fast path), or "
            f"{CUDA_GRAPHS_OPT_IN}=1 to try it anyway"
        )


def compile_layers(model: torch.nn.Module, cuda_graphs: bool = False, eager_rounding: bool = True) -> None:
    """torch.compile each decoder layer in place (``nn.Module.compile``: parameter names, and
    thus saved adapters, are unchanged).

    Per layer, not the whole decoder: the layers share one forward function and, with their
    parameters as graph inputs, one compiled graph, so compile time does not grow with depth
    (CPU, 6 layers: 15 s per layer-wise vs 45 s whole; the whole 28-layer decoder took ~430 s on
    the H100 host). ``dynamic``: packed micro-batches change their token count every step.
    ``cuda_graphs``: mode ``reduce-overhead``, each layer's forward and backward replayed as
    CUDA graphs, recorded once per distinct (row length, boundary count): rows come in multiples
    of 256 tokens and boundary lists in multiples of 16, so a handful of shapes recur.
    ``eager_rounding``: inductor rounds bf16 intermediates where eager does (its
    ``emulate_precision_casts``). Passed as these layers' own inductor options, which inductor
    also applies to the backward it compiles later, so nothing else compiled in the process
    (a static-cache decode step, say) is affected. Without it the H100's compiled losses ran
    0.7-4.2% below eager's, with it within 0.27% at the same speed (BENCHMARKS.md, seventh
    sitting). ``mode`` and ``options`` exclude each other, so CUDA graphs are asked for by the
    option that mode ``reduce-overhead`` stands for.
    """
    options: dict[str, Any] = {"emulate_precision_casts": eager_rounding}
    if cuda_graphs:
        options["triton.cudagraphs"] = True
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True, options=options)


def train(config: ExperimentConfig, run: RunDir, resume: bool = True) -> dict[str, Any]:
    """LoRA-fine-tune ``config.model`` on the run's prepared train split; returns train_summary.

    Writes ``metrics.jsonl``, ``checkpoints/step-N/`` (latest + best), ``adapter/`` (the best
    adapter by validation loss), ``train_summary.json`` and the manifest's "train" stage.
    With ``resume`` it continues from the latest checkpoint.
    """
    trainer = Trainer(config, run, resume)
    trainer.setup()
    return trainer.fit()


__all__ = ["TokenizedExample", "train"]
