"""Training data: tokenize, label by position, and cut each optimizer step into micro-batches.

Labels are built per example by *position*, never by token value: the prompt and the target
are tokenized separately and their ids concatenated, so the boundary is exact and a pad
token that equals the EOS (Qwen's ``<|endoftext|>``) can never hide a label. The target is
``completion + task.completion_suffix`` followed by the *training* EOS (``<|im_end|>`` for Qwen),
which is labeled so the model learns to stop.

Data order is stateless: optimizer step ``s`` takes examples ``[s*B, (s+1)*B)`` of an endless
stream made of one seeded permutation per epoch. A checkpoint therefore only needs the global
step to resume at the exact same place, whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tunebench.errors import TunebenchError
from tunebench.tasks.formats import CHAT_FIELD
from tunebench.training.chat import IGNORE, chat_ids_and_labels


@dataclass(frozen=True)
class TokenizedExample:
    """One training example: ``input_ids`` and HF-style (unshifted) ``labels``."""

    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    #: a conversation in the chat template: its end-of-turn token is the template's, not eos_id
    chat: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def targets(self) -> list[int]:
        """Next-token targets aligned with ``input_ids`` (position t predicts token t+1)."""
        return [*self.labels[1:], IGNORE]

    @property
    def n_labeled(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    tokens: int = 0
    labeled_tokens: int = 0


def tokenize_example(
    example_id: str,
    prompt: str,
    completion: str,
    tokenizer: Any,
    eos_id: int,
    suffix: str,
    max_length: int,
    loss_on: str = "completion",
) -> TokenizedExample:
    """Prompt ids + (completion + suffix) ids + EOS; the prompt is cut from the left if too long."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    target_ids = [*tokenizer(completion + suffix, add_special_tokens=False)["input_ids"], int(eos_id)]
    if len(target_ids) >= max_length:
        raise TunebenchError(
            f"training example {example_id}: target alone is {len(target_ids)} tokens, "
            f">= training.max_length {max_length}; raise max_length or shorten the target"
        )
    truncated = len(prompt_ids) + len(target_ids) > max_length
    if truncated:
        # Keep the end of the prompt: it holds the input and the "### Response:" cue right before
        # the target; the instruction at the start is the same for every example.
        prompt_ids = prompt_ids[len(prompt_ids) + len(target_ids) - max_length :]
    input_ids = prompt_ids + target_ids
    labels = list(input_ids) if loss_on == "full" else [IGNORE] * len(prompt_ids) + target_ids
    return TokenizedExample(example_id, input_ids, labels, truncated)


def tokenize_chat(
    example_id: str, messages: list[dict[str, Any]], tokenizer: Any, max_length: int, loss_on: str
) -> TokenizedExample:
    """A conversation labeled on its assistant turns (those without ``weight: 0``)."""
    ids, labels, truncated = chat_ids_and_labels(example_id, messages, tokenizer, max_length, loss_on)
    return TokenizedExample(example_id, ids, labels, truncated, chat=True)


def tokenize_examples(
    examples: Sequence[Any],
    tokenizer: Any,
    eos_id: int,
    suffix: str,
    max_length: int,
    loss_on: str = "completion",
    split: str = "train",
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenize every example and run the start check (:func:`check_examples`). A conversation
    (chat data) is tokenized in the model's chat template (:mod:`tunebench.training.chat`)."""
    out = [
        tokenize_chat(ex.id, ex.fields[CHAT_FIELD], tokenizer, max_length, loss_on)
        if isinstance(getattr(ex, "fields", {}).get(CHAT_FIELD), list)
        else tokenize_example(ex.id, ex.prompt, ex.completion, tokenizer, eos_id, suffix, max_length, loss_on)
        for ex in examples
    ]
    check_examples(out, eos_id, split)
    stats = TokenizeStats(
        examples=len(out),
        truncated=sum(ex.truncated for ex in out),
        tokens=sum(len(ex) for ex in out),
        labeled_tokens=sum(ex.n_labeled for ex in out),
    )
    return out, stats


def check_examples(examples: Sequence[TokenizedExample], eos_id: int, split: str = "train") -> None:
    """Fail loudly if an example would teach nothing, or would not teach the model to stop."""
    if not examples:
        raise TunebenchError(f"{split} split is empty: nothing to train on")
    for ex in examples:
        targets = ex.targets
        if not any(t != IGNORE for t in targets):
            raise TunebenchError(f"{split} example {ex.id}: no labeled tokens (empty target?)")
        if not ex.chat and not any(t == eos_id for t in targets):
            raise TunebenchError(f"{split} example {ex.id}: the EOS token (id {eos_id}) is not labeled")


# --- data order ---------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def step_example_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the ``batch_size`` examples of 0-based optimizer step ``step``."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = epoch_permutation(n, seed, epoch)
        out.extend(int(i) for i in perm[offset : offset + batch_size - len(out)])
    return out


def rank_share(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """This process's share of a step's examples (strided, so shares differ by at most one)."""
    return list(indices[rank::world])


# --- micro-batches ------------------------------------------------------------------------
def plan_packed(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group example positions into micro-batches of at most ``budget`` tokens (first-fit
    decreasing; an example longer than the budget gets a micro-batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def plan_padded(lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Length-grouped micro-batches of ``micro_batch_size`` examples (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def plan_micro_batches(
    examples: Sequence[TokenizedExample], packing: bool, budget: int, micro_batch_size: int
) -> list[list[TokenizedExample]]:
    lengths = [len(ex) for ex in examples]
    plan = plan_packed(lengths, budget) if packing else plan_padded(lengths, micro_batch_size)
    return [[examples[i] for i in group] for group in plan]


def collate_packed(examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor | None]:
    """One row, no padding: ids concatenated, position ids restarting at 0 per example.

    With ``attention_mask=None`` transformers derives the example boundaries from the
    position ids (``masking_utils.find_packed_sequence_indices``), so no token attends
    across examples (sdpa/eager/flex build a block-diagonal causal mask; flash-attention
    uses the boundaries as var-len sequences).
    """
    ids: list[int] = []
    pos: list[int] = []
    tgt: list[int] = []
    for ex in examples:
        ids.extend(ex.input_ids)
        pos.extend(range(len(ex)))
        tgt.extend(ex.targets)
    seq_lens = [len(ex) for ex in examples]  # example boundaries for var-len attention
    targets = torch.tensor([tgt], dtype=torch.long)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "attention_mask": None,
        "targets": targets,
        "labeled_at": labeled_positions(targets),
        "seq_lens": seq_lens,
    }


def collate_padded(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Right-padded rows with an attention mask; pad positions are never labeled (by position)."""
    width = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), width), int(pad_id), dtype=torch.long)
    tgt = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        ids[row, :n] = torch.tensor(ex.input_ids)
        tgt[row, :n] = torch.tensor(ex.targets)
        mask[row, :n] = 1
    return {
        "input_ids": ids,
        "position_ids": None,
        "attention_mask": mask,
        "targets": tgt,
        "labeled_at": labeled_positions(tgt),
    }


def labeled_positions(targets: torch.Tensor) -> torch.Tensor:
    """Flat indices of the labeled positions, found on the host where the batch is built.

    Why here: selecting them on the GPU with a boolean mask (``hidden[targets != -100]``)
    needs the count of selected rows before the loss can be launched, a device-to-host sync
    in the middle of every micro-batch; an index tensor made on the CPU travels with the batch
    and spares the step that wait (liger-kernel's fused loss, when on, still has one of its own)."""
    return (targets.reshape(-1) != IGNORE).nonzero().squeeze(1)


def collate(examples: Sequence[TokenizedExample], packing: bool, pad_id: int) -> dict[str, Any]:
    return collate_packed(examples) if packing else collate_padded(examples, pad_id)


def real_tokens(examples: Sequence[TokenizedExample]) -> int:
    """Tokens of these examples, whatever padding their batch gets (what tokens/s and MFU count)."""
    return sum(len(ex) for ex in examples)
