"""Training examples of chat data, in the model's chat template, labeled on assistant turns.

The conversation is rendered by the tokenizer's chat template one assistant turn at a time:
the text up to the turn's generation prompt is context, and the text the turn adds (its
content and the template's end-of-turn, e.g. ``answer<|im_end|>\\n`` for ChatML) is a span
labeled for the loss, unless the message has ``weight: 0``. Each piece is tokenized on its own
and the ids are concatenated, so labels follow positions exactly (as in
:mod:`tunebench.training.data`). The last turn's context is what a model is sent at
prediction time (:func:`tunebench.inference.prompts.chat_prompt`), token for token.
"""

from __future__ import annotations

from typing import Any

from tunebench.data.chat_format import trained_on
from tunebench.errors import TunebenchError

IGNORE = -100


def chat_segments(messages: list[dict[str, Any]], tokenizer: Any) -> list[tuple[str, bool]]:
    """(text, trained on) pieces whose concatenation is the rendered conversation up to its
    last assistant message."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "the model")
        raise TunebenchError(f"chat data trains in the model's chat template; {name}'s tokenizer has none")
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    clean = [{k: v for k, v in m.items() if k in ("role", "content", "name")} for m in messages[: last + 1]]
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages[: last + 1]):
        if message.get("role") != "assistant":
            continue
        before = render(tokenizer, clean[:index], generation_prompt=True)
        after = render(tokenizer, clean[: index + 1], generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise TunebenchError(
                f"{getattr(tokenizer, 'name_or_path', 'the model')}'s chat template renders a conversation "
                f"differently from its first turns (at message {index + 1}): assistant turns cannot be "
                "labeled by position"
            )
        segments += [(before[len(done) :], False), (after[len(before) :], trained_on(message))]
        done = after
    return segments


def render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    )


def chat_ids_and_labels(
    example_id: str, messages: list[dict[str, Any]], tokenizer: Any, max_length: int, loss_on: str
) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated): the conversation's tokens with the trained assistant turns
    labeled (every token with ``loss_on: full``), cut from the left to ``max_length``."""
    ids: list[int] = []
    labels: list[int] = []
    last_span = 0
    for text, labeled in chat_segments(messages, tokenizer):
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += piece
        labels += piece if labeled or loss_on == "full" else [IGNORE] * len(piece)
        last_span = len(piece)
    if last_span >= max_length:
        raise TunebenchError(
            f"training example {example_id}: its last assistant turn alone is {last_span} tokens, "
            f">= training.max_length {max_length}; raise max_length or shorten it"
        )
    truncated = len(ids) > max_length
    if truncated:  # keep the end: the last turn and the context right before it
        ids, labels = ids[-max_length:], labels[-max_length:]
    return ids, labels, truncated
