"""Benchmark of the SQL evaluator against the official Spider test-suite evaluator.

Not a test. Measures, on the 568 eval examples (536 with a real database):

1. wall time of ``tunebench.evaluation.sql.score`` (full: execution + 8-DB suite + component
   match; and execution-only: ``suite_size=0``) vs the official evaluator (taoyds/
   test-suite-sql-eval, run from a checkout OUTSIDE the repo with its own venv) on the same
   pairs, back to back, for gold-as-prediction and for a realistic mutated prediction file;
2. per-example agreement of our real-DB execution verdicts with the official ones;
3. the test suite against real-DB execution over gold + every mutation of every gold
   (confusion matrix, disagreements classified).

Usage (from the repo root)::

    python benchmarks/bench_sql_eval.py --official-dir /work/scratch/test-suite-sql-eval \\
        --official-python /work/scratch/venv-official/bin/python

The official evaluator needs nltk's ``punkt_tab`` data for ``word_tokenize``; offline we call
it with ``preserve_line=True`` (no sentence splitting, which SQL never needs) through a small
driver written into the scratch folder. That driver also times ``evaluation.evaluate`` in-process
(``--etype all``, as the study ran it) and collects per-pair verdicts from ``eval_exec_match``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunebench.evaluation.sql import clear_caches, score, settings_from
from tunebench.evaluation.sql.compare import prepare_pair, results_equal
from tunebench.evaluation.sql.execution import Evaluator
from tunebench.evaluation.sql.mutate import EQUIVALENT, mutations

REPO = Path(__file__).resolve().parents[1]
EVAL_FILE = "sql/intersect/spider_create_context_val_db_id.json"

DRIVER = """
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import nltk
import process_sql
process_sql.word_tokenize = lambda s: nltk.word_tokenize(s, preserve_line=True)
import evaluation
from exec_eval import eval_exec_match
mode, gold, pred, db, table, out = sys.argv[1:7]
t0 = time.perf_counter()
if mode == "all":
    evaluation.evaluate(gold, pred, db, "all", evaluation.build_foreign_key_map_from_json(table), False, False, False)
    result = None
else:
    result = []
    for g, p in zip(open(gold), open(pred)):
        g_str, db_id = g.strip().split("\\t")
        p_str = p.strip().split("\\t")[0].replace("value", "1")
        path = os.path.join(db, db_id, db_id + ".sqlite")
        result.append(eval_exec_match(path, p_str, g_str, False, False, False))
seconds = time.perf_counter() - t0
if out != "-":
    json.dump(result, open(out, "w"))
print("BENCH_SECONDS", seconds)
"""


def load_examples(data_dir: Path) -> list[dict[str, Any]]:
    rows = json.loads((data_dir / EVAL_FILE).read_text())
    return [
        {
            "id": f"sql-{i}",
            "gold": r["answer"],
            "context": r["context"],
            "db_id": r["db_id"],
            "prediction": r["answer"],
        }
        for i, r in enumerate(rows)
    ]


def realistic(examples: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """About half gold, half one random mutation: a plausible model's mix of right and wrong."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        muts = mutations(ex["gold"], ex["context"])
        if muts and rng.random() < 0.5:
            out.append(dict(ex, prediction=muts[rng.choice(sorted(muts))]))
        else:
            out.append(dict(ex))
    return out


def all_mutations(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for ex in examples:
        out.append(dict(ex, id=f"{ex['id']}:gold", mutation="gold"))
        for name, sql in mutations(ex["gold"], ex["context"]).items():
            out.append(dict(ex, id=f"{ex['id']}:{name}", prediction=sql, mutation=name))
    return out


def run_official(
    args: argparse.Namespace, scratch: Path, preds: list[dict[str, Any]], mode: str, tag: str
) -> dict:
    """Run the official evaluator on the rows that have a real DB; returns seconds (+ verdicts)."""
    gold_file, pred_file = scratch / f"{tag}_gold.txt", scratch / f"{tag}_pred.txt"
    gold_file.write_text("".join(f"{p['gold'].strip()}\t{p['db_id']}\n" for p in preds))
    pred_file.write_text("".join(" ".join(p["prediction"].split()) + "\n" for p in preds))
    driver = scratch / "official_driver.py"
    driver.write_text(DRIVER)
    out = scratch / f"{tag}_{mode}_verdicts.json"
    cmd = [args.official_python, str(driver), mode, str(gold_file), str(pred_file), str(scratch / "db")]
    cmd += [str(args.data_dir / "sql/spider/tables.json"), str(out) if mode == "verdicts" else "-"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=args.official_dir, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    seconds = float(
        next(line for line in proc.stdout.splitlines() if line.startswith("BENCH_SECONDS")).split()[1]
    )
    result = {"seconds": round(seconds, 3), "wall_with_startup_s": round(wall, 3)}
    if mode == "verdicts":
        result["verdicts"] = json.loads(out.read_text())
    return result


def time_ours(
    rows: list[dict[str, Any]], options: dict[str, Any], repeats: int, cache: str = "off"
) -> tuple[float, list, dict]:
    """Best of ``repeats`` runs, each from cold in-process parse caches.

    ``cache``: "off" (no suite cache), "cold" (a fresh empty suite cache every run: the first
    evaluation against a set of golds) or "warm" (a cache filled by one untimed run first: any
    later prediction file scored against the same golds, as in a study).
    """
    best = float("inf")
    per_example: list = []
    metrics: dict = {}
    with tempfile.TemporaryDirectory() as warm_dir:
        if cache == "warm":
            score(rows, {**options, "suite_cache_dir": warm_dir})
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cold_dir:
                folder = {"off": None, "cold": cold_dir, "warm": warm_dir}[cache]
                clear_caches()
                start = time.perf_counter()
                per_example, metrics = score(rows, {**options, "suite_cache_dir": folder})
                best = min(best, time.perf_counter() - start)
    return round(best, 3), per_example, metrics


def _dump_db(conn: Any) -> dict[str, list]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: [list(r) for r in conn.execute(f'SELECT * FROM "{t}"')] for t in tables}


def _degenerate(rows: list) -> bool:
    """An empty result, or one whose every value is NULL: no evidence that the gold is exercised."""
    return not rows or all(v is None for row in rows for v in row)


def counterexample(evaluator: Evaluator, row: dict[str, Any]) -> dict[str, Any] | None:
    """The first generated DB where prediction and gold differ, with both results."""
    pred, gold, order_matters = prepare_pair(row["prediction"], row["gold"], False)
    evaluator.suite(pred, gold, order_matters, row["context"])
    suite, gold_results = evaluator.suites[(row["context"], gold)]
    for index, (conn, gold_result) in enumerate(zip(suite.connections(), gold_results, strict=True)):
        cur = conn.execute(pred)
        pred_rows = cur.fetchall()
        if not results_equal(gold_result.rows or [], pred_rows, order_matters):
            return {
                "db_index": index,
                "gold_rows": gold_result.rows,
                "prediction_rows": pred_rows,
                "gold_degenerate": _degenerate(gold_result.rows or []),
                "database": _dump_db(conn),
            }
    return None


def verify_false_positives(
    rows: list[dict[str, Any]], per_example: list[dict[str, Any]], db_dir: Path, samples: int = 3
) -> dict[str, Any]:
    """For every real-accept / suite-reject pair: re-find the counterexample DB and check the
    gold's result there is non-degenerate (so the rejection is not an artefact of empty data)."""
    evaluator = Evaluator(settings_from({"db_dir": str(db_dir), "suite_cache_dir": None}))
    checked = degenerate = not_found = 0
    shown: list[dict[str, Any]] = []
    degenerate_ids: list[str] = []
    for row, res in zip(rows, per_example, strict=True):
        if not (res["execution_match"] is True and res["suite_match"] is False):
            continue
        if res["suite_failure_kind"] != "wrong_result":
            # the prediction errors on generated data the gold runs on: not a result comparison
            checked += 1
            continue
        found = counterexample(evaluator, row)
        checked += 1
        if found is None:
            not_found += 1
            continue
        if found["gold_degenerate"]:
            degenerate += 1
            degenerate_ids.append(row["id"])
        elif len(shown) < samples:
            shown.append({"id": row["id"], "gold": row["gold"], "prediction": row["prediction"], **found})
    evaluator.close()
    return {
        "checked": checked,
        "gold_result_degenerate": degenerate,
        "degenerate_ids": degenerate_ids[:20],
        "counterexample_not_reproduced": not_found,
        "samples": shown,
    }


def confusion(rows: list[dict[str, Any]], per_example: list[dict[str, Any]]) -> dict[str, Any]:
    """Suite vs real-DB verdicts over the mutation set, disagreements classified."""
    matrix: Counter = Counter()
    classes: Counter = Counter()
    by_mutation: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for row, res in zip(rows, per_example, strict=True):
        real, suite = res["execution_match"], res["suite_match"]
        if real is None or suite is None:
            matrix["null"] += 1
            continue
        matrix[f"real_{'accept' if real else 'reject'}_suite_{'accept' if suite else 'reject'}"] += 1
        if real == suite:
            continue
        if real:
            # real DB accepts, suite rejects: a wrong mutation the real data could not tell apart,
            # or an equivalent rewrite the generated data wrongly separates
            label = (
                "equivalent_rewrite_rejected"
                if row["mutation"] in EQUIVALENT
                else "real_db_false_positive_caught"
            )
        elif res["failure_kind"] in {"no_such_column", "no_such_table"}:
            label = "context_schema_differs_from_real_db"  # prediction reads a column only the context has
        else:
            label = "suite_missed_difference"
        classes[label] += 1
        by_mutation[f"{row['mutation']}:{label}"] += 1
        examples.setdefault(label, [])
        if len(examples[label]) < 5:
            examples[label].append(f"{row['gold']}  =>  {row['prediction']}")
    rejects = matrix["real_reject_suite_reject"] + matrix["real_reject_suite_accept"]
    accepts = matrix["real_accept_suite_accept"] + matrix["real_accept_suite_reject"]
    schema_only = classes["context_schema_differs_from_real_db"]
    false_pos = classes["real_db_false_positive_caught"]
    return {
        "matrix": dict(matrix),
        "suite_rejects_of_real_rejects": round(matrix["real_reject_suite_reject"] / rejects, 4)
        if rejects
        else None,
        "suite_rejects_of_real_rejects_excl_schema_mismatch": round(
            matrix["real_reject_suite_reject"] / (rejects - schema_only), 4
        )
        if rejects - schema_only
        else None,
        "suite_accepts_of_real_accepts": round(matrix["real_accept_suite_accept"] / accepts, 4)
        if accepts
        else None,
        "suite_accepts_of_real_accepts_excl_caught_false_positives": round(
            matrix["real_accept_suite_accept"] / (accepts - false_pos), 4
        )
        if accepts - false_pos
        else None,
        "disagreements": dict(classes),
        "disagreements_by_mutation": dict(by_mutation.most_common()),
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--official-dir", type=Path, default=Path("/work/scratch/test-suite-sql-eval"))
    parser.add_argument("--official-python", default="/work/scratch/venv-official/bin/python")
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch/bench_sql"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sql_eval.json")
    args = parser.parse_args()
    db_dir = args.data_dir / "sql" / "spider" / "database"
    args.scratch.mkdir(parents=True, exist_ok=True)
    links = args.scratch / "db"  # the official code opens DBs read-write: give it links, not the mirror
    links.mkdir(exist_ok=True)
    for folder in db_dir.iterdir():
        if not (links / folder.name).exists():
            (links / folder.name).symlink_to(folder)

    examples = load_examples(args.data_dir)
    sets = {"gold_as_prediction": examples, "mutated": realistic(examples)}
    workers = os.cpu_count() or 1
    results: dict[str, Any] = {"workers": workers, "cpu_count": os.cpu_count(), "sets": {}}
    print(f"{'set':<20}{'evaluator':<34}{'pairs':>6}{'seconds':>10}{'ratio':>8}")
    for name, rows in sets.items():
        with_db = [r for r in rows if (db_dir / r["db_id"]).is_dir()]
        off_all = run_official(args, args.scratch, with_db, "all", name)
        off_exec = run_official(args, args.scratch, with_db, "verdicts", name)
        base = {"db_dir": str(db_dir), "workers": workers}
        exec_s, per536, _ = time_ours(with_db, {**base, "suite_size": 0, "components": False}, args.repeats)
        exec_comp_s, _, _ = time_ours(with_db, {**base, "suite_size": 0}, args.repeats)
        full_off_s, _, _ = time_ours(with_db, base, args.repeats, "off")
        full_cold_s, _, _ = time_ours(with_db, base, args.repeats, "cold")
        full_warm_s, _, _ = time_ours(with_db, base, args.repeats, "warm")
        full568_s, _, _ = time_ours(rows, base, args.repeats, "cold")
        ours = [r["execution_match"] for r in per536]
        theirs = [None if v is None else bool(v) for v in off_exec.pop("verdicts")]
        agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
        entry = {
            "pairs_with_db": len(with_db),
            "official_etype_all_s": off_all["seconds"],
            "official_etype_all_wall_with_startup_s": off_all["wall_with_startup_s"],
            "official_exec_only_s": off_exec["seconds"],
            "ours_exec_only_536_s": exec_s,
            "ours_exec_plus_string_component_536_s": exec_comp_s,
            "ours_full_no_cache_536_s": full_off_s,
            "ours_full_cold_cache_536_s": full_cold_s,
            "ours_full_warm_cache_536_s": full_warm_s,
            "ours_full_cold_cache_568_s": full568_s,
            "speedup_exec_only_vs_official_exec": round(off_exec["seconds"] / exec_s, 2),
            "speedup_full_no_cache_vs_official_all": round(off_all["seconds"] / full_off_s, 2),
            "speedup_full_warm_cache_vs_official_all": round(off_all["seconds"] / full_warm_s, 2),
            "execution_verdict_agreement": f"{agree}/{len(ours)}",
            "execution_accuracy_ours": round(sum(bool(v) for v in ours) / len(ours), 4),
            "execution_accuracy_official": round(sum(bool(v) for v in theirs) / len(theirs), 4),
            "disagreeing_ids": [r["id"] for r, a, b in zip(with_db, ours, theirs, strict=True) if a != b],
        }
        lines = [
            ("official --etype all", off_all["seconds"], None),
            ("official exec only", off_exec["seconds"], None),
            ("ours exec only", exec_s, entry["speedup_exec_only_vs_official_exec"]),
            ("ours exec+exact+component", exec_comp_s, None),
            ("ours full, no suite cache", full_off_s, entry["speedup_full_no_cache_vs_official_all"]),
            ("ours full, cold suite cache", full_cold_s, None),
            ("ours full, warm suite cache", full_warm_s, entry["speedup_full_warm_cache_vs_official_all"]),
        ]
        for label, seconds, ratio in lines:
            shown = f"{ratio:>8.2f}" if ratio else f"{'':>8}"
            print(f"{name:<20}{label:<34}{len(with_db):>6}{seconds:>10.3f}{shown}")
        print(f"{name:<20}{'ours full cold, all 568':<34}{len(rows):>6}{full568_s:>10.3f}")
        print(f"{name:<20}agreement with official on real DBs: {entry['execution_verdict_agreement']}")
        results["sets"][name] = entry

    mutated = all_mutations(examples)
    start = time.perf_counter()
    per_example, _ = score(mutated, {"db_dir": str(db_dir), "workers": workers, "suite_cache_dir": None})
    scored_s = round(time.perf_counter() - start, 3)
    conf = confusion(mutated, per_example)
    conf["false_positive_check"] = verify_false_positives(mutated, per_example, db_dir)
    conf["predictions"] = len(mutated)
    conf["seconds"] = scored_s
    results["suite_vs_real"] = conf
    print("suite vs real DB over", len(mutated), "predictions:", json.dumps(conf["matrix"]))
    print(
        "  suite rejects of real rejects:",
        conf["suite_rejects_of_real_rejects"],
        "| excl. context-schema mismatches:",
        conf["suite_rejects_of_real_rejects_excl_schema_mismatch"],
    )
    print(
        "  suite accepts of real accepts:",
        conf["suite_accepts_of_real_accepts"],
        "| excl. caught real-DB false positives:",
        conf["suite_accepts_of_real_accepts_excl_caught_false_positives"],
    )
    print("  disagreements:", json.dumps(conf["disagreements"]))
    check = conf["false_positive_check"]
    print(
        f"  real-accept/suite-reject checked: {check['checked']}, gold result degenerate on the "
        f"counterexample DB: {check['gold_result_degenerate']}, not reproduced: "
        f"{check['counterexample_not_reproduced']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
