"""The shape of OpenAI's chat fine-tuning rows, checked by OpenAI's published format rules.

One row is ``{"messages": [{"role": ..., "content": ...}, ...]}``: roles ``system``, ``user``
and ``assistant``, text content, at least one assistant message, an optional ``name`` and, on
assistant messages only, an optional ``weight`` of 0 or 1 (0: the message is context, not
trained on). These rules need no tokenizer; the per-model token limit is checked where the
model is known (:mod:`tunebench.providers.openai_export`). OpenAI also takes tool calls and
content given as a list of parts; tunebench does not train or score those yet and says so.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight"})


def row_problems(row: Any) -> list[str]:
    """What is wrong with one row's structure (empty: fine)."""
    if not isinstance(row, dict):
        return ["not a JSON object"]
    if "__invalid_json__" in row:
        return [f"invalid JSON ({row['__invalid_json__']})"]
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["missing or empty 'messages' list"]
    problems: list[str] = []
    for index, message in enumerate(messages, start=1):
        problems.extend(f"message {index}: {p}" for p in message_problems(message))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append("no assistant message")
    return problems


def message_problems(message: Any) -> list[str]:
    """What is wrong with one message of a row (empty: fine)."""
    if not isinstance(message, dict):
        return ["not an object"]
    unsupported = unsupported_feature(message)
    if unsupported:
        return [unsupported]
    problems = []
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        problems.append(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        problems.append(f"content must be a string, got {type(content).__name__}")
    elif role == "assistant" and not content.strip():
        problems.append("empty assistant content")
    extra = set(message) - MESSAGE_KEYS
    if extra:
        problems.append(f"unknown keys {sorted(extra)}")
    if "weight" in message:
        if role != "assistant":
            problems.append("'weight' is only allowed on assistant messages")
        elif message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            problems.append(f"weight must be 0 or 1, got {message['weight']!r}")
    return problems


def unsupported_feature(message: dict[str, Any]) -> str | None:
    """What OpenAI accepts in a message but tunebench cannot train or score yet (None: nothing)."""
    if message.get("role") in ("tool", "function") or "tool_calls" in message or "function_call" in message:
        return "tool calls are not supported by tunebench yet (OpenAI accepts them): leave such rows out"
    if isinstance(message.get("content"), list):
        return "content as a list of parts is not supported by tunebench yet: give the text as a string"
    return None


def trained_on(message: dict[str, Any]) -> bool:
    """Whether an assistant message is a training target (``weight`` absent or 1)."""
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def split_target(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the context, the last assistant message): what a model is sent, and what it should answer.
    Messages after the last assistant message are dropped (they cannot be answered)."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    return messages[:last], messages[last]
