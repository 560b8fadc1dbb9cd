"""Predict stage on CPU (fp32, exact): batching, resume, stop rules, adapters, few-shot, long prompts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests import test_inference_support as support
from tunebench.config import ModelConfig
from tunebench.errors import TunebenchError
from tunebench.inference.local import FirstLineStop, SamplingParams, load_generator
from tunebench.inference.resume import FAULT_ENV, partial_paths
from tunebench.io import read_jsonl
from tunebench.pipeline import predict_stage as predict
from tunebench.tasks import get_task

lively_model_dir = support.lively_model_dir  # the shared fixture
make_run, save_random_adapter = support.make_run, support.save_random_adapter

ROW_FIELDS = {
    "id",
    "prompt",
    "prediction",
    "gold",
    "raw",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
}


def rows_of(path: Path) -> list[dict]:
    return read_jsonl(path)


@pytest.fixture(scope="module")
def generator(lively_model_dir: Path):
    return load_generator(ModelConfig(name=str(lively_model_dir)), device="cpu")


@pytest.fixture(scope="module")
def sql_prompts() -> list[str]:
    from tunebench.config import TaskConfig

    return [ex.prompt for ex in get_task(TaskConfig(name="sql", max_eval_examples=16)).splits()["test"]]


def test_batched_predictions_equal_batch_of_one(tmp_path: Path, lively_model_dir: Path) -> None:
    config_b, run_b = make_run(tmp_path, lively_model_dir, name="batched", provider="base", batch_size=12)
    config_1, run_1 = make_run(tmp_path, lively_model_dir, name="single", provider="base", batch_size=1)
    batched = rows_of(predict(config_b, run_b, "test"))
    single = rows_of(predict(config_1, run_1, "test"))
    assert [r["id"] for r in batched] == [ex["id"] for ex in read_jsonl(run_b.prepared("test"))]
    assert ROW_FIELDS | {"context", "question", "db_id"} <= set(batched[0])
    assert batched == single
    # the comparison means something: varied lengths and texts, several ways of stopping
    assert len({r["raw"] for r in batched}) > 6
    assert {r["finish_reason"] for r in batched} >= {"stop", "newline"}
    info = run_b.manifest()["stages"]["predict:test"]
    assert info["n"] == 12 and info["gpu_type"] == "cpu" and info["gpu_count"] == 0
    assert info["prompt_tokens"] == sum(r["prompt_tokens"] for r in batched)
    assert info["completion_tokens"] == sum(r["completion_tokens"] for r in batched)
    assert info["wall_time_s"] > 0 and info["predictions_per_s"] == pytest.approx(
        12 / info["wall_time_s"], rel=0.01
    )


def test_static_kv_cache_gives_the_same_predictions(tmp_path: Path, lively_model_dir: Path) -> None:
    config_d, run_d = make_run(tmp_path, lively_model_dir, name="dynamic", provider="base", batch_size=6)
    config_s, run_s = make_run(
        tmp_path,
        lively_model_dir,
        name="static",
        provider="base",
        batch_size=6,
        cache_implementation="static",
    )
    dynamic = rows_of(predict(config_d, run_d, "test"))
    static = rows_of(predict(config_s, run_s, "test"))
    assert static == dynamic and len({r["raw"] for r in static}) > 6


def test_interrupted_run_resumes_and_equals_clean_run(
    tmp_path: Path, lively_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, run = make_run(tmp_path, lively_model_dir, name="crash", provider="base", batch_size=4)
    final = run.predictions("test")
    partial, _ = partial_paths(final)
    monkeypatch.setenv(FAULT_ENV, "1")
    with pytest.raises(KeyboardInterrupt):
        predict(config, run, "test")
    assert not final.exists() and not run.stage_done("predict:test")
    assert len(read_jsonl(partial)) == 4
    with partial.open("a", encoding="utf-8") as handle:  # a line torn by the crash
        handle.write('{"id": "sql-eval-0')
    monkeypatch.setenv(FAULT_ENV, "")
    predict(config, run, "test")
    assert not partial.exists()
    assert run.manifest()["stages"]["predict:test"]["resumed_rows"] == 4

    clean_config, clean_run = make_run(
        tmp_path, lively_model_dir, name="clean", provider="base", batch_size=4
    )
    assert rows_of(final) == rows_of(predict(clean_config, clean_run, "test"))


def test_partial_from_other_settings_is_discarded(
    tmp_path: Path, lively_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, run = make_run(tmp_path, lively_model_dir, provider="base", batch_size=4, n=8)
    monkeypatch.setenv(FAULT_ENV, "1")
    with pytest.raises(KeyboardInterrupt):
        predict(config, run, "test")
    monkeypatch.delenv(FAULT_ENV)
    changed = config.model_copy(
        update={"generation": config.generation.model_copy(update={"max_new_tokens": 5})}
    )
    predict(changed, run, "test")
    rows = rows_of(run.predictions("test"))
    assert run.manifest()["stages"]["predict:test"]["resumed_rows"] == 0
    assert max(r["completion_tokens"] for r in rows) <= 5


def test_first_line_stop_matches_the_postprocess_rule(generator) -> None:
    """Per step, the device rule equals "the text minus leading newlines contains a newline"."""
    tok = generator.tokenizer
    pieces = ["\n", "\n\n", " ", "SELECT", " name", " FROM", " x\n", "1", ";"]
    ids = [tok.encode(p, add_special_tokens=False) for p in pieces]
    single = [i[0] for i in ids if len(i) == 1]
    assert len(single) >= 6
    stop = FirstLineStop(generator.newline_tables(), prompt_len=2)
    rng = random.Random(0)
    checked = 0
    for _ in range(200):
        seq = [rng.choice(single) for _ in range(6)]
        for k in range(1, len(seq) + 1):
            text, before = tok.decode(seq[:k]), tok.decode(seq[: k - 1])
            # the step that completes the first line stops; later steps never run
            expected = "\n" in text.lstrip("\n") and "\n" not in before.lstrip("\n")
            got = stop(torch.tensor([[5, 6, *seq[:k]]]), None)
            assert bool(got[0]) == expected, (text, expected)
            checked += expected
            if expected:
                break
    assert checked > 100


def test_stop_rules_on_real_generations(generator, sql_prompts: list[str]) -> None:
    plain = generator.generate(sql_prompts, SamplingParams(max_new_tokens=24))
    first_line = generator.generate(sql_prompts, SamplingParams(max_new_tokens=24, stop_on_newline=True))
    task = get_task("sql")
    reasons = set()
    for whole, cut in zip(plain, first_line, strict=True):
        w, c = whole.completions[0], cut.completions[0]
        reasons |= {w.finish_reason, c.finish_reason}
        assert whole.prompt_tokens == cut.prompt_tokens
        assert w.text.startswith(c.text)  # same greedy path, only cut earlier
        assert task.postprocess(c.text) == task.postprocess(w.text)
        if c.finish_reason == "newline":
            assert c.text.endswith("\n") and c.completion_tokens < w.completion_tokens
            assert "\n" in c.text.lstrip("\n")
        else:
            assert (c.finish_reason, c.completion_tokens) == (w.finish_reason, w.completion_tokens)
    assert {"stop", "newline", "length"} <= reasons


def test_eos_stop_cuts_at_the_generation_configs_im_end(generator, sql_prompts: list[str]) -> None:
    """Checked against plain ``model.generate`` that does not stop: the token after the text is a stop id."""
    from transformers import GenerationConfig

    im_end = generator.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in generator.stop_ids and generator.tokenizer.eos_token_id in generator.stop_ids
    ours = generator.generate(sql_prompts[:6], SamplingParams(max_new_tokens=24))
    tok = generator.tokenizer
    stopped = 0
    for prompt, result in zip(sql_prompts[:6], ours, strict=True):
        ids = tok(prompt, return_tensors="pt")
        free = GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
        full = generator.model.generate(**ids, generation_config=free)[
            0, ids["input_ids"].shape[1] :
        ].tolist()
        c = result.completions[0]
        if c.finish_reason == "stop":
            stopped += 1
            assert full[c.completion_tokens - 1] in generator.stop_ids
            assert tok.decode(full[: c.completion_tokens - 1]) == c.text
            assert "<|im_end|>" not in c.text
        else:
            assert c.finish_reason == "length" and c.completion_tokens == 24
            assert not set(full) & set(generator.stop_ids)
    assert stopped >= 2


def test_max_new_tokens_gives_length(generator, sql_prompts: list[str]) -> None:
    results = generator.generate(sql_prompts, SamplingParams(max_new_tokens=2))
    lengths = [r.completions[0] for r in results if r.completions[0].finish_reason == "length"]
    assert lengths and all(c.completion_tokens == 2 for c in lengths)
    assert all(r.completions[0].completion_tokens <= 2 for r in results)


def test_sampling_candidates(generator, sql_prompts: list[str]) -> None:
    params = SamplingParams(max_new_tokens=8, do_sample=True, temperature=1.5, n=3, seed=7)
    first = generator.generate(sql_prompts[:4], params)
    again = generator.generate(sql_prompts[:4], params)
    assert [len(r.completions) for r in first] == [3, 3, 3, 3]
    assert [[c.text for c in r.completions] for r in first] == [
        [c.text for c in r.completions] for r in again
    ]
    assert any(len({c.text for c in r.completions}) > 1 for r in first)


def test_adapter_changes_outputs_and_merged_equals_unmerged(tmp_path: Path, lively_model_dir: Path) -> None:
    base_config, base_run = make_run(tmp_path, lively_model_dir, name="base", provider="base")
    merged_config, merged_run = make_run(tmp_path, lively_model_dir, name="merged", merge_adapter=True)
    unmerged_config, unmerged_run = make_run(tmp_path, lively_model_dir, name="unmerged", merge_adapter=False)
    save_random_adapter(lively_model_dir, merged_run.adapter_dir)
    save_random_adapter(lively_model_dir, unmerged_run.adapter_dir)

    base = rows_of(predict(base_config, base_run, "test"))
    merged = rows_of(predict(merged_config, merged_run, "test"))
    unmerged = rows_of(predict(unmerged_config, unmerged_run, "test"))
    assert sum(b["raw"] != m["raw"] for b, m in zip(base, merged, strict=True)) >= 6
    strip = ("prompt_tokens",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in merged] == [
        {k: v for k, v in r.items() if k not in strip} for r in unmerged
    ]
    assert merged_run.manifest()["stages"]["predict:test"]["merged_adapter"] is True
    assert unmerged_run.manifest()["stages"]["predict:test"]["merged_adapter"] is False


def test_adapter_of_another_model_is_a_clear_error(
    tmp_path: Path, lively_model_dir: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_config(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.__class__(
            vocab_size=1024,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    other_dir = tmp_path / "other-model"
    other.save_pretrained(other_dir)
    config, run = make_run(tmp_path, lively_model_dir, name="wrong-shape")
    save_random_adapter(other_dir, run.adapter_dir)
    with pytest.raises(TunebenchError, match="adapter does not fit base model"):
        predict(config, run, "test")

    config, run = make_run(tmp_path, lively_model_dir, name="wrong-modules")
    save_random_adapter(lively_model_dir, run.adapter_dir)
    adapter_config = run.adapter_dir / "adapter_config.json"
    data = json.loads(adapter_config.read_text())
    data["target_modules"] = ["c_attn"]  # a GPT-2 module name: not in a Qwen2 model
    adapter_config.write_text(json.dumps(data))
    with pytest.raises(TunebenchError, match="adapter does not fit base model"):
        predict(config, run, "test")

    config, run = make_run(tmp_path, lively_model_dir, name="untrained")
    with pytest.raises(TunebenchError, match="tunebench train"):
        predict(config, run, "test")


def test_few_shot_prompts(tmp_path: Path, lively_model_dir: Path) -> None:
    config, run = make_run(tmp_path, lively_model_dir, provider="base", n=4, few_shot=2, max_new_tokens=4)
    rows = rows_of(predict(config, run, "test"))
    examples = read_jsonl(run.prepared("test"))
    train = {r["prompt"] + r["completion"] + "\n\n" for r in read_jsonl(run.prepared("train"))}
    for row, example in zip(rows, examples, strict=True):
        assert row["prompt"].endswith(example["prompt"])
        shots = row["prompt"][: -len(example["prompt"])]
        assert shots.count("### Response:\n") == 2
        parts = shots.split("You are a powerful")[1:]
        assert all("You are a powerful" + p in train for p in parts)
    assert len({r["prompt"][:200] for r in rows}) == 1  # the same shots for every prompt
    assert run.manifest()["stages"]["predict:test"]["few_shot"] == 2


def test_long_prompts_truncated_from_the_left_or_refused(tmp_path: Path, lively_model_dir: Path) -> None:
    # the tiny model's context is 1024 tokens: 1000 new tokens leave 24 for the prompt
    config, run = make_run(tmp_path, lively_model_dir, provider="base", n=3, max_new_tokens=1000)
    rows = rows_of(predict(config, run, "test"))
    assert all(r["truncated"] and r["prompt_tokens"] == 24 for r in rows)
    assert run.manifest()["stages"]["predict:test"]["truncated_prompts"] == 3

    config, run = make_run(
        tmp_path,
        lively_model_dir,
        name="strict",
        provider="base",
        n=3,
        max_new_tokens=1000,
        long_prompts="error",
    )
    with pytest.raises(TunebenchError, match=r"sql-eval-\d+: prompt has \d+ tokens"):
        predict(config, run, "test")
