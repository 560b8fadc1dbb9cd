"""Local predictions: one split's prompts -> ``predictions/<split>.jsonl`` with the base model
(and a LoRA adapter), batched by length, resumable (:mod:`.resume`), on one process or one per
GPU (:mod:`.shards`), with execution-guided selection among sampled candidates
(:mod:`.select`). Remote predictions are :mod:`.endpoint`'s.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.inference.prompts import model_prompts
from tunebench.inference.resume import (
    append_rows,
    fault_after,
    fingerprint,
    finish_file,
    load_partial,
    partial_paths,
)
from tunebench.inference.shards import Shard, length_sorted_batches, stop_for_fault
from tunebench.io import write_json
from tunebench.rundir import RunDir
from tunebench.tasks import Example, Task


def predict_local(
    config: ExperimentConfig,
    run: RunDir,
    split: str,
    task: Task,
    examples: list[Example],
    adapter: Path | None = None,
    generator: Any | None = None,
    single_process: bool = False,
    few_shot: bool = False,
) -> Path:
    """Batched generation with the base model, plus what training produced in ``adapter`` when
    given: a LoRA adapter, or a full fine-tune's ``model/`` folder (``few_shot``: k training examples before each prompt, ``generation.few_shot``).

    ``generator``: an already loaded :class:`~tunebench.inference.local.LocalGenerator` for this
    config (the benchmark reuses one across batch sizes); by default it is loaded here.
    ``single_process``: this process does every example even when launched as one of several
    (the main process's own work after distributed training, e.g. choosing a checkpoint).
    """
    from tunebench.inference.local import load_generator, require_trained

    final = run.predictions(split)
    shard = Shard() if single_process else Shard.from_env()
    target = shard.rank_file(final)
    partial, meta_path = partial_paths(target)
    key = fingerprint(config, split, adapter)
    done, spent = load_partial(partial, meta_path, key)
    resumed = len(done)
    gen = config.generation
    start_load = time.perf_counter()
    if adapter is not None:
        require_trained(adapter)
    if generator is None:
        generator = load_generator(
            config.model,
            adapter,
            merge=gen.merge_adapter,
            long_prompts=gen.long_prompts,
            device=shard.device(),
            cache_implementation=gen.cache_implementation,
        )
    load_s = time.perf_counter() - start_load
    every_prompt = model_prompts(config, run, task, examples, generator.tokenizer, few_shot)
    share = shard.share(generator, every_prompt, gen.batch_size)
    mine, prompts = [examples[i] for i in share], [every_prompt[i] for i in share]
    passes = sampling_passes(config, task)
    fenced = gen.prompt_format == "chat"  # chat answers come from code fences
    todo = [i for i, ex in enumerate(mine) if ex.id not in done]
    batches = length_sorted_batches(generator, [prompts[i] for i in todo], gen.batch_size)
    write_json(meta_path, {"fingerprint": key, "generation_s": spent})
    limit = fault_after()
    started = time.perf_counter()
    with ProgressBar(split, len(mine), resumed) as advance:
        for number, batch in enumerate(batches, start=1):
            indexes = [todo[j] for j in batch]
            results = generate_candidates(
                generator, [prompts[i] for i in indexes], passes, [mine[i].id for i in indexes]
            )
            rows = [
                prediction_row(task, mine[i], prompts[i], r, fenced)
                for i, r in zip(indexes, results, strict=True)
            ]
            append_rows(partial, rows)
            done.update((row["id"], row) for row in rows)
            write_json(meta_path, {"fingerprint": key, "generation_s": spent + time.perf_counter() - started})
            advance(len(indexes))
            if limit is not None and number >= limit:
                stop_for_fault(shard, limit, number)
        if limit is not None and shard.world > 1:  # this rank ran out of batches first
            stop_for_fault(shard, limit, len(batches))
    generation_s = spent + time.perf_counter() - started
    if shard.world > 1:
        merged = shard.gather(final, mine, done, resumed, generation_s)
        if merged is None:  # ranks other than 0: rank 0 writes the file and the manifest
            return final
        done, resumed, generation_s = merged
    selection = apply_selection(config, done) if gen.selection == "execution_vote" else {}
    finish_file(final, examples, done)
    rows = [done[ex.id] for ex in examples]
    info = timing_info(rows, generation_s)
    if shard.world > 1:
        info.update(gpu_count=shard.world if info["gpu_count"] else 0, processes=shard.world)
    info.update(selection)
    info.update(
        load_time_s=round(load_s, 3),
        provider=config.provider,
        batch_size=gen.batch_size,
        merged_adapter=bool(adapter is not None and gen.merge_adapter),
        few_shot=gen.few_shot if few_shot else 0,
        prompt_format=gen.prompt_format,
        truncated_prompts=sum(1 for r in rows if r.get("truncated")),
        resumed_rows=resumed,
        dtype=str(generator.dtype).removeprefix("torch."),
    )
    run.record_stage(f"predict:{split}", **info)
    shard.release(final)
    return final


def sampling_passes(config: ExperimentConfig, task: Task) -> list[Any]:
    """The generate() calls per batch: one (``selection: first``), or greedy + samples (vote).

    With ``execution_vote`` candidate 0 comes from a separate greedy pass, so it is exactly the
    ``selection: first`` prediction; the other ``num_candidates - 1`` are sampled at
    ``temperature`` / ``top_p`` with the sampling seed (``generation.seed``).
    """
    from tunebench.inference.local import SamplingParams

    gen = config.generation
    base = SamplingParams(
        max_new_tokens=gen.max_new_tokens,
        do_sample=gen.do_sample,
        temperature=gen.temperature,
        top_p=gen.top_p,
        n=gen.num_candidates,
        stop_on_newline=task.stops_on_newline and gen.prompt_format == "plain",  # chat: free answers
        seed=config.sampling_seed if gen.do_sample else None,
    )
    if gen.selection != "execution_vote":
        return [base]
    greedy = replace(base, do_sample=False, n=1, seed=None)
    sampled = replace(base, do_sample=True, n=gen.num_candidates - 1, seed=config.sampling_seed)
    return [greedy, sampled]


def generate_candidates(generator: Any, prompts: list[str], passes: list[Any], ids: list[str]) -> list[Any]:
    """One Result per prompt holding the completions of every pass, in pass order."""
    from tunebench.inference.local import generate_adaptive

    results = generate_adaptive(generator, prompts, passes[0], ids)
    for params in passes[1:]:
        more = generate_adaptive(generator, prompts, params, ids)
        for result, extra in zip(results, more, strict=True):
            result.completions.extend(extra.completions)
    return results


def apply_selection(config: ExperimentConfig, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Replace each row's ``prediction`` by its execution-voted candidate; manifest info back."""
    from tunebench.inference.select import select_by_execution

    start = time.perf_counter()
    ids = list(rows)
    gen = config.generation
    selected = select_by_execution(
        [rows[i] for i in ids],
        suite_size=gen.vote_suite_size,
        seed=config.sampling_seed,
        timeout_s=gen.vote_timeout_s,
        budget_s=gen.vote_budget_s,
    )
    rows.update(zip(ids, selected, strict=True))
    infos = [r["selection"] for r in selected]
    return {
        "selection": "execution_vote",
        "num_candidates": config.generation.num_candidates,
        "selection_s": round(time.perf_counter() - start, 3),
        "selection_changed": sum(1 for i in infos if i["chosen"] != 0),
        "selection_none_executable": sum(1 for i in infos if i["executable"] == 0),
        "selection_budget_spent": sum(1 for i in infos if i.get("budget_spent")),
    }


def prediction_row(
    task: Task, example: Example, prompt: str, result: Any, fenced: bool = False
) -> dict[str, Any]:
    """One predictions-file row: id, prompt, prediction, gold, the task's eval fields, raw text,
    token counts and finish reason (plus ``candidates`` when several were generated); ``fenced``:
    answers come from code fences (chat-format prompts, :meth:`Task.postprocess`)."""
    first = result.completions[0]
    row: dict[str, Any] = {
        "id": example.id,
        "prompt": prompt,
        "prediction": task.postprocess(first.text, fenced),
        "gold": example.completion,
        **task.eval_fields(example),
        "raw": first.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": sum(c.completion_tokens for c in result.completions),
        "finish_reason": first.finish_reason,
    }
    if len(result.completions) > 1:
        row["candidates"] = [task.postprocess(c.text, fenced) for c in result.completions]
        row["candidates_raw"] = [c.text for c in result.completions]
    if result.truncated:
        row["truncated"] = True
    return row


def timing_info(rows: list[dict[str, Any]], wall_time_s: float) -> dict[str, Any]:
    """The manifest's predict-stage record: wall time, rows and tokens per second, the GPU."""
    import torch

    cuda = torch.cuda.is_available()
    prompt_tokens = sum(int(r.get("prompt_tokens") or 0) for r in rows)
    completion_tokens = sum(int(r.get("completion_tokens") or 0) for r in rows)
    return {
        "wall_time_s": round(wall_time_s, 3),
        "n": len(rows),
        "predictions_per_s": round(len(rows) / wall_time_s, 3) if wall_time_s > 0 else None,
        "gpu_type": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_count": 1 if cuda else 0,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "completion_tokens_per_s": round(completion_tokens / wall_time_s, 1) if wall_time_s > 0 else None,
    }


class ProgressBar:
    """Progress of a split's predictions, ``advance(n)`` after each batch: a rich bar on a
    terminal; without one (a log file, CI, nohup) a plain line every 30 s and at the end, with
    predictions/s and the time left."""

    EVERY_S = 30.0

    def __init__(self, split: str, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.split, self.total, self.done = split, total, done
        self.plain = not sys.stderr.isatty()
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn(f"predict {split}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=self.plain,
        )
        self.task = self.progress.add_task("predict", total=total, completed=done, rate="")
        self.count = 0
        self.start = self.last_line = time.perf_counter()

    def __enter__(self) -> Any:
        self.progress.start()
        return self.advance

    def advance(self, n: int) -> None:
        self.count += n
        now = time.perf_counter()
        rate = self.count / max(now - self.start, 1e-9)
        self.progress.update(self.task, advance=n, rate=f"{rate:.1f} pred/s")
        finished = self.done + self.count >= self.total
        if self.plain and (finished or now - self.last_line >= self.EVERY_S):
            self.last_line = now
            left = (self.total - self.done - self.count) / rate if rate > 0 else 0.0
            self.console.print(
                f"predict {self.split}: {self.done + self.count}/{self.total}, {rate:.1f} predictions/s"
                + ("" if finished else f", ETA {int(left) // 60}m{int(left) % 60:02d}s"),
                highlight=False,
            )

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
