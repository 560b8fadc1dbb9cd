"""The files a custom task reads: OpenAI chat JSONL, prompt/completion JSONL, or rows.

* ``chat``: one ``{"messages": [...]}`` per line, OpenAI's chat fine-tuning format, checked by
  its published rules (:mod:`tunebench.data.chat_format`). The last assistant message is the
  target; the messages before it are the prompt. The whole conversation is kept in the
  example's ``chat_messages`` field, unchanged, so LoRA trains on every assistant turn that has
  no ``weight: 0`` and the OpenAI provider uploads exactly the file's messages.
* ``prompt_completion``: ``{"prompt": ..., "completion": ...}`` per line (OpenAI's legacy
  format, TRL's): the prompt is sent as it is and the completion is the target.
* ``rows``: JSONL/CSV rows rendered by the task's template (:mod:`tunebench.tasks.custom`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from tunebench.data.chat_format import row_problems, split_target
from tunebench.errors import TunebenchError, located
from tunebench.io import jsonl_lines, read_text
from tunebench.tasks.base import Example, make_ids

Format = Literal["chat", "prompt_completion", "rows"]
#: The example field holding a chat example's whole conversation (the file's messages).
CHAT_FIELD = "chat_messages"


def detect_format(path: str | Path) -> Format:
    """``chat`` when the file's first row has ``messages``, ``prompt_completion`` when it has
    ``prompt`` and ``completion``, else ``rows`` (a CSV file is always rows)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return "rows"
    first = next(iter(numbered_rows(path, stop_after=1)), None)
    if first is None:  # no row to tell the format: say so, not that a prompt_template is missing
        raise TunebenchError(f"{path}: file is empty")
    row = first[1]
    if isinstance(row, dict) and "messages" in row:
        return "chat"
    if isinstance(row, dict) and "prompt" in row and "completion" in row:
        return "prompt_completion"
    return "rows"


def numbered_rows(path: Path, stop_after: int | None = None) -> list[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line; invalid JSON names its line."""
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(jsonl_lines(read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise located(path, f"invalid JSON ({exc.msg})", line=number) from None
        if stop_after is not None and len(out) >= stop_after:
            break
    return out


def read_chat(path: Path, split: str) -> list[Example]:
    """A chat JSONL file as examples; the first row that breaks OpenAI's rules names its line."""
    rows = numbered_rows(path)
    if not rows:
        raise TunebenchError(f"{path}: file is empty")
    problems = [(number, p) for number, row in rows for p in row_problems(row)]
    if problems:
        (number, problem), more = problems[0], len(problems) - 1
        also = f" (and {more} more problem{'s' * (more > 1)} in the file)" if more else ""
        raise located(path, f"{problem}{also}", line=number)
    ids = make_ids(f"custom-{split}", len(rows))
    return [chat_example(id_, row) for id_, (_, row) in zip(ids, rows, strict=True)]


def chat_example(id_: str, row: dict[str, Any]) -> Example:
    """One conversation: the last assistant message is the target, the turns before it the prompt."""
    messages = row["messages"]
    context, target = split_target(messages)
    users = [m["content"] for m in context if m.get("role") == "user"]
    fields: dict[str, Any] = {"input": users[-1] if users else "", CHAT_FIELD: messages}
    return Example(id=id_, prompt=plain_transcript(context), completion=target["content"], fields=fields)


def plain_transcript(messages: list[dict[str, Any]]) -> str:
    """The conversation as plain text, for a run that sends no chat template (an API completion
    endpoint): each message as ``role: content``, then ``assistant: ``."""
    turns = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "assistant: "])


def read_prompt_completion(path: Path, split: str) -> list[Example]:
    """A prompt/completion JSONL file as examples (other keys are kept as fields)."""
    rows = numbered_rows(path)
    if not rows:
        raise TunebenchError(f"{path}: file is empty")
    out = []
    for id_, (number, row) in zip(make_ids(f"custom-{split}", len(rows)), rows, strict=True):
        if not isinstance(row, dict):
            raise located(path, "expected a JSON object", line=number)
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                got = "missing" if row.get(key) is None else f"expected text, got {type(row[key]).__name__}"
                raise located(path, got, line=number, field=key)
        fields = {k: v for k, v in row.items() if k not in ("prompt", "completion", "id")}
        fields = {"id_in_file": row["id"], **fields} if "id" in row else fields
        out.append(Example(id=id_, prompt=row["prompt"], completion=row["completion"], fields=fields))
    return out


def context_messages(example: Example) -> list[dict[str, Any]] | None:
    """A chat example's messages before its target, as a chat model is sent them (role, content
    and name only); None for an example that is not a conversation."""
    messages = example.fields.get(CHAT_FIELD)
    if not isinstance(messages, list):
        return None
    context, _ = split_target(messages)
    return [{k: v for k, v in m.items() if k in ("role", "content", "name")} for m in context]
