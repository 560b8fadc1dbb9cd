"""String-level matches: the study's exact match and a normalised variant.

``exact_match`` is what the study reports: the stripped prediction equals the stripped gold.
``exact_match_normalized`` also forgives formatting: keyword and identifier case, whitespace
(including around operators and commas), a trailing semicolon and the quote style of string
literals (``"France"`` and ``'France'``); the text inside quotes keeps its case.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sqlglot.errors import SqlglotError
from sqlglot.tokens import Tokenizer, TokenType

_TOKENIZER = Tokenizer()
_QUOTED = {TokenType.STRING, TokenType.IDENTIFIER}


def exact_match(prediction: str, gold: str) -> bool:
    """The study's metric: equality after stripping surrounding whitespace."""
    return prediction.strip() == gold.strip()


@lru_cache(maxsize=4096)  # the gold is normalised once per prediction scored against it
def normalize(query: str) -> str:
    """Canonical text of ``query``: tokens joined by single spaces, quotes folded to ``'``."""
    text = query.strip().rstrip(";").strip()
    try:
        tokens = _TOKENIZER.tokenize(text)
    except SqlglotError:
        return re.sub(r"\s+", " ", text.lower())
    parts = []
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            continue
        raw = text[token.start : token.end + 1]
        if token.token_type in _QUOTED and raw[:1] in "'\"`[":
            parts.append("'" + token.text.replace("'", "''") + "'")
        else:
            parts.append(raw.lower())
    return " ".join(parts)


def exact_match_normalized(prediction: str, gold: str) -> bool:
    """Equality of :func:`normalize` forms."""
    if prediction == gold:
        return True
    return normalize(prediction) == normalize(gold)
