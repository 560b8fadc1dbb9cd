"""Denotation comparison with the semantics of the official Spider test-suite evaluator.

The rules (taoyds/test-suite-sql-eval, ``exec_eval.py``, re-implemented here, not copied):

* both queries are lightly repaired first (``> =`` -> ``>=``, ``YEAR(CURDATE())`` -> 2020) and,
  unless ``keep_distinct``, every ``DISTINCT`` keyword is removed from *both* queries (so
  ``COUNT(DISTINCT x)`` becomes ``COUNT(x)``);
* row order matters only when the gold text contains ``order by`` (a plain substring test on the
  lower-cased gold, exactly as upstream, so results agree verdict for verdict);
* two empty results are equal; otherwise the row counts and the width of the first rows must
  match and some permutation of the prediction's columns must make the results equal, as
  multisets of rows (or as lists when order matters).

Where upstream enumerates candidate column permutations (all of them up to 3 columns, otherwise
those left after sampling 20 rows), we keep only permutations that map each gold column to a
prediction column holding the same multiset of values, a necessary condition, so the answer is
identical but deterministic and cheap even for wide results.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from sqlglot.errors import SqlglotError
from sqlglot.tokens import Tokenizer, TokenType

Row = tuple[Any, ...]

_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)
_TOKENIZER = Tokenizer()


def repair(query: str) -> str:
    """Apply upstream's two textual repairs (split comparison operators, MySQL's current year)."""
    query = query.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")
    return _CUR_YEAR.sub("2020", query)


def remove_distinct(query: str) -> str:
    """Drop every DISTINCT keyword token (not inside strings or quoted names).

    Spans come from the sqlglot tokenizer so the rest of the text is kept byte for byte; text that
    cannot be tokenised is returned unchanged (it will fail to execute anyway).
    """
    if "distinct" not in query.lower():
        return query  # no DISTINCT token is possible: skip the (slow) tokenizer
    try:
        tokens = _TOKENIZER.tokenize(query)
    except SqlglotError:
        return query
    spans = [(t.start, t.end + 1) for t in tokens if t.token_type == TokenType.DISTINCT]
    for start, end in reversed(spans):
        query = query[:start] + query[end:]
    return query


def prepare_pair(prediction: str, gold: str, keep_distinct: bool) -> tuple[str, str, bool]:
    """Return (prediction, gold, order_matters) as they will be executed and compared."""
    prediction, gold = repair(prediction), repair(gold)
    if not keep_distinct:
        prediction, gold = remove_distinct(prediction), remove_distinct(gold)
    return prediction, gold, "order by" in gold.lower()


def _unordered(row: Row) -> Row:
    """A row with its values sorted the way upstream sorts them (by text, then type name)."""
    return tuple(sorted(row, key=lambda v: str(v) + str(type(v))))


def _candidate_columns(gold: Sequence[Row], pred: Sequence[Row], width: int) -> list[list[int]]:
    """For each gold column, the prediction columns holding the same multiset of values."""
    gold_cols = [Counter(row[i] for row in gold) for i in range(width)]
    pred_cols = [Counter(row[i] for row in pred) for i in range(width)]
    return [[j for j in range(width) if pred_cols[j] == gold_cols[i]] for i in range(width)]


def _permutations(candidates: list[list[int]]) -> Iterator[tuple[int, ...]]:
    """Injective choices of one candidate per gold column (identity tried first)."""
    width = len(candidates)
    ordered = [sorted(c, key=lambda j, i=i: j != i) for i, c in enumerate(candidates)]
    chosen: list[int] = []
    used: set[int] = set()

    def walk(col: int) -> Iterator[tuple[int, ...]]:
        if col == width:
            yield tuple(chosen)
            return
        for j in ordered[col]:
            if j in used:
                continue
            chosen.append(j)
            used.add(j)
            yield from walk(col + 1)
            chosen.pop()
            used.discard(j)

    return walk(0)


def results_equal(gold: Sequence[Row], pred: Sequence[Row], order_matters: bool) -> bool:
    """True when ``pred`` denotes the same result as ``gold`` (upstream's ``result_eq``)."""
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    width = len(gold[0])
    if len(pred[0]) != width:
        return False
    gold_unordered = [_unordered(r) for r in gold]
    pred_unordered = [_unordered(r) for r in pred]
    if order_matters:
        if gold_unordered != pred_unordered:
            return False
    elif Counter(gold_unordered) != Counter(pred_unordered):
        return False
    if width == 1:
        return list(gold) == list(pred) if order_matters else Counter(gold) == Counter(pred)
    gold_bag = None if order_matters else Counter(gold)
    gold_list = list(gold)
    for perm in _permutations(_candidate_columns(gold, pred, width)):
        permuted = [tuple(row[j] for j in perm) for row in pred]
        if order_matters:
            if permuted == gold_list:
                return True
        elif Counter(permuted) == gold_bag:
            return True
    return False
