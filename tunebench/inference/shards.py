"""Predictions on several processes, one per GPU (``WORLD_SIZE`` > 1).

The one-process plan of length-sorted batches is dealt out whole, rank r taking batches
r, r+W, r+2W, ... (:meth:`Shard.share`), on ``cuda:LOCAL_RANK`` (CPU without CUDA), into its
own ``<split>.rank<r>-of-<W>.jsonl`` (resumable, with its own partial files); then rank 0
waits for every rank (a gloo barrier), merges the rows in example order into ``<split>.jsonl``
and alone records the manifest stage. Single-process runs are unaffected.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.inference.resume import FAULT_ENV, finish_file
from tunebench.io import read_json, read_jsonl, write_json
from tunebench.tasks import Example

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


def stop_for_fault(shard: Shard, limit: int, written: int) -> None:
    """The deliberate crash of ``TUNEBENCH_FAULT_AFTER_BATCHES``. With several processes every
    rank stops after min(N, its own batches), all at one barrier first: a launcher that kills
    the survivors when the first rank dies must not race a rank that has not written yet."""
    if shard.world > 1:
        shard.barrier()
    raise KeyboardInterrupt(f"{FAULT_ENV}={limit}: stopped after {written} batches")


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
