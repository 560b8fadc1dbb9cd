"""The training loop (LoRA or full fine-tuning, :mod:`.method`): one function, :func:`train`,
for 1 or N processes.

Why our own loop rather than ``transformers.Trainer``: the study's comparison needs (1) a loss
that is exactly "sum of token losses / labeled tokens in the whole optimizer step", whatever
the split into micro-batches and ranks; (2) token-budget micro-batches of *padding-free packed*
rows (a variable number of micro-batches per step and per rank); (3) logits only at labeled
positions; (4) skipping non-finite steps without touching AdamW's state; (5) a stateless data
order so a checkpoint resumes on any process count. Each of these fights Trainer's
assumptions (fixed micro-batch count, mean-of-means loss, padded batches); the loop runs over
accelerate (DDP/FSDP), peft and ``transformers.get_scheduler``; :mod:`.build` makes what it
runs on and :mod:`.log` reports it.

Precision: on GPU the frozen base is bfloat16 and runs under bf16 autocast, the LoRA weights
and AdamW states are float32 (see :func:`.lora.apply_lora`); with ``training.method: full``
every weight is a float32 master under the same bf16 autocast (:mod:`.method`); on CPU
everything is float32.

Known hazard (why packing is the default): bf16 + SDPA with *padded* batches gave non-finite
gradients on the SQL set on an H100 from step ~26, while fp32 or eager attention did not. With
a padding mask SDPA cannot use the flash kernel and falls back to the memory-efficient one, whose
backward has known NaN cases with masks (pytorch issues 119320, 125674, 178251); left padding
also creates fully masked query rows, which a naive softmax turns into NaN (all -inf row) and
torch's CPU SDPA (>= 2.5) maps to 0. Padding-free packing has no padding and no fully masked
row at all. Either way every step checks loss and gradient norm and skips a non-finite one.

Host and device: the loop waits for the GPU once per step, where loss and gradient norm are
read back together to decide on the update. Nothing of ours inside a micro-batch waits: the labeled positions come from
the collator (:func:`.data.labeled_positions`); liger-kernel's fused loss (``training.liger``)
still reads its label count once per micro-batch (``.item()`` in liger 0.8.5). Where the host's share of a
step (Python, kernel launches) rivals the GPU's, each wait leaves the GPU idle until the host
catches up; ``benchmarks/bench_step_scaling.py`` measures that, and lists every wait.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunebench.config import ExperimentConfig, TrainingConfig
from tunebench.errors import TunebenchError
from tunebench.rundir import RunDir
from tunebench.training import checkpoint as ckpt
from tunebench.training import fsdp
from tunebench.training.build import Built, TrainState, build
from tunebench.training.data import collate, plan_micro_batches, rank_share, real_tokens, step_example_indices
from tunebench.training.log import TrainingLog, say
from tunebench.training.mfu import mfu

#: Fault injection for tests and drills (part of the product, read every step):
#: comma-separated 1-based steps whose loss is made NaN, and a step after whose optimizer
#: update the process kills itself with SIGKILL (a real crash, before that step's checkpoint).
FAULT_NAN_ENV = "TUNEBENCH_FAULT_NAN_STEP"
FAULT_KILL_ENV = "TUNEBENCH_FAULT_KILL_STEP"


def fault_steps(name: str) -> set[int]:
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


def step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout RNG seed of one (step, rank): resume is exact without per-rank RNG state."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def accelerator() -> Any:
    """accelerate's Accelerator for 1 process or DDP; the loop shards by itself (FSDP)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Buffers (rotary inv_freq) are identical on every rank: not broadcasting them keeps
    # forward passes collective-free, so ranks may run different numbers of micro-batches.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    kind = str(acc.distributed_type).rsplit(".", 1)[-1]
    if kind not in ("NO", "MULTI_GPU", "MULTI_CPU"):
        # accelerate's FSDP/DeepSpeed wrapping from an accelerate config file would fight ours
        raise TunebenchError(
            f"accelerate is configured for {kind}; launch plain DDP and set training.fsdp: true "
            "to shard (ACCELERATE_CONFIG_FILE with distributed_type MULTI_GPU, or none)"
        )
    return acc


def warn_if_disk_is_short(tc: TrainingConfig, run: RunDir, trainable: int) -> None:
    """Say so before the first step when the run's checkpoints may not fit the free disk (a
    full fine-tune of 1.5B keeps tens of GB), rather than failing at a save an hour in."""
    import shutil

    from tunebench.sizing import GIB, checkpoint_disk_bytes

    need = checkpoint_disk_bytes(tc, trainable)
    free = shutil.disk_usage(run.root).free
    if need > free:
        say(
            f"warning: this run's checkpoints may need up to {need / GIB:.1f} GiB on {run.root}, "
            f"{free / GIB:.1f} GiB is free (training.checkpoints_to_compare, training.optimizer "
            "adamw_8bit and a roomier runs_dir reduce the need or make room)"
        )


class Trainer:
    """One training run: :meth:`train_step`, :meth:`validation_loss` and :meth:`fit` over the
    objects :func:`.build.build` made."""

    def __init__(self, config: ExperimentConfig, run: RunDir, resume: bool) -> None:
        self.config, self.run, self.tc = config, run, config.training
        self.acc = accelerator()
        self.device = self.acc.device
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.fsdp = self.tc.fsdp and self.world > 1  # one process: nothing to shard
        if self.tc.batch_size < self.world:
            raise TunebenchError(
                f"training.batch_size {self.tc.batch_size} < {self.world} processes: every process needs an example"
            )
        self.b: Built = build(config, run, self.acc, resume, say)
        self.state: TrainState = self.b.state
        if self.main:
            warn_if_disk_is_short(self.tc, run, sum(p.numel() for p in self.b.params))

    def passes_everywhere(self, count: int) -> int:
        """FSDP: the most forward passes any process runs (each pass all-gathers, so all must
        run as many); DDP: ``count`` (forwards are collective-free, see ``broadcast_buffers``)."""
        if not self.fsdp:
            return count
        most = torch.tensor(count, device=self.device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        return int(most)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.b.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.b.dtype)
        return contextlib.nullcontext()

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Tensors to the device; other entries (the packed example lengths) as they are."""
        return {
            k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
        }

    def micro_batches(self, examples: list[Any]) -> list[list[Any]]:
        tc = self.tc
        return plan_micro_batches(examples, tc.packing, tc.tokens_per_micro_batch, tc.micro_batch_size)

    # --- one step -------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        """Forward/backward every micro-batch of this rank's share of ``step``; one update."""
        tc, b = self.tc, self.b
        indices = step_example_indices(len(b.train_set), tc.batch_size, step, tc.seed)
        examples = [b.train_set[i] for i in indices]
        labeled = sum(ex.n_labeled for ex in examples)  # global: every rank knows the whole step
        micro = self.micro_batches(
            [examples[i] for i in rank_share(range(len(examples)), self.rank, self.world)]
        )
        passes = self.passes_everywhere(len(micro))
        torch.manual_seed(step_seed(tc.seed, step, self.rank))
        poison = (step + 1) in fault_steps(FAULT_NAN_ENV)
        loss_sum = torch.zeros((), device=self.device)
        for j in range(passes):
            # FSDP: a process out of micro-batches repeats its first one with weight 0
            weight = 1.0 if j < len(micro) else 0.0
            with profiler_scope("tunebench/collate"):
                batch = self.to_device(collate(micro[j] if weight else micro[0], tc.packing, b.pad_id))
            last = j == passes - 1  # one gradient all-reduce per step, at the last pass
            if self.fsdp:
                fsdp.set_gradient_sync(b.loss_model, last)
                sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last else self.acc.no_sync(b.loss_model)
            with sync:
                with self.autocast(), profiler_scope("tunebench/forward"):
                    total = b.loss_model(**batch) * weight
                # DDP and FSDP average gradients over ranks: scale by world / labeled so the
                # result is sum(token losses) / labeled tokens of the whole step.
                scaled = total * (self.world / labeled)
                if poison:
                    scaled = scaled * float("nan")
                with profiler_scope("tunebench/backward"):
                    scaled.backward()  # not acc.backward: it divides by a process-wide accumulation count
            loss_sum += total.detach() * (float("nan") if poison else 1.0)
        with profiler_scope("tunebench/update"):
            reduced = self.acc.reduce(loss_sum, "sum")
            norm = self.clip_gradients()
            # one wait for the device per step: loss and norm are read back together (a Python
            # number copied to the GPU would be a wait of its own, so the token count stays
            # here: every rank knows the whole step's examples)
            loss_total, grad_norm = torch.stack([reduced, norm]).tolist()
            loss = loss_total / labeled
            finite = math.isfinite(loss) and math.isfinite(grad_norm)
            lr = b.scheduler.get_last_lr()[0]  # the rate this step's update uses
            if finite:
                b.optimizer.step()
                b.scheduler.step()
            b.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss,
            "grad_norm": grad_norm,
            "tokens": real_tokens(examples),
            "finite": finite,
            "lr": lr,
        }

    def clip_gradients(self) -> torch.Tensor:
        """Clip to ``training.max_grad_norm``; returns the norm before clipping (inf/nan kept)
        as a float32 scalar on the device, not yet read back."""
        if not self.fsdp:
            return self.acc.clip_grad_norm_(self.b.params, self.tc.max_grad_norm).float()
        # the norm over DTensor shards is itself a DTensor: its full value is the global norm
        norm = torch.nn.utils.clip_grad_norm_(self.b.params, self.tc.max_grad_norm)
        return fsdp.full_tensor(norm).float()

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Same loss definition over the whole validation split (ranks share it, then reduce)."""
        b = self.b
        if not b.val_set:
            return None
        module = b.bare_loss_model  # DDP: no collectives per forward; FSDP: needs its own
        module.eval()
        groups = self.micro_batches(rank_share(b.val_set, self.rank, self.world))
        filler = groups[0] if groups else [b.train_set[0]]  # FSDP: a pass whose loss is dropped
        total = torch.zeros((), device=self.device)
        for j in range(self.passes_everywhere(len(groups))):
            group = groups[j] if j < len(groups) else filler
            with self.autocast():
                loss = module(**self.to_device(collate(group, self.tc.packing, b.pad_id))).float()
            if j < len(groups):
                total += loss
        module.train()
        labeled = sum(ex.n_labeled for ex in b.val_set)
        return float(self.acc.reduce(total, "sum")) / labeled

    # --- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        s, b = self.state, self.b
        elapsed_before, session_start = s.wall_time, time.perf_counter()
        kill_steps = fault_steps(FAULT_KILL_ENV)
        log = TrainingLog(self.run, b.total_steps, s.step, self.main)
        try:
            while s.step < b.total_steps and not s.stopped_early:
                t0 = time.perf_counter()
                out = self.train_step(s.step)
                s.train_time += time.perf_counter() - t0
                s.step += 1
                s.tokens += out["tokens"]
                s.wall_time = elapsed_before + time.perf_counter() - session_start
                self.record_step(out, log)
                if s.step in kill_steps:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.evaluate_and_save(log)
                tps = s.tokens / max(s.train_time, 1e-9)
                log.progress(s.step, float(out["loss"]), tps, last=s.stopped_early)
        except KeyboardInterrupt:
            last = ckpt.latest_checkpoint(self.run.checkpoints_dir)
            where = f"last checkpoint {last.name}" if last else "no checkpoint yet"
            raise TunebenchError(
                f"training interrupted at step {s.step} ({where}); run the same "
                "`tunebench train CONFIG` again to resume (--no-resume starts over)"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise TunebenchError(
                f"out of GPU memory at step {s.step + 1}: lower training.tokens_per_micro_batch "
                f"(now {self.tc.tokens_per_micro_batch}) or training.micro_batch_size, or set "
                "training.gradient_checkpointing: true"
            ) from None
        finally:
            log.close()
        return self.summary()

    def record_step(self, out: dict[str, Any], log: TrainingLog) -> None:
        """Log one step; abort after too many non-finite steps."""
        s = self.state
        if not out["finite"]:
            s.skipped_steps += 1
            log.say(f"step {s.step}: non-finite loss/gradient, update skipped")
        row = {"step": s.step, "split": "train", "loss": out["loss"], **self.progress_fields()}
        row["lr"], row["grad_norm"] = out["lr"], out["grad_norm"]
        if not out["finite"]:
            row["skipped"] = True
        log.row(row)
        if not out["finite"] and s.skipped_steps > self.tc.max_bad_steps:
            raise TunebenchError(
                f"training aborted at step {s.step}: {s.skipped_steps} non-finite steps "
                f"(> training.max_bad_steps {self.tc.max_bad_steps}); lower training.learning_rate, "
                "keep training.packing on, or use model.attn_implementation: eager"
            )

    def progress_fields(self) -> dict[str, Any]:
        s = self.state
        return {
            "epoch": s.step * self.tc.batch_size / len(self.b.train_set),
            "tokens": s.tokens,
            "wall_time": round(s.wall_time, 3),
            "train_time": round(s.train_time, 3),  # in training steps (no validation, saving)
            "lr": self.b.scheduler.get_last_lr()[0],
        }

    def evaluate_and_save(self, log: TrainingLog) -> None:
        """Validate every ``eval_every`` steps and at the last one (early stopping decides only
        there). Checkpoint at the last step, every ``save_every`` steps, and at an evaluation
        whose checkpoint can still be chosen (:meth:`is_candidate`)."""
        s, tc = self.state, self.tc
        final = s.step >= self.b.total_steps
        evaluate = s.step % tc.eval_every == 0 or final
        save = final or (tc.save_every is not None and s.step % tc.save_every == 0)
        if evaluate:
            val = self.validation_loss()
            if val is None:  # no validation split: the latest adapter is the one kept
                s.best_step = s.step
                save = True
            else:
                log.row({"step": s.step, "split": "validation", "loss": val, **self.progress_fields()})
                self.early_stopping(val, final, log)
                s.validation_losses.append([s.step, val])
                save = save or self.is_candidate(s.step)
        if save or s.stopped_early:
            self.save()

    def is_candidate(self, step: int) -> bool:
        """Whether ``step`` has one of the lowest validation losses so far: the best, or with a
        choice by metric one of ``checkpoints_to_compare``. A later evaluation only pushes others
        out, so a checkpoint outside them now could never be chosen and is not written (a full
        fine-tune's checkpoint is gigabytes); a resume goes back to the latest one written."""
        lowest = ckpt.lowest_losses(self.state.validation_losses, self.tc.checkpoints_kept)
        return any(kept == step for kept, _ in lowest)

    def early_stopping(self, val: float, final: bool, log: TrainingLog) -> None:
        s, tc = self.state, self.tc
        best = s.best_loss
        if best is None or val < best - tc.early_stopping_min_delta:
            s.best_loss, s.best_step, s.bad_evals = val, s.step, 0
            return
        s.bad_evals += 1
        patience = tc.early_stopping_patience
        if patience is not None and s.bad_evals >= patience and not final:
            s.stopped_early = True
            log.say(f"early stopping at step {s.step}: best validation loss {best:.4f} at step {s.best_step}")

    def save(self) -> None:
        s, b = self.state, self.b
        # FSDP: every process joins the gathers (collectives); the main process alone writes,
        # so under DDP only it copies its (full, identical) optimizer state
        if self.fsdp:
            # FSDP's root keeps its parameters unsharded after a forward with no backward (the
            # validation pass); the optimizer holds the sharded ones, which the state dict maps
            # by name. Trained root parameters (full fine-tuning: embeddings, final norm) need it.
            b.bare_loss_model.reshard()  # type: ignore[operator]
        if self.fsdp or self.main:
            optimizer_state = ckpt.optimizer_state(b.bare_loss_model, b.optimizer)
            weights = b.method.gathered_state(b.model, self.fsdp)
        if self.main:
            root = self.run.checkpoints_dir

            def write_weights(folder: Path) -> None:
                b.method.write(b.model, weights, folder / b.method.folder)

            ckpt.save_checkpoint(
                root, s.step, write_weights, optimizer_state, b.scheduler, s.as_dict(), ckpt.rng_state()
            )
            keep = {s.step, s.best_step or s.step}
            if self.tc.select_checkpoint_by == "validation_metric":  # the candidates of the choice
                lowest = ckpt.lowest_validation_losses(self.run.metrics_log, self.tc.checkpoints_to_compare)
                keep |= {step for step, _ in lowest}
            ckpt.prune(root, keep)
        self.acc.wait_for_everyone()

    def summary(self) -> dict[str, Any]:
        s, b = self.state, self.b
        gpu = torch.cuda.get_device_name(0) if self.device.type == "cuda" else None
        tps = s.tokens / s.train_time if s.train_time > 0 else 0.0
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        return {
            "provider": "local",
            "model": self.config.model.name,
            "steps": s.step,
            "epochs": s.step * self.tc.batch_size / len(b.train_set),
            "train_tokens": s.tokens,
            "wall_time_s": s.wall_time,
            "gpu_type": gpu or "cpu",
            "gpu_count": self.world if gpu else 0,
            "peak_memory_gb": peak,
            "best_validation_loss": s.best_loss,
            "best_step": s.best_step,
            "tokens_per_s": tps,
            "skipped_steps": s.skipped_steps,
            "mfu": mfu(tps, b.flops_per_token, gpu, self.world),
            "flops_per_token": b.flops_per_token,
            "stopped_early": s.stopped_early,
            "truncated_prompts": b.train_stats.truncated,
            "processes": self.world,
            "sharding": "fsdp" if self.fsdp else "ddp" if self.world > 1 else None,
            "packing": self.tc.packing,
        }


def profiler_scope(name: str) -> contextlib.AbstractContextManager[Any]:
    """A named range in torch.profiler traces (``benchmarks/bench_step_scaling.py`` reads
    them to say where the GPU waits); ~1 µs when no profiler runs."""
    return torch.profiler.record_function(name)


def train(config: ExperimentConfig, run: RunDir, resume: bool = True) -> dict[str, Any]:
    """Fine-tune ``config.model`` on the run's prepared train split; returns the summary
    (the caller records it: :func:`finish_training`).

    Writes ``metrics.jsonl`` and ``checkpoints/step-N/`` (the latest, the best, and with
    checkpoint choice by metric its candidates). With ``resume`` it continues from the latest
    checkpoint.
    """
    trainer = Trainer(config, run, resume)
    summary = trainer.fit()
    trainer.acc.wait_for_everyone()
    return summary
