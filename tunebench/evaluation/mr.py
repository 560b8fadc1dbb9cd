"""ViGGO meaning representations: ``function(attr[value], attr[value], ...)``.

:func:`parse_mr` turns text into an :class:`MR` or a :class:`ParseFailure`; it never raises
for bad text, because model outputs are arbitrary strings and one bad prediction must become
a per-example verdict, not a crash.

The grammar, as found in every row of the ViGGO release::

    mr     := ident "(" [ slot { "," slot } [","] ] ")"
    slot   := ident "[" value "]"
    value  := any text in which "[" and "]" are balanced (may be empty, may hold "," and "()")

Whitespace is allowed around every token and a trailing comma is accepted: neither changes the
meaning. Anything after the closing ``)`` is an error (the inference stage already keeps only
the first line, so trailing text is a real model mistake).

Values of the list attributes (:data:`LIST_ATTRIBUTES`) are comma-separated item lists whose
order carries no meaning (``genres[puzzle, shooter]`` = ``genres[shooter, puzzle]``). Other
values may contain commas that are part of one value (``developer[Spectrum HoloByte, Inc.]``,
``exp_release_date[June 29, 2018]``), so only the list attributes are split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The ontology of the ViGGO release (and of the study's prompt), in the prompt's order.
FUNCTIONS: tuple[str, ...] = (
    "inform",
    "request",
    "give_opinion",
    "confirm",
    "verify_attribute",
    "suggest",
    "request_explanation",
    "recommend",
    "request_attribute",
)
ATTRIBUTES: tuple[str, ...] = (
    "name",
    "exp_release_date",
    "release_year",
    "developer",
    "esrb",
    "rating",
    "genres",
    "player_perspective",
    "has_multiplayer",
    "platforms",
    "available_on_steam",
    "has_linux_release",
    "has_mac_release",
    "specifier",
)
# Attributes whose value is an unordered list of comma-separated items.
LIST_ATTRIBUTES: frozenset[str] = frozenset({"genres", "platforms", "player_perspective"})

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A normalised value: a string, or for list attributes the set of its items.
Value = str | frozenset[str]


@dataclass(frozen=True)
class MR:
    """A parsed meaning representation; ``slots`` keeps the written order and duplicates."""

    function: str
    slots: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        """The canonical text form (identical to the dataset's own spelling)."""
        inner = ", ".join(f"{attr}[{value}]" for attr, value in self.slots)
        return f"{self.function}({inner})"

    @property
    def attributes(self) -> list[str]:
        """Attribute names in written order (duplicates kept)."""
        return [attr for attr, _ in self.slots]

    def normalized(self, ignore_case: bool = False) -> dict[str, Value]:
        """Attribute -> normalised value; for a duplicated attribute the first value wins."""
        out: dict[str, Value] = {}
        for attr, value in self.slots:
            out.setdefault(attr, normalize_value(attr, value, ignore_case))
        return out

    def duplicated(self) -> list[str]:
        """Attributes written more than once, each listed once."""
        seen: set[str] = set()
        dups: list[str] = []
        for attr in self.attributes:
            if attr in seen and attr not in dups:
                dups.append(attr)
            seen.add(attr)
        return dups


@dataclass(frozen=True)
class ParseFailure:
    """Why a text is not an MR; ``position`` is the 0-based offset in the stripped text."""

    message: str
    position: int | None = None

    def __str__(self) -> str:
        return self.message if self.position is None else f"{self.message} (at char {self.position})"


def normalize_value(attr: str, value: str, ignore_case: bool = False) -> Value:
    """Fold whitespace (and case if asked); split list attributes into a set of items."""
    text = " ".join(value.split())
    if ignore_case:
        text = text.casefold()
    if attr in LIST_ATTRIBUTES:
        return frozenset(item.strip() for item in text.split(",") if item.strip())
    return text


def parse_mr(text: object) -> MR | ParseFailure:
    """Parse ``text`` into an :class:`MR`, or describe why it is not one (never raises)."""
    if not isinstance(text, str):
        return ParseFailure(f"not a string ({type(text).__name__})")
    s = text.strip()
    if not s:
        return ParseFailure("empty")
    open_at = s.find("(")
    if open_at < 0:
        return ParseFailure("no '(' after a function name")
    function = s[:open_at].strip()
    if not _IDENT.fullmatch(function):
        return ParseFailure(f"function name {function[:40]!r} is not an identifier", 0)
    result = _parse_slots(s, open_at + 1)
    if isinstance(result, ParseFailure):
        return result
    slots, close_at = result
    if close_at < len(s) - 1:
        return ParseFailure("unexpected text after the closing ')'", close_at + 1)
    return MR(function, tuple(slots))


def _parse_slots(s: str, pos: int) -> tuple[list[tuple[str, str]], int] | ParseFailure:
    """Read ``attr[value], ...`` from ``pos`` up to the MR's ``)``; return slots and its offset."""
    slots: list[tuple[str, str]] = []
    while True:
        pos = _skip_space(s, pos)
        if pos >= len(s):
            return ParseFailure("missing closing ')'", pos)
        if s[pos] == ")":
            return slots, pos
        result = _parse_slot(s, pos)
        if isinstance(result, ParseFailure):
            return result
        attr, value, pos = result
        slots.append((attr, value))
        pos = _skip_space(s, pos)
        if pos < len(s) and s[pos] == ",":
            pos += 1
        elif pos < len(s) and s[pos] != ")":
            return ParseFailure(f"expected ',' or ')' after {attr}[...], found {s[pos]!r}", pos)


def _parse_slot(s: str, pos: int) -> tuple[str, str, int] | ParseFailure:
    """Read one ``attr[value]`` starting at ``pos``; return it and the offset after ``]``."""
    match = _IDENT.match(s, pos)
    if not match:
        return ParseFailure(f"expected an attribute name, found {s[pos]!r}", pos)
    attr = match.group()
    bracket = _skip_space(s, match.end())
    if bracket >= len(s) or s[bracket] != "[":
        return ParseFailure(f"attribute '{attr}' has no [value]", bracket)
    depth = 0
    # Count brackets so that a value may itself hold balanced [...]; a ')' inside a value
    # (``esrb[M (for Mature)]``) needs no special care because we only stop at depth 0.
    for end in range(bracket, len(s)):
        if s[end] == "[":
            depth += 1
        elif s[end] == "]":
            depth -= 1
            if depth == 0:
                return attr, s[bracket + 1 : end].strip(), end + 1
    return ParseFailure(f"unbalanced '[' in attribute '{attr}'", bracket)


def _skip_space(s: str, pos: int) -> int:
    """Offset of the first non-whitespace character at or after ``pos``."""
    while pos < len(s) and s[pos].isspace():
        pos += 1
    return pos
