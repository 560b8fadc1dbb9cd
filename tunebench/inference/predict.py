"""Predict stage: one split's prompts -> ``predictions/<split>.jsonl`` (resumable, atomic, timed).

Providers:

* ``local``: the base model with the run's LoRA adapter (``run.adapter_dir``), batched
  generation in :mod:`tunebench.inference.local`.
* ``base``: the base model alone: zero-shot, or k-shot with ``generation.few_shot: k``.
* ``endpoint`` / ``openai``: requests to an OpenAI-compatible server, delegated to
  :mod:`tunebench.inference.endpoint` (which writes and resumes its own output file).
* ``ensemble``: no generation; finished runs' candidates pooled and voted
  (:mod:`tunebench.inference.ensemble`).

**k-shot format** (provider ``base``, ``generation.few_shot: k``): k training examples, drawn
once with ``training.seed`` from the prepared train split (the same shots for every prompt),
each written exactly as the model would see it in training, ``prompt + target + "\\n"``,
followed by a blank line; then the example's own prompt. The ``prompt`` field of each
prediction row holds the full text sent to the model.

**Resume.** Finished batches are appended to ``predictions/<split>.partial.jsonl`` (fsync'd per
batch) beside ``<split>.partial.json`` (a fingerprint of model, adapter and decoding settings,
and the generation time so far). A rerun with the same fingerprint skips the ids already there;
a different fingerprint starts over. At the end the rows are sorted into example order,
written atomically to ``<split>.jsonl``, and the partial files are removed.

**Several GPUs** (``accelerate launch`` / ``torchrun``, ``WORLD_SIZE`` > 1; provider local or
base): the one-process plan of length-sorted batches is dealt out whole, rank r taking batches
r, r+W, r+2W, ... (:meth:`Shard.share`), on ``cuda:LOCAL_RANK`` (CPU without CUDA), into its
own ``<split>.rank<r>-of-<W>.jsonl`` (resumable like above, with its own partial files), then
rank 0 waits for every rank (a gloo barrier), merges the rows in example order into
``<split>.jsonl`` and alone records the manifest stage. Single-process runs are unaffected.

``TUNEBENCH_FAULT_AFTER_BATCHES=N`` raises ``KeyboardInterrupt`` after N batches have been
written: a deliberate crash, used by the tests (and by anyone checking resume on real hardware).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.data.prepare import load_prepared
from tunebench.errors import TunebenchError
from tunebench.io import jsonl_lines, read_json, read_jsonl, write_json, write_jsonl
from tunebench.rundir import RunDir
from tunebench.tasks import Example, Task, get_task

FAULT_ENV = "TUNEBENCH_FAULT_AFTER_BATCHES"


def predict(config: ExperimentConfig, run: RunDir, split: str) -> Path:
    """Generate predictions for ``split`` into ``run.predictions(split)``; returns that path."""
    task = get_task(config.task)
    examples = load_prepared(run, split)
    if config.provider in ("endpoint", "openai"):
        return predict_remote(config, run, split, task, examples)
    if config.provider == "ensemble":
        from tunebench.inference.ensemble import predict_ensemble

        return predict_ensemble(config, run, split, examples)
    return predict_local(config, run, split, task, examples)


# --- prompts -----------------------------------------------------------------------------
def few_shot_prefix(config: ExperimentConfig, run: RunDir, task: Task) -> str:
    """The k-shot block prepended to every prompt ("" for zero-shot); format in the module doc."""
    k = config.generation.few_shot
    if k == 0:
        return ""
    train = load_prepared(run, "train")
    if len(train) < k:
        raise TunebenchError(f"generation.few_shot: {k} shots requested, the train split has {len(train)}")
    shots = random.Random(config.training.seed).sample(train, k)
    return "".join(f"{s.prompt}{s.completion}{task.completion_suffix}\n" for s in shots)


def model_prompts(
    config: ExperimentConfig, run: RunDir, task: Task, examples: list[Example], tokenizer: Any | None = None
) -> list[str]:
    """The text sent to the model: the task's prompt (after k shots), or with
    ``generation.prompt_format: chat`` the task's chat messages in the tokenizer's chat template."""
    if config.generation.prompt_format == "chat":
        return [chat_prompt(tokenizer, task, ex) for ex in examples]
    prefix = few_shot_prefix(config, run, task) if config.provider == "base" else ""
    return [prefix + ex.prompt for ex in examples]


def chat_prompt(tokenizer: Any, task: Task, example: Example) -> str:
    """The task's system + user messages (what an OpenAI model is sent), as the model's chat template
    renders them, up to the assistant's turn."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "the model")
        raise TunebenchError(
            f"generation.prompt_format: chat needs a chat template; {name}'s tokenizer has none"
        )
    return str(
        tokenizer.apply_chat_template(task.chat_messages(example), tokenize=False, add_generation_prompt=True)
    )


# --- resume bookkeeping -------------------------------------------------------------------
def partial_paths(final: Path) -> tuple[Path, Path]:
    stem = final.name.removesuffix(".jsonl")
    return final.with_name(f"{stem}.partial.jsonl"), final.with_name(f"{stem}.partial.json")


def unfinished_files(final: Path) -> list[Path]:
    """What an interrupted prediction of ``final`` may have left: its partial files, and every
    rank's file and partials (:meth:`Shard.rank_file`) whatever the process count was."""
    stem = final.name.removesuffix(".jsonl")
    return [*partial_paths(final), *final.parent.glob(f"{stem}.rank*-of-*")]


def fingerprint(config: ExperimentConfig, run: RunDir, split: str) -> str:
    """What the predictions depend on: a changed adapter or decoding setting voids a partial file."""
    adapter = []
    if config.provider == "local" and run.adapter_dir.is_dir():
        for path in sorted(run.adapter_dir.iterdir()):
            if path.is_file():
                stat = path.stat()
                adapter.append([path.name, stat.st_size, stat.st_mtime_ns])
    payload = {
        "split": split,
        "provider": config.provider,
        "model": config.model.model_dump(mode="json"),
        "task": config.task.model_dump(mode="json"),
        "generation": config.generation.model_dump(mode="json"),
        "seed": config.training.seed,
        "adapter": adapter,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_partial(partial: Path, meta_path: Path, key: str) -> tuple[dict[str, dict[str, Any]], float]:
    """Rows already generated (by id) and generation seconds spent on them, if still valid."""
    if not partial.is_file() or not meta_path.is_file():
        return {}, 0.0
    meta = read_json(meta_path)
    if meta.get("fingerprint") != key:
        partial.unlink()
        return {}, 0.0
    rows: dict[str, dict[str, Any]] = {}
    lines = jsonl_lines(partial.read_text(encoding="utf-8"))
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from a crash mid-write: regenerate that batch
        rows[row["id"]] = row
    return rows, float(meta.get("generation_s", 0.0))


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append a finished batch with one write and one fsync (per-row fsyncs cost seconds on a GPU run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def finish_file(final: Path, examples: list[Example], rows: dict[str, dict[str, Any]]) -> None:
    write_jsonl(final, (rows[ex.id] for ex in examples))
    for path in partial_paths(final):
        path.unlink(missing_ok=True)


def fault_after() -> int | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    if not value.isdigit():
        raise TunebenchError(f"{FAULT_ENV}={value!r}: expected a number of batches")
    return int(value)


# --- local / base ---------------------------------------------------------------------------
def predict_local(
    config: ExperimentConfig,
    run: RunDir,
    split: str,
    task: Task,
    examples: list[Example],
    generator: Any | None = None,
    single_process: bool = False,
) -> Path:
    """Batched generation with the base model (+ the run's adapter for provider local).

    ``generator``: an already loaded :class:`~tunebench.inference.local.LocalGenerator` for this
    config (the benchmark reuses one across batch sizes); by default it is loaded here.
    ``single_process``: this process does every example even when launched as one of several
    (the main process's own work after distributed training, e.g. choosing a checkpoint).
    """
    from tunebench.inference.local import load_generator

    final = run.predictions(split)
    shard = Shard() if single_process else Shard.from_env()
    target = shard.rank_file(final)
    partial, meta_path = partial_paths(target)
    key = fingerprint(config, run, split)
    done, spent = load_partial(partial, meta_path, key)
    resumed = len(done)
    gen = config.generation
    start_load = time.perf_counter()
    adapter = run.adapter_dir if config.provider == "local" else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise TunebenchError(
            f"{adapter}: no LoRA adapter; run `tunebench train` first (or use provider: base)"
        )
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
    every_prompt = model_prompts(config, run, task, examples, generator.tokenizer)
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
        few_shot=gen.few_shot if config.provider == "base" else 0,
        prompt_format=gen.prompt_format,
        truncated_prompts=sum(1 for r in rows if r.get("truncated")),
        resumed_rows=resumed,
        dtype=str(generator.dtype).removeprefix("torch."),
    )
    run.record_stage(f"predict:{split}", **info)
    shard.release(final)
    return final


def stop_for_fault(shard: Shard, limit: int, written: int) -> None:
    """The deliberate crash of ``TUNEBENCH_FAULT_AFTER_BATCHES``. With several processes every
    rank stops after min(N, its own batches), all at one barrier first: a launcher that kills
    the survivors when the first rank dies must not race a rank that has not written yet."""
    if shard.world > 1:
        shard.barrier()
    raise KeyboardInterrupt(f"{FAULT_ENV}={limit}: stopped after {written} batches")


# --- several processes (one per GPU) --------------------------------------------------------
# Generation can run for hours; a rank that resumed with less left waits that long at the barrier.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass
class Shard:
    """This process's place among ``world`` prediction processes (RANK/WORLD_SIZE/LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None  # the gloo group used for barriers, created on first use
    owns_default_group: bool = False

    @classmethod
    def from_env(cls) -> Shard:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise TunebenchError(f"RANK/WORLD_SIZE/LOCAL_RANK: not integers ({exc})") from exc
        if world > 1 and not 0 <= rank < world:
            raise TunebenchError(f"RANK={rank}: outside 0..{world - 1} (WORLD_SIZE={world})")
        return cls(rank=rank, world=max(world, 1), local_rank=local_rank)

    def device(self) -> str | None:
        """``cuda:LOCAL_RANK`` (or cpu) when sharded; None keeps the single-process default."""
        if self.world == 1:
            return None
        import torch

        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"

    def share(self, generator: Any, prompts: list[str], batch_size: int) -> list[int]:
        """Indexes of the prompts this rank generates, in their original order.

        Whole batches of the one-process plan, dealt round-robin (longest first): every prompt
        is generated beside the same prompts, at the same padded shape, as in one process, so
        greedy outputs match the one-process file even in bf16, where a different batch can
        flip a near-tie (a strided split of the prompts differed on 19 of 568 on two H100s).
        """
        if self.world == 1:
            return list(range(len(prompts)))
        batches = length_sorted_batches(generator, prompts, batch_size)
        if len(batches) < self.world and self.rank == 0:
            print(
                f"warning: {len(batches)} batch(es) of {batch_size} for {self.world} processes: "
                f"{self.world - len(batches)} will idle; lower generation.batch_size to use every GPU",
                file=sys.stderr,
            )
        return sorted(i for batch in batches[self.rank :: self.world] for i in batch)

    def rank_file(self, final: Path) -> Path:
        """Where this rank's rows go: ``final`` itself for one process, else a per-rank file."""
        if self.world == 1:
            return final
        stem = final.name.removesuffix(".jsonl")
        return final.with_name(f"{stem}.rank{self.rank}-of-{self.world}.jsonl")

    def barrier(self) -> None:
        """Wait for every rank over gloo (works on CPU and beside an NCCL group alike)."""
        import torch.distributed as dist

        if self.group is None:
            if dist.is_initialized():
                self.group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
            else:
                dist.init_process_group(
                    "gloo", rank=self.rank, world_size=self.world, timeout=BARRIER_TIMEOUT
                )
                self.owns_default_group = True
                self.group = dist.group.WORLD
        dist.barrier(group=self.group)

    def gather(
        self,
        final: Path,
        mine: list[Example],
        done: dict[str, dict[str, Any]],
        resumed: int,
        generation_s: float,
    ) -> tuple[dict[str, dict[str, Any]], int, float] | None:
        """Write this rank's rows, wait for all ranks; on rank 0 the merged rows, resumed count
        and generation time (the slowest rank's); None on the other ranks (after rank 0 is done)."""
        own = self.rank_file(final)
        finish_file(own, mine, done)
        write_json(own.with_suffix(".json"), {"resumed": resumed, "generation_s": generation_s})
        self.barrier()
        if self.rank != 0:
            self.barrier()  # rank 0 has written the merged file and the manifest
            self.release(final)
            return None
        merged: dict[str, dict[str, Any]] = {}
        total_resumed, slowest = 0, 0.0
        for rank in range(self.world):
            path = replace(self, rank=rank).rank_file(final)
            merged.update((row["id"], row) for row in read_jsonl(path, required=("id",), allow_empty=True))
            stats = read_json(path.with_suffix(".json"))
            total_resumed += int(stats["resumed"])
            slowest = max(slowest, float(stats["generation_s"]))
        return merged, total_resumed, slowest

    def release(self, final: Path) -> None:
        """Rank 0: remove the per-rank files and let the other ranks go; then drop our group."""
        if self.world == 1:
            return
        if self.rank == 0:
            for rank in range(self.world):
                path = replace(self, rank=rank).rank_file(final)
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
            self.barrier()
        if self.owns_default_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_default_group = False


def sampling_passes(config: ExperimentConfig, task: Task) -> list[Any]:
    """The generate() calls per batch: one (``selection: first``), or greedy + samples (vote).

    With ``execution_vote`` candidate 0 comes from a separate greedy pass, so it is exactly the
    ``selection: first`` prediction; the other ``num_candidates - 1`` are sampled at
    ``temperature`` / ``top_p`` with ``training.seed``.
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
        seed=config.training.seed if gen.do_sample else None,
    )
    if gen.selection != "execution_vote":
        return [base]
    greedy = replace(base, do_sample=False, n=1, seed=None)
    sampled = replace(base, do_sample=True, n=gen.num_candidates - 1, seed=config.training.seed)
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
        seed=config.training.seed,
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


def length_sorted_batches(generator: Any, prompts: list[str], batch_size: int) -> list[list[int]]:
    """Indexes into ``prompts`` in batches of similar token length, longest batch first.

    Similar lengths waste little compute on padding; the longest batch needs the most memory,
    so running it first surfaces an out-of-memory error at once instead of at the end.
    """
    if not prompts:
        return []
    lengths = [len(t) for t in generator.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def prediction_row(
    task: Task, example: Example, prompt: str, result: Any, fenced: bool = False
) -> dict[str, Any]:
    """One predictions-file row (format in notes/TEAM.md); ``fenced``: answers come from code
    fences (chat-format prompts, :meth:`Task.postprocess`)."""
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
    """The manifest's predict-stage record (TEAM.md: timing of predictions)."""
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
    """A rich progress bar with predictions/s; ``advance(n)`` after each batch."""

    def __init__(self, split: str, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(f"predict {split}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        )
        self.task = self.progress.add_task("predict", total=total, completed=done, rate="")
        self.count = 0
        self.start = time.perf_counter()

    def __enter__(self) -> Any:
        self.progress.start()
        return self.advance

    def advance(self, n: int) -> None:
        self.count += n
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=n, rate=f"{rate:.1f} pred/s")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


# --- endpoint / openai ------------------------------------------------------------------------
def predict_remote(
    config: ExperimentConfig, run: RunDir, split: str, task: Task, examples: list[Example]
) -> Path:
    """Predictions from an OpenAI-compatible server (a fine-tuned OpenAI model or any endpoint)."""
    from tunebench.inference.endpoint import predict_endpoint

    gen = config.generation
    if config.provider == "endpoint":
        assert config.endpoint is not None  # the config validator guarantees it
        e = config.endpoint
        settings: dict[str, Any] = {
            "base_url": e.base_url,
            "model": e.model,
            "api": e.api,
            "api_key_env": e.api_key_env,
            "max_concurrency": e.max_concurrency,
            "max_retries": e.max_retries,
        }
    else:
        settings = {
            "base_url": config.openai.base_url,
            "model": fine_tuned_model(run),
            "api": "chat",
            "api_key_env": "OPENAI_API_KEY",
            "max_concurrency": config.openai.max_concurrency,
            "max_retries": 5,
        }
    final = run.predictions(split)
    info = predict_endpoint(
        examples,
        task=task,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature if gen.do_sample else 0.0,
        out_path=final,
        resume=True,
        **settings,
    )
    run.record_stage(f"predict:{split}", **info, provider=config.provider)
    return final


def fine_tuned_model(run: RunDir) -> str:
    """The OpenAI fine-tuned model name the train stage recorded."""
    if not run.train_summary.is_file():
        raise TunebenchError(f"{run.train_summary}: missing; run `tunebench train` for the OpenAI job first")
    name = read_json(run.train_summary).get("fine_tuned_model")
    if not name:
        raise TunebenchError(f"{run.train_summary}: field 'fine_tuned_model': missing (job not finished?)")
    return str(name)
