"""Turn collected runs into report blocks, section by section."""

from __future__ import annotations

from itertools import combinations
from typing import Any

from tunebench.config import OpenAIConfig
from tunebench.providers import get_provider
from tunebench.report import plots
from tunebench.report.collect import RunInfo, StudyData
from tunebench.report.doc import Block, Code, Comparison, Heading, Image, Para, Table
from tunebench.report.stats import (
    PERMUTATION_RESAMPLES,
    PERMUTATION_SEED,
    holm,
    is_binary,
    mcnemar_exact,
    paired_permutation_test,
    scores_of,
)
from tunebench.tasks.base import ErrorBreakdown, Task, binary_verdicts


# --- formatting: one function per kind of number, so tests can parse them back -------------
def fmt_metric(value: float | None, ci: list[float] | None = None) -> str:
    """``0.6500 [0.5200, 0.7800]`` (4 decimals, the metrics file's value rounded)."""
    if value is None:
        return "–"
    text = f"{value:.4f}"
    return f"{text} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else text


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "–"
    return f"${value:.2f}" if abs(value) >= 1 else f"${value:.4g}"


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def short(text: Any, limit: int = 160) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- sections -------------------------------------------------------------------------------
def build_blocks(data: StudyData) -> list[Block]:
    blocks: list[Block] = [Heading(f"tunebench report: {data.title}", 1)]
    if data.description:
        blocks.append(Para(data.description.strip()))
    blocks.append(
        Para(
            f"Source: `{data.source}`. {len(data.runs)} runs: systems {', '.join(data.systems)}; "
            f"tasks {', '.join(data.tasks)}.",
            note=True,
        )
    )
    blocks.append(systems_table(data))
    for section in (
        results_section,
        significance_section,
        cost_section,
        break_even_section,
        curves_section,
        errors_section,
        wrong_section,
        comparison_section,
        provenance_section,
    ):
        blocks += section(data)
    return blocks


def systems_table(data: StudyData) -> Table:
    """Each system once: its provider and the study's one-line description of it."""
    first = {}
    for run in data.runs:
        first.setdefault(run.system, run)
    rows = [[name, run.provider, short(run.description or "–", 240)] for name, run in first.items()]
    return Table(["system", "provider", "description"], rows)


def metric_names(data: StudyData, task: str) -> list[str]:
    runs = data.runs_of(task)
    split = data.splits_of(task)[0] if data.splits_of(task) else None
    if split is None:
        return []
    names = runs[0].task_def.headline_metrics()
    return [m for m in names if any(r.metrics[split].get(m) is not None for r in runs)]


def results_section(data: StudyData) -> list[Block]:
    blocks: list[Block] = [
        Heading("Results"),
        Para(
            "Values are the scorers' metrics.json; brackets are 95% bootstrap confidence intervals "
            "over examples (2,000 resamples).",
            note=True,
        ),
    ]
    groups: list[str] = []
    series: dict[str, list[float | None]] = {s: [] for s in data.systems}
    errors: dict[str, list[tuple[float, float] | None]] = {s: [] for s in data.systems}
    for task in data.tasks:
        for split in data.splits_of(task):
            names = metric_names(data, task)
            blocks.append(Heading(f"{task} ({split})", 3))
            rows = []
            for run in data.runs_of(task):
                m = run.metrics[split]
                rows.append(
                    [
                        run.system,
                        str(m.get("n", "–")),
                        *(fmt_metric(m.get(k), m.get(f"{k}_ci95")) for k in names),
                    ]
                )
            blocks.append(Table(["system", "n", *names], rows, numeric=set(range(1, len(names) + 2))))
            if split != data.splits_of(task)[0]:
                continue
            by_system = {r.system: r.metrics[split] for r in data.runs_of(task)}
            for k in names:
                groups.append(f"{task}\n{k}")
                for s in data.systems:
                    m = by_system.get(s, {})
                    series[s].append(m.get(k))
                    ci = m.get(f"{k}_ci95")
                    errors[s].append(tuple(ci) if ci else None)
    if groups:
        png = plots.grouped_bars("Accuracy (95% CI)", "score", groups, series, errors)
        blocks.append(Image("accuracy.png", "accuracy by task, metric and system", png))
    return blocks


def verdicts(run: RunInfo, split: str, key: str) -> dict[str, bool | None] | None:
    return binary_verdicts(run.per_example[split], key)


def significance_section(data: StudyData) -> list[Block]:
    tables = significance_tables(data)
    if not tables:
        single = all(len(data.runs_of(task)) < 2 for task in data.tasks)
        why = (
            "Nothing to pair: each task has one system."
            if single
            else "No two systems of a task have per-example scores on the same examples."
        )
        return [Heading("Paired significance"), Para(why, note=True)]
    return [
        Heading("Paired significance"),
        Para(
            "Each pair of systems on the same examples, from their per-example scores "
            "(per_example.jsonl). Right/wrong verdicts: McNemar's exact test, b = only the first "
            "system right, c = only the second; two-sided p = min(1, 2·P(X ≤ min(b, c))), "
            "X ~ Binomial(b + c, ½). Continuous scores (F1 and the like): a paired sign-flip "
            f"permutation test of the mean difference ({PERMUTATION_RESAMPLES:,} resamples, seed "
            f"{PERMUTATION_SEED}). Examples without a score in either run are left out. Holm's "
            f"correction over the pairs of each table; significant at α = {data.alpha}.",
            note=True,
        ),
        *tables,
    ]


BINARY_HEADER = ["system A", "system B", "n", "b (only A right)", "c (only B right)"]
CONTINUOUS_HEADER = ["system A", "system B", "n", "mean A", "mean B", "mean A − B"]


def significance_tables(data: StudyData) -> list[Block]:
    """A heading and a table per task, split and paired score that has pairs to test."""
    blocks: list[Block] = []
    for task in data.tasks:
        runs = data.runs_of(task)
        if len(runs) < 2:
            continue
        for split in data.splits_of(task):
            for metric, key in runs[0].task_def.paired_verdicts().items():
                tests, binary = pair_tests(runs, split, key)
                if not tests:
                    continue
                adjusted = holm([t["p_value"] for t in tests])
                rows = [
                    [t["first"], t["second"], str(t["n"]), *pair_cells(t, binary), fmt_p(t["p_value"]),
                     fmt_p(adj), "yes" if adj < data.alpha else "no"]
                    for t, adj in zip(tests, adjusted, strict=True)
                ]  # fmt: skip
                header = [*(BINARY_HEADER if binary else CONTINUOUS_HEADER), "p", "p (Holm)", "significant"]
                blocks.append(Heading(f"{task} ({split}): {metric}", 3))
                blocks.append(Table(header, rows, numeric=set(range(2, len(header) - 1))))
    return blocks


def pair_cells(test: dict[str, Any], binary: bool) -> list[str]:
    """McNemar's discordant counts, or the permutation test's means and mean difference."""
    if binary:
        return [str(test["only_first"]), str(test["only_second"])]
    return [
        fmt_metric(test["mean_first"]),
        fmt_metric(test["mean_second"]),
        fmt_signed(test["mean_difference"]),
    ]


def fmt_signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def pair_tests(runs: list[RunInfo], split: str, key: str) -> tuple[list[dict[str, Any]], bool]:
    """Every pair of runs with ``key`` scores on the same examples, tested; and whether the scores
    are binary (McNemar) rather than continuous (permutation test) in every run of the table."""
    scores = {r.system: scores_of(r.per_example[split], key) for r in runs}
    known = {system: s for system, s in scores.items() if s is not None}
    binary = all(is_binary(list(s.values())) for s in known.values())
    out = []
    for a, b in combinations(runs, 2):
        sa, sb = known.get(a.system), known.get(b.system)
        if sa is None or sb is None or set(sa) != set(sb):
            continue  # paired tests need the same examples (validation splits may differ by design)
        ids = sorted(sa)
        first, second = [sa[i] for i in ids], [sb[i] for i in ids]
        test = mcnemar_exact(first, second) if binary else paired_permutation_test(first, second)
        out.append({"first": a.system, "second": b.system, **test})
    return out, binary


def hardware(run: RunInfo) -> str:
    source = run.summary or {}
    if not source.get("gpu_type"):
        stages = run.manifest.get("stages", {})
        source = next((v for k, v in stages.items() if k.startswith("predict:") and v.get("gpu_type")), {})
    elsewhere = get_provider(run.provider).runs_on
    if elsewhere:
        return elsewhere
    gpu = source.get("gpu_type") or "?"
    count = source.get("gpu_count") or 1
    return f"{count}× {gpu}" if gpu != "cpu" else "cpu"


def cost_rows(run: RunInfo) -> list[str]:
    cost = run.cost or {}
    summary = run.summary or {}
    price = cost.get("price")
    price_text = f"${price['price_per_hour']}/h ({price.get('date') or 'undated'})" if price else "–"
    split_cost = {}
    if get_provider(run.provider).priced_by == "tokens":
        oa = cost.get("openai", {})
        price_text = "per token ({})".format(oa.get("price", {}).get("date") or "undated") if oa else "–"
        split_cost = next(iter(oa.get("inference", {}).values()), {})
        a40 = "n/a"
    else:
        split_cost = next(iter((cost.get("inference") or {}).values()), {})
        training = cost.get("training") or {}
        a40 = fmt_usd(training.get("a40_conversion_usd")) if training else "$0"
    train_wall = summary.get("wall_time_s")
    return [
        run.system,
        run.provider,
        hardware(run),
        fmt_num(train_wall / 60 if train_wall is not None else None, 2),
        steps_cell(summary),
        fmt_num(summary.get("train_tokens") or summary.get("trained_tokens"), 0),
        fmt_usd(cost.get("training_cost_usd")),
        price_text,
        a40,
        fmt_num(split_cost.get("predictions_per_s"), 2),
        fmt_usd(split_cost.get("cost_per_1k_predictions")),
    ]


def steps_cell(summary: dict[str, Any]) -> str:
    """Steps trained, and which step's adapter the run kept (and by what) when it is not the last."""
    steps = summary.get("steps")
    if steps is None:
        return "–"
    kept = summary.get("chosen_step", summary.get("best_step"))
    if summary.get("provider") != "local" or kept is None or kept == steps:
        return str(steps)
    how = summary.get("chosen_by", "validation loss")
    return f"{steps} (adapter: step {kept}, by {how})"


def cost_section(data: StudyData) -> list[Block]:
    from tunebench.cost import CONVERSION_LABEL, STUDY_REFERENCE

    chose = any(((r.cost or {}).get("training") or {}).get("checkpoint_choice_s") for r in data.runs)
    choice = (
        ", plus the checkpoint choice's validation predictions where the adapter was chosen by the task metric"
        if chose
        else ""
    )
    blocks: list[Block] = [
        Heading("Training cost and time"),
        Para(
            f"Self-hosted: $/GPU-hour × measured wall time × GPU count (training from train_summary.json{choice}; "
            "inference from the manifest's predict stage). OpenAI: trained tokens × training price, "
            f"prediction tokens × input/output prices. 'A40 conversion' is a {CONVERSION_LABEL}.",
            note=True,
        ),
    ]
    header = [
        "system", "provider", "hardware", "train min", "steps", "train tokens", "training cost",
        "price", "A40 conversion", "predictions/s", "$ per 1k predictions",
    ]  # fmt: skip
    groups: list[str] = []
    series: dict[str, list[float | None]] = {s: [] for s in data.systems}
    for task in data.tasks:
        runs = data.runs_of(task)
        blocks.append(Heading(task, 3))
        rows = [cost_rows(r) for r in runs]
        if data.reference:
            for ref in STUDY_REFERENCE:
                if ref["task"] == runs[0].task_name:
                    hours = ref["hours"]
                    rows.append(
                        [ref["system"] + " (quoted, not measured)", "reference", "1× A40" if hours else "OpenAI",
                         fmt_num(hours * 60 if hours else None, 2), "–", "–", fmt_usd(ref["training_cost_usd"]),
                         "$0.475/h" if hours else "per token", "–", "–", "–"]
                    )  # fmt: skip
        blocks.append(Table(header, rows, numeric={3, 4, 5, 6, 9, 10}))
        groups.append(task)
        by_system = {r.system: (r.cost or {}).get("training_cost_usd") for r in runs}
        for s in data.systems:
            series[s].append(by_system.get(s))
    if not any(v for values in series.values() for v in values):
        why = "No training-cost chart: no system of this report has a training cost above $0."
        return [*blocks, Para(why, note=True)]
    png = plots.grouped_bars("Training cost (measured)", "USD", groups, series)
    blocks.append(Image("training_cost.png", "training cost by task and system", png))
    return blocks


def api_per_query(run: RunInfo, split: str) -> tuple[float, str] | None:
    inference = ((run.cost or {}).get("openai") or {}).get("inference", {}).get(split)
    if not inference or not inference.get("n"):
        return None
    return inference["cost_usd"] / inference["n"], f"{run.system} (OpenAI, measured tokens/query)"


def reference_api(run: RunInfo, split: str) -> tuple[float, str] | None:
    """The fine-tuned GPT-3.5 per-token price with this run's own measured tokens per query."""
    from tunebench.cost import openai_model_price

    if get_provider(run.provider).priced_by != "gpu":
        return None
    info = run.manifest.get("stages", {}).get(f"predict:{split}", {})
    n, pt, ct = info.get("n"), info.get("prompt_tokens"), info.get("completion_tokens")
    if not n or pt is None or ct is None:
        return None
    price = openai_model_price(run.config)
    model = (getattr(run.config, "openai", None) or OpenAIConfig()).model
    per_query = (pt * price.input + ct * price.output) / 1e6 / n
    return per_query, f"{model} prices × {run.system}'s tokens/query"


def break_even_section(data: StudyData) -> list[Block]:
    from tunebench.cost import break_even

    blocks: list[Block] = [
        Heading("Deployment break-even"),
        Para(
            "Monthly queries above which self-hosting (one deployment running 24/7, 730 h/month, at its "
            "$/h, with the measured throughput; more deployments past its capacity) is cheaper than "
            "paying an API per token. API cost per query: an OpenAI system of the same task "
            "(its measured tokens), else the fine-tuned GPT-3.5 prices applied to the self-hosted "
            "run's own token counts (a different tokenizer: an approximation). CPU runs without a "
            "CPU price use the A40 price conversion with the CPU throughput, labelled as such.",
            note=True,
        ),
    ]
    rows, lines = [], []
    for task in data.tasks:
        runs = data.runs_of(task)
        split = data.splits_of(task)[0] if data.splits_of(task) else None
        if split is None:
            continue
        apis = [
            a
            for a in (api_per_query(r, split) for r in runs if get_provider(r.provider).priced_by == "tokens")
            if a
        ]
        for run in runs:
            if get_provider(run.provider).priced_by != "gpu" or not run.cost:
                continue
            inference = (run.cost.get("inference") or {}).get(split) or {}
            throughput = inference.get("predictions_per_s")
            price = run.cost.get("price")
            label = "measured price"
            if price is None:
                price, label = run.cost.get("a40_price"), "A40 price conversion"
            if not throughput or not price:
                continue
            comparators = apis or [a for a in [reference_api(run, split)] if a]
            count = int(inference.get("gpu_count") or 1)
            for per_query, api_label in comparators:
                be = break_even(price["price_per_hour"], count, throughput, per_query)
                volume = be["queries_per_month"]
                rows.append(
                    [task, run.system, f"${price['price_per_hour']}/h ({label})", fmt_num(throughput, 2),
                     fmt_usd(be["monthly_self_hosted_usd"]), api_label, f"${per_query:.3g}",
                     fmt_num(volume, 0) if volume is not None else "never (API cheaper at full load)"]
                )  # fmt: skip
                name = f"{task}: {run.system}"
                lines.append(
                    {"label": f"{name} (self-hosted)", "kind": "self", "monthly": be["monthly_self_hosted_usd"],
                     "capacity": be["capacity_queries_per_month"], "break_even": volume,
                     "break_even_cost": be["monthly_self_hosted_usd"]}
                )  # fmt: skip
            for per_query, api_label in comparators:
                if not any(ln["label"] == f"{task}: {api_label}" for ln in lines):
                    lines.append({"label": f"{task}: {api_label}", "kind": "api", "per_query": per_query})
    if not rows:
        return [*blocks, Para("No self-hosted run with a measured throughput and a price.", note=True)]
    header = [
        "task",
        "self-hosted system",
        "hardware price",
        "predictions/s",
        "$/month (24/7)",
        "API",
        "API $/query",
        "break-even queries/month",
    ]
    blocks.append(Table(header, rows, numeric={3, 4, 6, 7}))
    blocks.append(
        Image(
            "break_even.png",
            "monthly cost against monthly queries",
            plots.break_even_plot("Self-hosted vs API", lines),
        )
    )
    return blocks


def curves_section(data: StudyData) -> list[Block]:
    blocks: list[Block] = [Heading("Loss curves")]
    for task in data.tasks:
        curves = {r.system: r.curve for r in data.runs_of(task) if r.curve}
        if not curves:
            blocks.append(Para(f"{task}: no system logged a loss curve.", note=True))
            continue
        png = plots.loss_curves(f"{task}: loss (dashed: train, solid: validation)", curves)
        blocks.append(Image(f"loss_{task}.png", f"{task} training and validation loss", png))
        rows = []
        for system, curve in curves.items():
            val = [r for r in curve if r.get("split") == "validation"]
            best = min(val, key=lambda r: r["loss"]) if val else None
            rows.append(
                [system, str(len([r for r in curve if r.get("split") == "train"])), str(len(val)),
                 fmt_num(best["loss"], 4) if best else "–", str(best["step"]) if best else "–"]
            )  # fmt: skip
        blocks.append(
            Table(
                ["system", "train logs", "validation logs", "best validation loss", "at step"],
                rows,
                numeric={1, 2, 3, 4},
            )
        )
    return blocks


def errors_section(data: StudyData) -> list[Block]:
    blocks: list[Block] = []
    for task in data.tasks:
        runs = data.runs_of(task)
        splits = data.splits_of(task)
        if not splits:
            continue
        for breakdown in runs[0].task_def.error_breakdown(splits[0], runs):
            blocks += breakdown_blocks(f"{task} ({splits[0]})", breakdown)
        blocks += remaining_errors(task, runs, splits[0])
    if not blocks:
        return [Heading("Error analysis"), Para("No task of this report breaks its errors down.", note=True)]
    return [Heading("Error analysis"), *blocks]


def best_run(runs: list[RunInfo], split: str) -> tuple[RunInfo, str, float] | None:
    """The run with the best headline metric on ``split`` (the first of equals), with the metric."""
    best = None
    for run in runs:
        name, value = run.task_def.headline_metric(run.metrics[split])
        if value is not None and (best is None or value > best[2]):
            best = (run, name, value)
    return best


def remaining_errors(task: str, runs: list[RunInfo], split: str) -> list[Block]:
    """The best system's wrong predictions, classified by its task: categories with counts and
    examples, and how many are the model's and how many the benchmark's."""
    best = best_run(runs, split)
    if best is None:
        return []
    run, metric, value = best
    analysis = run.task_def.error_analysis(split, run)
    if analysis is None:
        return []
    blocks: list[Block] = [Heading(f"{task} ({split}): remaining errors of {run.system}", 3)]
    said = f"{run.system} has the best {metric} on {split} ({value:.4f})."
    if analysis.empty:
        return [*blocks, Para(f"{said} {analysis.empty}", note=True)]
    blocks.append(
        Para(
            f"{said} {analysis.wrong} of its {analysis.scored} scored examples are wrong by "
            f"{analysis.wrong_by}, each in the first category that applies. Benchmark categories "
            "blame the example (its gold or its schema), not the model; unclassified errors count as "
            "the model's.",
            note=True,
        )
    )

    def share(count: int) -> str:
        return f"{count / analysis.wrong:.1%}" if analysis.wrong else "–"

    rows = [
        [c.name, "benchmark" if c.benchmark else "model", str(c.count), share(c.count)]
        for c in analysis.categories
    ]
    blocks.append(Table(["category", "blamed on", "wrong", "share"], rows, numeric={2, 3}))
    split_rows = [
        ["model", str(analysis.model), share(analysis.model)],
        ["benchmark", str(analysis.benchmark), share(analysis.benchmark)],
        ["all wrong", str(analysis.wrong), share(analysis.wrong)],
    ]
    blocks.append(Table(["blamed on", "wrong", "share"], split_rows, numeric={1, 2}))
    examples = [
        [
            c.name,
            e.id,
            short(e.input),
            short(e.prediction),
            short(e.gold),
            short("; ".join(e.differences) or "–"),
        ]
        for c in analysis.categories
        for e in c.examples
    ]
    if examples:
        blocks.append(Para("Up to three examples of each category:", note=True))
        blocks.append(Table(["category", "id", "input", "prediction", "gold", "differences"], examples))
    return blocks


def breakdown_blocks(where: str, breakdown: ErrorBreakdown) -> list[Block]:
    """A task's error breakdown laid out: its title, note, then each table (or why there is none)."""
    blocks: list[Block] = [Heading(f"{where}: {breakdown.title}", 3)]
    if breakdown.note:
        blocks.append(Para(breakdown.note, note=True))
    if not breakdown.tables and breakdown.empty:
        blocks.append(Para(breakdown.empty, note=True))
    for table in breakdown.tables:
        if table.note:
            blocks.append(Para(table.note, note=True))
        blocks.append(Table(table.header, table.rows, numeric=set(table.numeric)))
    return blocks


def wrong_section(data: StudyData) -> list[Block]:
    if data.wrong_examples == 0:
        return []
    blocks = wrong_tables(data)
    if not blocks:
        why = "No run has a per-example right/wrong verdict to pick wrong predictions by."
        return [Heading("Wrong predictions"), Para(why, note=True)]
    return [Heading("Wrong predictions"), *blocks]


def wrong_tables(data: StudyData) -> list[Block]:
    """Per task and run: the first wrong predictions (by its verdict) beside the gold."""
    blocks: list[Block] = []
    for task in data.tasks:
        splits = data.splits_of(task)
        if not splits:
            continue
        split = splits[0]
        for run in data.runs_of(task):
            key = run.task_def.verdict_key(run.per_example[split])
            verdict = verdicts(run, split, key) if key else None
            if verdict is None:
                continue
            wrong = [p for p in run.predictions[split] if verdict.get(p["id"]) is False][
                : data.wrong_examples
            ]
            blocks.append(Heading(f"{task} ({split}): {run.system}, wrong by {key}", 3))
            if not wrong:
                blocks.append(Para("None.", note=True))
                continue
            rows = [
                [p["id"], short(example_input(run.task_def, p)[1]), short(p["prediction"]), short(p["gold"])]
                for p in wrong
            ]
            blocks.append(Table(["id", example_input(run.task_def, wrong[0])[0], "prediction", "gold"], rows))
    return blocks


# Long inputs (a whole prompt, where a task names no input field) and outputs are cut in the comparison.
COMPARISON_INPUT_CHARS = 600
COMPARISON_OUTPUT_CHARS = 1000


def comparison_section(data: StudyData) -> list[Block]:
    """Per task (its first split): every example's input, gold and each system's output."""
    blocks: list[Block] = [Heading("Per-example comparison")]
    for task in data.tasks:
        splits = data.splits_of(task)
        if splits:
            blocks += [Heading(f"{task} ({splits[0]})", 3), comparison(data.runs_of(task), splits[0])]
    if len(blocks) == 1:
        return []
    return blocks


def comparison(runs: list[RunInfo], split: str) -> Comparison:
    """Examples in the first run's order; each output marked right or wrong by its run's verdict."""
    by_run = [{p["id"]: p for p in run.predictions[split]} for run in runs]
    judged = []
    for run in runs:
        key = run.task_def.verdict_key(run.per_example[split])
        judged.append((verdicts(run, split, key) if key else None) or {})
    order = [p["id"] for p in runs[0].predictions[split]]
    label = example_input(runs[0].task_def, runs[0].predictions[split][0])[0] if order else "input"
    rows, disagree, marks = [], [], []
    for id_ in order:
        first = by_run[0][id_]
        outputs = [str(rows_of.get(id_, {}).get("prediction") or "") for rows_of in by_run]
        rows.append(
            [id_, short(example_input(runs[0].task_def, first)[1], COMPARISON_INPUT_CHARS),
             short(first["gold"], COMPARISON_OUTPUT_CHARS), *(short(o, COMPARISON_OUTPUT_CHARS) for o in outputs)]
        )  # fmt: skip
        disagree.append(len({" ".join(o.split()) for o in outputs}) > 1)
        marks.append([None, None, None, *(v.get(id_) for v in judged)])
    systems = [run.system for run in runs]
    differ = (
        f" ({sum(disagree)} where the systems' outputs differ, whitespace aside)" if len(runs) > 1 else ""
    )
    pointer = (
        f"{len(rows)} examples{differ}: each input, gold and output of {', '.join(systems)} side by side, "
        "with a search box and a filter, in report.html."
    )
    return Comparison(["id", label, "gold", *systems], rows, disagree, marks, pointer)


def example_input(task: Task, row: dict[str, Any]) -> tuple[str, str]:
    """(label, text) of what the model was asked: the first of the task's ``input_fields`` the
    prediction row holds, else the prompt itself."""
    field = next((f for f in task.input_fields if row.get(f) not in (None, "")), None)
    if field is None:
        return "prompt", str(row.get("prompt") or "")
    return field, str(row[field])


def provenance_section(data: StudyData) -> list[Block]:
    blocks: list[Block] = [Heading("What produced this report")]
    rows = []
    for run in data.runs:
        env = run.manifest.get("environment", {})
        versions = env.get("versions", {})
        rows.append(
            [run.name, str(env.get("git_commit") or "–")[:12], env.get("python", "–"), env.get("platform", "–"),
             ", ".join(f"{k} {v}" for k, v in versions.items() if v), str(env.get("gpu") or "none")]
        )  # fmt: skip
    blocks.append(Table(["run", "commit", "python", "platform", "versions", "GPU"], rows))
    if data.study_text:
        blocks.append(Code(data.study_text, f"study config ({data.source})"))
    import yaml

    for run in data.runs:
        text = run.run.config_path.read_text(encoding="utf-8")
        env = yaml.safe_dump(run.manifest.get("environment", {}), sort_keys=False)
        blocks.append(Code(text, f"{run.name}: config.yaml"))
        blocks.append(Code(env, f"{run.name}: environment (manifest.json)"))
    return blocks
