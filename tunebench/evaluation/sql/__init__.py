"""Text-to-SQL evaluator: exact, normalised, component, execution and test-suite matches.

Input rows: ``id``, ``prediction``, ``gold``, ``context`` (CREATE TABLE statements; without it
the suite verdict is null) and optionally ``db_id``. Each output row carries the verdicts
``exact_match``, ``exact_match_normalized``, ``component_match``, ``execution_match`` (real
database) and ``suite_match`` (generated databases), ``failure_kind`` (why the prediction
failed on the real DB: ``syntax_error``, ``no_such_table``, ``no_such_column``,
``wrong_result``, ``timeout``, ``denied``, ``multiple_statements``, ``empty_prediction``,
``too_many_rows``, ``too_large``, ``runtime_error``; or why there is no verdict: ``no_db``, ``gold_error``),
``suite_failure_kind`` likewise for the suite, ``component_mismatch`` and ``error`` (reasons
for null verdicts). Execution semantics follow the official Spider test-suite evaluator; see
:mod:`.compare`. Untrusted SQL runs in the sandbox of :mod:`.sandbox`.

Options (all optional):

``db_dir`` (str, default none)
    folder holding ``<db_id>/*.sqlite``; without it execution verdicts are null.
``suite_size`` (int, default 8)
    generated databases per example (0 turns the test suite off).
``seed`` (int, default 0)
    seed of the suite generator (suites are deterministic given it).
``timeout_s`` (float, default 10)
    time limit of each query on each database.
``max_rows`` (int, default 100000)
    rows fetched at most per query; a longer result is an error (``too_many_rows``).
``max_result_mb`` (float, default 128)
    bytes fetched at most per query (text and blob lengths plus 16 bytes a value); a larger
    result is an error (``too_large``).
``max_memory_mb`` (float, default 512)
    SQLite's heap limit in each scoring process (all its databases together, temporary tables
    and sorts included); a query that needs more fails (``too_large``).
``keep_distinct`` (bool, default False)
    keep DISTINCT when executing; by default it is removed from both queries, as upstream does.
``component_ignore_values`` (bool, default True)
    component match ignores literal values, as Spider's exact-set match does.
``components`` (bool, default True)
    compute the component match (False: its verdict is null; execution-only scoring).
``suite_cache_dir`` (str, default ``$XDG_CACHE_HOME/tunebench/sql-suites``)
    where generated suites (and the gold's results on them) are kept between runs, keyed by
    seed, context, gold and the generator's source; empty or null turns the cache off.
``workers`` (int, default ``os.cpu_count()``)
    processes used; small inputs are scored in-process.
``progress`` (bool, default False)
    show a rich progress bar.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tunebench.errors import TunebenchError
from tunebench.evaluation.common import add_rate
from tunebench.evaluation.sql.compare import prepare_pair
from tunebench.evaluation.sql.execution import Evaluator, Settings, db_id_problem, default_suite_cache_dir
from tunebench.evaluation.sql.sandbox import DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_RESULT_BYTES

REQUIRED_FIELDS = ("prediction", "gold")
# Suites to generate below which one process is faster: real-DB execution, string and component
# matches and cached suites cost well under a millisecond per row, less than forking and
# shipping results back; generating a suite costs a few milliseconds.
INLINE_BELOW = 64

_WORKER: Evaluator | None = None


def settings_from(options: dict[str, Any]) -> Settings:
    """Typed settings from the loose options dict (defaults documented above)."""
    db_dir = options.get("db_dir")
    return Settings(
        db_dir=str(db_dir) if db_dir else None,
        suite_size=int(options.get("suite_size", 8)),
        seed=int(options.get("seed", 0)),
        timeout_s=float(options.get("timeout_s", 10.0)),
        max_rows=int(options.get("max_rows", 100_000)),
        max_result_mb=_megabytes(options, "max_result_mb", DEFAULT_MAX_RESULT_BYTES / 2**20),
        max_memory_mb=_megabytes(options, "max_memory_mb", DEFAULT_MAX_MEMORY_BYTES / 2**20),
        keep_distinct=bool(options.get("keep_distinct", False)),
        component_ignore_values=bool(options.get("component_ignore_values", True)),
        components=bool(options.get("components", True)),
        suite_cache_dir=str(cache)
        if (cache := options.get("suite_cache_dir", default_suite_cache_dir()))
        else None,
    )


def _megabytes(options: dict[str, Any], key: str, default: float) -> float:
    """A size option in MB; it must be a positive number."""
    value = options.get(key)
    if value is None:
        return default
    megabytes = float(value)
    if not math.isfinite(megabytes) or megabytes <= 0:
        raise TunebenchError(f"{key}: {value} is not a positive number of megabytes")
    return megabytes


def check_db_ids(rows: list[dict[str, Any]]) -> None:
    """Refuse a ``db_id`` that is a path rather than a folder name inside ``db_dir``."""
    for number, row in enumerate(rows, start=1):
        db_id = row.get("db_id")
        if isinstance(db_id, str) and (problem := db_id_problem(db_id)):
            raise TunebenchError(f"row {number} (id '{row.get('id')}'): {problem}")


def _init_worker(settings: Settings) -> None:
    global _WORKER
    _WORKER = Evaluator(settings)


def _score_chunk(chunk: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    assert _WORKER is not None
    return [(i, _WORKER.score_row(row)) for i, row in chunk]


def _chunks(rows: list[dict[str, Any]], count: int) -> list[list[tuple[int, dict[str, Any]]]]:
    """Split rows into ``count`` chunks keeping rows of one (db, gold, context) together.

    Same-gold rows in one process share its cached gold results and generated suite.
    """
    groups: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
    for i, row in enumerate(rows):
        key = (row.get("db_id"), row.get("gold"), row.get("context"))
        groups.setdefault(key, []).append((i, row))
    chunks: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in range(count)]
    for n, group in enumerate(groups.values()):
        chunks[n % count].extend(group)
    return [c for c in chunks if c]


def _run_parallel(
    rows: list[dict[str, Any]], settings: Settings, workers: int, advance: Callable[[int], None]
) -> Iterator[tuple[int, dict[str, Any]]]:
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(settings,)
    ) as pool:
        futures = [pool.submit(_score_chunk, c) for c in _chunks(rows, workers * 8)]
        for future in as_completed(futures):
            done = future.result()
            advance(len(done))
            yield from done


def _run_inline(
    rows: list[dict[str, Any]], settings: Settings, advance: Callable[[int], None]
) -> Iterator[tuple[int, dict[str, Any]]]:
    evaluator = Evaluator(settings)
    try:
        for i, row in enumerate(rows):
            yield i, evaluator.score_row(row)
            advance(1)
    finally:
        evaluator.close()


def _suites_to_generate(rows: list[dict[str, Any]], settings: Settings) -> int:
    """Distinct (context, gold) suites not in the on-disk cache: the work worth parallelising."""
    if settings.suite_size <= 0:
        return 0
    probe = Evaluator(settings)
    keys = {(r.get("context"), r.get("gold")) for r in rows}
    todo = 0
    for context, gold in keys:
        if isinstance(context, str) and isinstance(gold, str):
            executed_gold = prepare_pair(gold, gold, settings.keep_distinct)[1]  # the suite's key
            path = probe.cache_path(context, executed_gold)
            todo += not (path and os.path.exists(path))
    return todo


def clear_caches() -> None:
    """Forget this process's parse caches (benchmarks time every run from cold)."""
    from tunebench.evaluation.sql import components, normalize, schema

    for fn in (components._cached_components, components._context_schema, normalize.normalize):
        fn.cache_clear()
    schema.context_declarations.cache_clear()
    schema._type_sql.cache_clear()


def score_rows(
    rows: list[dict[str, Any]], settings: Settings, workers: int, progress: bool = False
) -> list[dict[str, Any]]:
    """Per-example rows in input order, scored in ``workers`` processes."""
    out: list[dict[str, Any] | None] = [None] * len(rows)
    parallel = workers > 1 and _suites_to_generate(rows, settings) >= INLINE_BELOW

    def consume(advance: Callable[[int], None]) -> None:
        results = (
            _run_parallel(rows, settings, workers, advance)
            if parallel
            else _run_inline(rows, settings, advance)
        )
        for i, result in results:
            out[i] = result

    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("scoring SQL", total=len(rows))
            consume(lambda n: bar.advance(task, n))
    else:
        consume(lambda n: None)
    return [r for r in out if r is not None]


def summarize(per_example: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """metrics.json content: rates with CIs, subset sizes, gold failures and failure kinds."""
    metrics: dict[str, Any] = {"n": len(per_example)}
    col = {k: [r.get(k) for r in per_example] for k in per_example[0]} if per_example else {}

    def verdicts(key: str) -> list[bool | None]:
        return col.get(key, [])

    add_rate(metrics, "exact_match", verdicts("exact_match"))
    add_rate(metrics, "exact_match_normalized", verdicts("exact_match_normalized"))
    add_rate(metrics, "component_match", verdicts("component_match"), with_n=True)
    add_rate(metrics, "execution_accuracy", verdicts("execution_match"), with_n=True)
    metrics["execution_n"] = metrics.pop("execution_accuracy_n")
    add_rate(metrics, "suite_accuracy", verdicts("suite_match"), with_n=True)
    metrics["suite_n"] = metrics.pop("suite_accuracy_n")
    kinds = Counter(r.get("failure_kind") for r in per_example if r.get("failure_kind"))
    suite_kinds = Counter(r.get("suite_failure_kind") for r in per_example if r.get("suite_failure_kind"))
    metrics["gold_execution_failures"] = kinds.get("gold_error", 0)
    metrics["gold_suite_failures"] = suite_kinds.get("gold_error", 0)
    metrics["no_db"] = kinds.get("no_db", 0)
    metrics["failure_kinds"] = dict(sorted(kinds.items()))
    metrics["suite_failure_kinds"] = dict(sorted(suite_kinds.items()))
    both = [(r["execution_match"], r["suite_match"]) for r in per_example]
    known = [(e, s) for e, s in both if e is not None and s is not None]
    metrics["suite_vs_execution"] = {
        f"real_{'accept' if e else 'reject'}_suite_{'accept' if s else 'reject'}": sum(
            1 for pair in known if pair == (e, s)
        )
        for e in (True, False)
        for s in (True, False)
    }
    metrics["options"] = {**settings.__dict__}
    return metrics


def score(rows: list[dict[str, Any]], options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score SQL predictions (see the module docstring for fields and options)."""
    settings = settings_from(options)
    check_db_ids(rows)
    workers = max(1, int(options.get("workers") or os.cpu_count() or 1))
    start = time.perf_counter()
    per_example = score_rows(rows, settings, workers, bool(options.get("progress", False)))
    metrics = summarize(per_example, settings)
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    return per_example, metrics
