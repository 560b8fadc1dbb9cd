"""Ensembles (``provider: ensemble``): pool finished runs' candidates and vote, no new generation.

An ensemble run reads the predictions of its ``ensemble.members`` (other runs of the same task
and split, finished first) and writes its own ``predictions/<split>.jsonl``:

* **Pooling.** For each example, the candidates of every member in member order: a member's
  ``candidates`` when it sampled several (``generation.num_candidates``), else its prediction.
  The first member's first candidate (its greedy output) comes first, so it wins every tie.
* **Vote.** SQL: the execution vote of :mod:`tunebench.inference.select` over the pooled
  candidates (databases generated from the CREATE TABLE context; this run's
  ``generation.vote_*`` settings and ``training.seed``). Other tasks: the most frequent
  prediction (exact text), the earliest on ties.

Why: members trained differently (rank, seed, targets) err differently, so a vote across them
corrects more than more samples from one model do; on the SQL lever study two adapters' pooled
candidates scored higher on the validation split than either alone (``results/qwen15-ensemble``).

The members' generation time is the ensemble's: ``predict:<split>`` records the members' summed
wall times plus the vote's, and ``train_summary.json`` the members' summed training, so cost and
report price an ensemble as what it took to produce.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl, write_json, write_jsonl
from tunebench.rundir import RunDir
from tunebench.tasks import Example

#: fields copied from the first member's row (the example, not any member's output)
EXAMPLE_FIELDS = ("id", "gold", "question", "context", "db_id", "input", "fields")


#: providers whose runs can be members: self-hosted, so the ensemble's GPU time prices them all
MEMBER_PROVIDERS = ("local", "base")


def member_dirs(config: ExperimentConfig) -> list[RunDir]:
    """The members' run directories: a run name under ``runs_dir``, or a path with a ``/``."""
    if config.ensemble is None:  # the config validator guarantees it for provider ensemble
        raise TunebenchError(f"{config.name}: provider ensemble needs an 'ensemble' section")
    dirs = []
    for member in config.ensemble.members:
        path = Path(member) if "/" in member else Path(config.runs_dir) / member
        dirs.append(RunDir(path))
    return dirs


def trained_members(config: ExperimentConfig) -> list[RunDir]:
    """The members that trained (provider local); checks every member's provider and task."""
    trained = []
    for member in member_dirs(config):
        member_config = member.load_config()
        if member_config.provider not in MEMBER_PROVIDERS:
            raise TunebenchError(
                f"ensemble member {member.root}: provider '{member_config.provider}'; members must be "
                f"{' or '.join(MEMBER_PROVIDERS)} runs (self-hosted: their GPU time is the ensemble's cost)"
            )
        if member_config.task.name != config.task.name:
            raise TunebenchError(
                f"ensemble member {member.root}: task '{member_config.task.name}', the ensemble's is "
                f"'{config.task.name}'"
            )
        if member_config.provider == "local":
            trained.append(member)
    return trained


def _member_rows(member: RunDir, split: str, examples: list[Example]) -> list[dict[str, Any]]:
    path = member.predictions(split)
    if not path.is_file():
        raise TunebenchError(
            f"ensemble member {member.root}: no predictions for the {split} split ({path}); "
            "run that member first (a study runs its ensembles after their members)"
        )
    rows = {r["id"]: r for r in read_jsonl(path, required=("id", "prediction"))}
    missing = [ex.id for ex in examples if ex.id not in rows]
    if missing:
        raise TunebenchError(
            f"ensemble member {member.root}: {len(missing)} of {len(examples)} {split} examples have no "
            f"prediction (first: {missing[0]}); members must predict the same examples"
        )
    other = next((ex.id for ex in examples if rows[ex.id].get("gold", ex.completion) != ex.completion), None)
    if other is not None:
        raise TunebenchError(
            f"ensemble member {member.root}: example {other} of the {split} split has another gold "
            "answer than the ensemble's; members must be runs of the same data"
        )
    return [rows[ex.id] for ex in examples]


def candidates_of(row: dict[str, Any]) -> list[str]:
    """A member row's candidates: its sampled ones when it has them, else its prediction."""
    found = row.get("candidates")
    if isinstance(found, list) and found:
        return [c if isinstance(c, str) else "" for c in found]
    return [str(row.get("prediction") or "")]


def pool_rows(per_member: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per example with every member's candidates, in member order.

    ``per_member[m][k]`` is member m's row for example k. ``member_candidates`` records how
    many candidates each member gave, so a chosen index maps back to its member.
    """
    pooled = []
    for rows in zip(*per_member, strict=True):
        first = rows[0]
        out = {key: first[key] for key in EXAMPLE_FIELDS if key in first}
        lists = [candidates_of(r) for r in rows]
        out["candidates"] = [c for cands in lists for c in cands]
        out["member_candidates"] = [len(c) for c in lists]
        out["prediction"] = out["candidates"][0]
        for key in ("prompt_tokens", "completion_tokens"):
            out[key] = sum(int(r.get(key) or 0) for r in rows)
        pooled.append(out)
    return pooled


def majority_row(row: dict[str, Any]) -> dict[str, Any]:
    """The most frequent candidate (exact text) becomes the prediction; the earliest on ties."""
    candidates = row["candidates"]
    counts = Counter(candidates)
    best = max(counts.values())
    chosen = next(i for i, c in enumerate(candidates) if counts[c] == best)
    groups = list(dict.fromkeys(candidates))
    return {
        **row,
        "prediction": candidates[chosen],
        "selection": {"chosen": chosen, "groups": [counts[g] for g in groups], "executable": len(candidates)},
    }


def vote_rows(config: ExperimentConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if config.task.name != "sql":
        return [majority_row(r) for r in rows]
    from tunebench.inference.select import select_by_execution

    gen = config.generation
    return select_by_execution(
        rows,
        suite_size=gen.vote_suite_size,
        seed=config.training.seed,
        timeout_s=gen.vote_timeout_s,
        budget_s=gen.vote_budget_s,
    )


def _summed_stage(members: list[RunDir], stage: str) -> dict[str, Any]:
    """The members' ``stage`` infos added up (wall time, tokens) with their hardware."""
    infos = [m.manifest().get("stages", {}).get(stage) or {} for m in members]
    walls = [i.get("wall_time_s") for i in infos]
    gpus = [i.get("gpu_type") for i in infos if i.get("gpu_type")]
    return {
        "members_wall_time_s": round(sum(walls), 3) if all(w is not None for w in walls) else None,
        "gpu_type": gpus[0] if gpus else None,
        "gpu_count": max((int(i.get("gpu_count") or 1) for i in infos), default=1),
        "reused_from": ", ".join(str(i["reused_from"]) for i in infos if i.get("reused_from")) or None,
    }


def predict_ensemble(config: ExperimentConfig, run: RunDir, split: str, examples: list[Example]) -> Path:
    """Pool the members' predictions of ``split`` and vote; writes ``run.predictions(split)``."""
    trained_members(config)  # refuses members of another task or provider
    members = member_dirs(config)
    per_member = [_member_rows(m, split, examples) for m in members]
    start = time.perf_counter()
    voted = vote_rows(config, pool_rows(per_member))
    vote_s = time.perf_counter() - start
    final = run.predictions(split)
    write_jsonl(final, voted)
    summed = _summed_stage(members, f"predict:{split}")
    wall = None if summed["members_wall_time_s"] is None else summed["members_wall_time_s"] + vote_s
    infos = [r["selection"] for r in voted]
    run.record_stage(
        f"predict:{split}",
        provider="ensemble",
        members=[str(m.root) for m in members],
        n=len(voted),
        wall_time_s=round(wall, 3) if wall is not None else None,
        predictions_per_s=round(len(voted) / wall, 3) if wall else None,
        vote_s=round(vote_s, 3),
        selection="execution_vote" if config.task.name == "sql" else "majority",
        selection_changed=sum(1 for i in infos if i["chosen"] != 0),
        prompt_tokens=sum(r["prompt_tokens"] for r in voted),
        completion_tokens=sum(r["completion_tokens"] for r in voted),
        **{k: v for k, v in summed.items() if k != "members_wall_time_s" and v is not None},
        members_wall_time_s=summed["members_wall_time_s"],
    )
    return final


def train_ensemble(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """Nothing to train: the members' training, summed, is written as this run's summary."""
    members = trained_members(config)
    summaries = []
    for member in members:
        if not member.train_summary.is_file():
            raise TunebenchError(
                f"ensemble member {member.root}: not trained ({member.train_summary} missing); "
                "run that member first"
            )
        summaries.append(read_json(member.train_summary))
    walls = [s.get("wall_time_s") for s in summaries]
    choice = [
        float(m.manifest().get("stages", {}).get("choose", {}).get("gpu_time_s") or 0.0) for m in members
    ]
    gpus = [s.get("gpu_type") for s in summaries if s.get("gpu_type")]
    summary = {
        "provider": "ensemble",
        "members": [str(m.root) for m in member_dirs(config)],
        "wall_time_s": round(sum(walls), 3) if all(w is not None for w in walls) else None,  # 0 untrained
        "checkpoint_choice_s": round(sum(choice), 3),
        "gpu_type": gpus[0] if gpus else None,
        "gpu_count": max((int(s.get("gpu_count") or 1) for s in summaries), default=1),
        "train_tokens": sum(int(s.get("train_tokens") or 0) for s in summaries),
    }
    write_json(run.train_summary, summary)
    return summary
