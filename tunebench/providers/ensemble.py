"""Ensembles (``provider: ensemble``): pool finished runs' candidates and vote, no new generation.

An ensemble run reads the predictions of its ``ensemble.members`` (other runs of the same task
and examples, finished first) and writes its own ``predictions/<split>.jsonl``:

* **Pooling.** For each example, the candidates of every member in member order: a member's
  ``candidates`` when it sampled several (``generation.num_candidates``), else its prediction.
  The first member's first candidate (its greedy output) comes first, so it wins every tie.
* **Vote.** SQL: the execution vote of :mod:`tunebench.inference.select` over the pooled
  candidates (databases generated from the CREATE TABLE context; this run's
  ``generation.vote_*`` settings and sampling seed). Other tasks: the answer most candidates
  give (:meth:`~tunebench.tasks.base.Task.vote_key`: ViGGO compares parsed meaning
  representations, others the text), the earliest on ties; a majority needs at least 3
  candidates per example.

Why: members trained differently (rank, seed, targets) err differently, so a vote across them
corrects more than more samples from one model do; on the SQL lever study two adapters' pooled
candidates scored higher on the validation split than either alone (``results/qwen15-ensemble``).

**Cost.** An ensemble costs what its members did: its ``cost.json`` adds up the members' own
(training, and each split's predictions); the vote itself is CPU work, recorded as ``vote_s``
and not priced. **Staleness.** Each stage records a digest of the member files it read; when a
member is trained or predicted again, the ensemble's stages are redone on the next run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.config.study import MEMBER_PROVIDERS
from tunebench.errors import TunebenchError
from tunebench.io import read_json, read_jsonl, write_json, write_jsonl
from tunebench.providers.registry import Provider, get_provider
from tunebench.rundir import RunDir
from tunebench.tasks import Example, Task, get_task

#: fewest candidates per example a (non-SQL) majority can be taken over
MAJORITY_MIN = 3


def member_dirs(config: ExperimentConfig) -> list[RunDir]:
    """The members' run directories: a run name under ``runs_dir``, or a path with a ``/``."""
    if config.ensemble is None:  # the config validator guarantees it for provider ensemble
        raise TunebenchError(f"{config.name}: provider ensemble needs an 'ensemble' section")
    dirs = []
    for member in config.ensemble.members:
        path = Path(member) if "/" in member else Path(config.runs_dir) / member
        dirs.append(RunDir(path))
    return dirs


def checked_members(config: ExperimentConfig) -> list[tuple[RunDir, ExperimentConfig]]:
    """Every member with its config; refuses members of another provider or task."""
    out = []
    for member in member_dirs(config):
        member_config = member.load_config()
        if not get_provider(member_config.provider).ensemble_member:
            raise TunebenchError(
                f"ensemble member {member.root}: provider '{member_config.provider}'; members must be "
                f"{' or '.join(MEMBER_PROVIDERS)} runs"
            )
        if member_config.task.name != config.task.name:
            raise TunebenchError(
                f"ensemble member {member.root}: task '{member_config.task.name}', the ensemble's is "
                f"'{config.task.name}'"
            )
        out.append((member, member_config))
    return out


def _digest(parts: list[tuple[str, Any]]) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _predictions_digest(members: list[RunDir], split: str) -> str | None:
    """A digest of what the vote reads from the members' ``split`` predictions: each row's id,
    gold and candidates (not the prompt or raw text a slimmed copy drops), member by member (by
    folder name: a study moved elsewhere is the same study). None when a member's folder or file
    is gone (a finished ensemble is then left as it is)."""
    parts: list[tuple[str, Any]] = []
    for member in members:
        path = member.predictions(split)
        if not path.is_file():
            return None
        rows = [(r["id"], r.get("gold"), candidates_of(r)) for r in read_jsonl(path, required=("id",))]
        parts.append((member.root.name, rows))
    return _digest(parts)


def _training_digest(members: list[RunDir]) -> str | None:
    """A digest of the members' train_summary.json and cost.json contents (None when a member's
    folder is gone)."""
    parts: list[tuple[str, Any]] = []
    for member in members:
        if not member.root.is_dir():
            return None
        for path in (member.train_summary, member.cost_path):
            parts.append((f"{member.root.name}/{path.name}", read_json(path) if path.is_file() else None))
    return _digest(parts)


def forget_stale(config: ExperimentConfig, run: RunDir) -> list[str]:
    """Drop the ensemble's finished stages whose member inputs changed since; returns them.
    Stages whose members cannot be read any more (moved, deleted) are kept."""
    members = member_dirs(config)
    stages = run.manifest().get("stages", {})
    stale: list[str] = []

    def changed(info: dict[str, Any] | None, current: str | None) -> bool:
        return info is not None and current is not None and info.get("members_digest") not in (None, current)

    if changed(stages.get("train"), _training_digest(members)):
        stale += ["train", "cost"]
    for split in config.eval_splits:
        if changed(stages.get(f"predict:{split}"), _predictions_digest(members, split)):
            stale += [f"predict:{split}", f"evaluate:{split}", "cost"]
    stale = [s for s in dict.fromkeys(stale) if s in stages]
    if stale:
        run.forget_stages(stale)
    return stale


# --- pooling and voting ---------------------------------------------------------------------
def _member_rows(member: RunDir, split: str, examples: list[Example]) -> list[dict[str, Any]]:
    path = member.predictions(split)
    if not path.is_file():
        raise TunebenchError(
            f"ensemble member {member.root}: no predictions for the {split} split ({path}); "
            "run that member first (a study runs its ensembles after their members)"
        )
    rows = {r["id"]: r for r in read_jsonl(path, required=("id", "prediction"))}
    missing = [ex.id for ex in examples if ex.id not in rows]
    if missing or len(rows) != len(examples):
        detail = (
            f"first missing: {missing[0]}" if missing else f"{len(rows)} rows for {len(examples)} examples"
        )
        raise TunebenchError(
            f"ensemble member {member.root}: its {split} predictions are not the ensemble's "
            f"{len(examples)} examples ({detail}); members must predict exactly the same examples"
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


def pool_rows(
    per_member: list[list[dict[str, Any]]], examples: list[Example], task: Task
) -> list[dict[str, Any]]:
    """One row per example: the example's own fields and every member's candidates in member order.

    ``per_member[m][k]`` is member m's row for example k. ``member_candidates`` records how
    many candidates each member gave, so a chosen index maps back to its member.
    """
    pooled = []
    for example, rows in zip(examples, zip(*per_member, strict=True), strict=True):
        lists = [candidates_of(r) for r in rows]
        candidates = [c for cands in lists for c in cands]
        pooled.append(
            {
                "id": example.id,
                "prediction": candidates[0],
                "gold": example.completion,
                **task.eval_fields(example),
                "candidates": candidates,
                "member_candidates": [len(c) for c in lists],
                "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in rows),
                "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in rows),
            }
        )
    return pooled


def majority_row(row: dict[str, Any], task: Task) -> dict[str, Any]:
    """The answer most candidates give becomes the prediction (its earliest candidate); ties go to
    the answer given first. Candidates that are no answer (``vote_key`` None) get no vote; when
    none is an answer, candidate 0 stays."""
    candidates = row["candidates"]
    keys = [task.vote_key(c) for c in candidates]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return {**row, "prediction": candidates[0], "selection": {"chosen": 0, "groups": [], "executable": 0}}
    best = max(counts.values())
    chosen = next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)
    return {
        **row,
        "prediction": candidates[chosen],
        "selection": {"chosen": chosen, "groups": list(counts.values()), "executable": sum(counts.values())},
    }


def vote_rows(config: ExperimentConfig, task: Task, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's vote over the pooled candidates: by execution, or the most common answer."""
    if task.vote_selection != "execution_vote":
        fewest = min((len(r["candidates"]) for r in rows), default=MAJORITY_MIN)
        if fewest < MAJORITY_MIN:
            raise TunebenchError(
                f"{config.name}: a majority vote needs at least {MAJORITY_MIN} candidates per example and "
                f"the members give {fewest}; add members (or members with several candidates)"
            )
        return [majority_row(r, task) for r in rows]
    from tunebench.inference.select import select_by_execution

    gen = config.generation
    return select_by_execution(
        rows,
        suite_size=gen.vote_suite_size,
        seed=config.sampling_seed,
        timeout_s=gen.vote_timeout_s,
        budget_s=gen.vote_budget_s,
    )


def _summed_stage(members: list[RunDir], stage: str) -> dict[str, Any]:
    """The members' ``stage`` infos added up (GPU wall time) with their hardware."""
    infos = [m.manifest().get("stages", {}).get(stage) or {} for m in members]
    gpus = [i.get("gpu_type") for i in infos if i.get("gpu_type")]
    reused = [
        f"{m.root.name}: {i['reused_from']}"
        for m, i in zip(members, infos, strict=True)
        if i.get("reused_from")
    ]
    out: dict[str, Any] = {
        "wall_time_s": _total(infos, "wall_time_s", 3),
        "gpu_type": gpus[0] if gpus else None,
        "gpu_count": max((int(i.get("gpu_count") or 1) for i in infos), default=1),
    }
    if reused:
        out["members_reused_from"] = reused
    return out


def predict_ensemble(config: ExperimentConfig, run: RunDir, split: str, examples: list[Example]) -> Path:
    """Pool the members' predictions of ``split`` and vote; writes ``run.predictions(split)``."""
    members = [m for m, _ in checked_members(config)]
    task = get_task(config.task)
    per_member = [_member_rows(m, split, examples) for m in members]
    digest = _predictions_digest(members, split)
    start = time.perf_counter()
    voted = vote_rows(config, task, pool_rows(per_member, examples, task))
    vote_s = time.perf_counter() - start
    final = run.predictions(split)
    write_jsonl(final, voted)
    summed = _summed_stage(members, f"predict:{split}")
    wall = summed["wall_time_s"]
    run.record_stage(
        f"predict:{split}",
        provider="ensemble",
        members=[str(m.root) for m in members],
        members_digest=digest,
        n=len(voted),
        **summed,  # the members' generation time: the ensemble's
        predictions_per_s=round(len(voted) / wall, 3) if wall else None,
        vote_s=round(vote_s, 3),  # CPU work, not priced
        selection=task.vote_selection,
        selection_changed=sum(1 for r in voted if r["selection"]["chosen"] != 0),
        prompt_tokens=sum(r["prompt_tokens"] for r in voted),
        completion_tokens=sum(r["completion_tokens"] for r in voted),
    )
    return final


def train_ensemble(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """Nothing to train: the trained members' summaries, added up, become this run's summary
    (none when no member trained, as for a base run)."""
    pairs = checked_members(config)
    trained = [m for m, c in pairs if get_provider(c.provider).trains]
    summaries = []
    for member in trained:
        if not member.train_summary.is_file():
            raise TunebenchError(
                f"ensemble member {member.root}: not trained ({member.train_summary} missing); "
                "run that member first"
            )
        summaries.append(read_json(member.train_summary))
    summary: dict[str, Any] = {}
    if summaries:
        choice = [
            float(m.manifest().get("stages", {}).get("choose", {}).get("gpu_time_s") or 0.0) for m in trained
        ]
        gpus = [s.get("gpu_type") for s in summaries if s.get("gpu_type")]
        summary = {
            "provider": "ensemble",
            "members": [str(m.root) for m, _ in pairs],
            "wall_time_s": _total(summaries, "wall_time_s", 3),
            "checkpoint_choice_s": round(sum(choice), 3),
            "gpu_type": gpus[0] if gpus else None,
            "gpu_count": max((int(s.get("gpu_count") or 1) for s in summaries), default=1),
            "train_tokens": sum(int(s.get("train_tokens") or 0) for s in summaries),
        }
        write_json(run.train_summary, summary)
    run.record_stage("train", members_digest=_training_digest([m for m, _ in pairs]))
    return summary


# --- cost -------------------------------------------------------------------------------------
def _total(parts: list[dict[str, Any]], key: str, digits: int = 6) -> float | None:
    """``key`` added up over ``parts``; None when any part lacks it."""
    values = [p.get(key) for p in parts]
    return None if any(v is None for v in values) else round(sum(values), digits)


def ensemble_cost(config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """The members' ``cost.json`` records added up: training, and each split's predictions (the
    vote is CPU work and not priced). Each member is priced as its own cost.json priced it."""
    from tunebench.cost import per_1k

    members = [m for m, _ in checked_members(config)]
    records = []
    for member in members:
        if not member.cost_path.is_file():
            raise TunebenchError(f"ensemble member {member.root}: not finished ({member.cost_path} missing)")
        records.append(read_json(member.cost_path))
    trained = [r["training"] for r in records if r.get("training")]
    training = None
    if trained:
        training = {
            key: _total(trained, key)
            for key in ("wall_time_s", "checkpoint_choice_s", "gpu_hours", "cost_usd", "a40_conversion_usd")
        }
        training["gpu_type"] = trained[0].get("gpu_type")
    inference: dict[str, Any] = {}
    stages = run.manifest().get("stages", {})
    for split in config.eval_splits:
        info = stages.get(f"predict:{split}")
        if info is None:
            continue
        parts = [(r.get("inference") or {}).get(split) for r in records]
        missing = [str(m.root) for m, p in zip(members, parts, strict=True) if p is None]
        if missing:
            raise TunebenchError(
                f"ensemble member {missing[0]}: its cost.json prices no {split} predictions; "
                "rerun that member (its cost stage) first"
            )
        n = info.get("n")
        usd, a40 = _total(parts, "cost_usd"), _total(parts, "a40_conversion_usd")
        inference[split] = {
            "wall_time_s": _total(parts, "wall_time_s"),
            "n": n,
            "predictions_per_s": info.get("predictions_per_s"),
            "gpu_type": info.get("gpu_type"),
            "gpu_count": info.get("gpu_count"),
            "prompt_tokens": info.get("prompt_tokens"),
            "completion_tokens": info.get("completion_tokens"),
            "cost_usd": usd,
            "cost_per_1k_predictions": per_1k(usd, n),
            "a40_conversion_usd": a40,
            "a40_conversion_per_1k_predictions": per_1k(a40, n),
            "vote_s": info.get("vote_s"),
            **({"note": _reuse_note(info)} if info.get("members_reused_from") else {}),
        }
    prices = [r.get("price") for r in records if r.get("price")]
    same = all(p == prices[0] for p in prices)
    return {
        "members": [str(m) for m in (config.ensemble.members if config.ensemble else [])],
        "price": prices[0] if prices and same else None,  # each member is priced in its own record
        **({} if same else {"note": "members priced at different hourly rates: see their cost.json"}),
        "a40_price": next((r["a40_price"] for r in records if r.get("a40_price")), None),
        "training": training,
        "training_cost_usd": training["cost_usd"] if training else 0.0,
        "inference": inference,
    }


def _reuse_note(info: dict[str, Any]) -> str:
    reused = info["members_reused_from"]
    return (
        f"members predicted this split while choosing their checkpoints ({'; '.join(reused)}): that time "
        "is also in their training"
    )


class EnsembleProvider(Provider):
    name = "ensemble"
    trains = True  # its train stage records the members' training as its own
    needs_other_runs = True

    def before_stages(self, config: ExperimentConfig, run: RunDir) -> None:
        forget_stale(config, run)  # a member trained or predicted again: vote again

    def train(
        self, config: ExperimentConfig, run: RunDir, resume: bool = True, yes: bool = False
    ) -> dict[str, Any]:
        return train_ensemble(config, run)

    def predict(self, config: ExperimentConfig, run: RunDir, split: str) -> Path:
        _, examples = self.task_and_examples(config, run, split)
        return predict_ensemble(config, run, split, examples)

    def cost(self, config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
        return ensemble_cost(config, run)


PROVIDER = EnsembleProvider()
