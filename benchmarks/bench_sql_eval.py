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
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunebench.evaluation.sql import score
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


def time_ours(rows: list[dict[str, Any]], options: dict[str, Any], repeats: int) -> tuple[float, list, dict]:
    best = float("inf")
    per_example: list = []
    metrics: dict = {}
    for _ in range(repeats):
        start = time.perf_counter()
        per_example, metrics = score(rows, options)
        best = min(best, time.perf_counter() - start)
    return round(best, 3), per_example, metrics


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
        full_s, _, _ = time_ours(rows, {"db_dir": str(db_dir), "workers": workers}, args.repeats)
        full536_s, per536, _ = time_ours(with_db, {"db_dir": str(db_dir), "workers": workers}, args.repeats)
        exec_s, _, _ = time_ours(
            with_db, {"db_dir": str(db_dir), "workers": workers, "suite_size": 0}, args.repeats
        )
        ours = [r["execution_match"] for r in per536]
        theirs = [None if v is None else bool(v) for v in off_exec.pop("verdicts")]
        agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
        entry = {
            "pairs_with_db": len(with_db),
            "official_etype_all_s": off_all["seconds"],
            "official_etype_all_wall_with_startup_s": off_all["wall_with_startup_s"],
            "official_exec_only_s": off_exec["seconds"],
            "ours_full_568_s": full_s,
            "ours_full_536_s": full536_s,
            "ours_exec_only_536_s": exec_s,
            "speedup_full_vs_official_all": round(off_all["seconds"] / full536_s, 2),
            "speedup_exec_only_vs_official_exec": round(off_exec["seconds"] / exec_s, 2),
            "execution_verdict_agreement": f"{agree}/{len(ours)}",
            "execution_accuracy_ours": round(sum(bool(v) for v in ours) / len(ours), 4),
            "execution_accuracy_official": round(sum(bool(v) for v in theirs) / len(theirs), 4),
            "disagreeing_ids": [r["id"] for r, a, b in zip(with_db, ours, theirs, strict=True) if a != b],
        }
        results["sets"][name] = entry
        print(f"{name:<20}{'official --etype all':<34}{len(with_db):>6}{off_all['seconds']:>10.3f}{'':>8}")
        print(f"{name:<20}{'official exec only':<34}{len(with_db):>6}{off_exec['seconds']:>10.3f}{'':>8}")
        print(
            f"{name:<20}{'ours full (exec+suite8+component)':<34}{len(with_db):>6}{full536_s:>10.3f}"
            f"{entry['speedup_full_vs_official_all']:>8.2f}"
        )
        print(
            f"{name:<20}{'ours exec only (suite_size=0)':<34}{len(with_db):>6}{exec_s:>10.3f}"
            f"{entry['speedup_exec_only_vs_official_exec']:>8.2f}"
        )
        print(f"{name:<20}{'ours full, all 568':<34}{len(rows):>6}{full_s:>10.3f}")
        print(f"{name:<20}agreement with official on real DBs: {entry['execution_verdict_agreement']}")

    mutated = all_mutations(examples)
    start = time.perf_counter()
    per_example, _ = score(mutated, {"db_dir": str(db_dir), "workers": workers})
    conf = confusion(mutated, per_example)
    conf["predictions"] = len(mutated)
    conf["seconds"] = round(time.perf_counter() - start, 3)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
