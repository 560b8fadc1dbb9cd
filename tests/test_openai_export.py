"""OpenAI export files, validation, offline tiktoken, the auto-epoch rule and the price tables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tunebench.config import TaskConfig
from tunebench.errors import TunebenchError
from tunebench.prices import GPU_PRICES, gpu_price, match_gpu, openai_price
from tunebench.providers import openai_export as ox
from tunebench.tasks import get_task


def messages_of(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    ("task_name", "split", "study_file"),
    [
        ("sql", "train", "sql/openai/spider_create_context_train_oai_format.jsonl"),
        ("sql", "test", "sql/openai/spider_create_context_validation_oai_format.jsonl"),
        ("viggo", "test", "viggo/openai/validation_oai_format.jsonl"),
    ],
)
def test_export_reproduces_the_study_files(
    tmp_path: Path, data_dir: Path, task_name: str, split: str, study_file: str
) -> None:
    task = get_task(TaskConfig(name=task_name, validation="study"))
    out = tmp_path / "export.jsonl"
    count = ox.write_export(out, ox.export_rows(task, task.splits()[split]))
    study = messages_of(data_dir / study_file)
    ours = messages_of(out)
    assert count == len(study) == len(ours) > 500
    for number, (a, b) in enumerate(zip(ours, study, strict=True), start=1):
        assert a == b, f"line {number} differs"


def test_held_out_split_is_what_gets_exported_by_default() -> None:
    task = get_task(TaskConfig(name="sql"))
    train = ox.export_rows(task, task.splits()["train"])
    assert 3000 < len(train) < 3961  # validation databases are held out of train


def test_validation_lists_every_offending_line() -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows = [good] * 12
    rows[2] = {"messages": [{"role": "user", "content": "q"}]}
    rows[4] = {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows[6] = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
    rows[8] = {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}
    rows[10] = {"prompt": "old format"}
    with pytest.raises(TunebenchError) as info:
        ox.validate_rows(rows, "gpt-3.5-turbo-0125", "train.jsonl")
    lines = str(info.value).splitlines()
    assert lines[0] == "5 problem(s) in the fine-tuning data:"
    assert lines[1] == "train.jsonl:3: no assistant message"
    assert lines[2].startswith("train.jsonl:5: message 1: role 'robot' is not one of")
    assert lines[3] == "train.jsonl:7: message 2: empty assistant content"
    assert lines[4] == "train.jsonl:9: message 1: content must be a string, got int"
    assert lines[5] == "train.jsonl:11: missing or empty 'messages' list"


def test_validation_minimum_examples_and_token_limit() -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(TunebenchError, match="3 examples; OpenAI requires at least 10"):
        ox.validate_rows([good] * 3, "gpt-3.5-turbo-0125", "t.jsonl")
    long = {"messages": [{"role": "user", "content": "word " * 5000}, {"role": "assistant", "content": "a"}]}
    ox.validate_rows([good] * 9 + [long], "gpt-3.5-turbo-0125", "t.jsonl")  # 16,385 allowed
    with pytest.raises(TunebenchError, match=r"t.jsonl:10: \d+ tokens > the model's limit of 4096"):
        ox.validate_rows([good] * 9 + [long], "gpt-3.5-turbo-0613", "t.jsonl")


def test_tiktoken_works_offline_from_the_bundled_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for name, expected_ids in (("cl100k_base", [15339, 1917]), ("o200k_base", [24912, 2375])):
        url, sha = ox.ENCODING_FILES[name]
        cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
        cached.write_bytes(b"corrupt")  # a bad cache file is replaced, never trusted
        assert ox.ensure_tiktoken_files(name)
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
        tiktoken.registry.ENCODINGS.pop(name, None)  # force a load from the cache folder
        assert tiktoken.get_encoding(name).encode("hello world") == expected_ids
    assert ox.encoding_name("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert ox.encoding_name("ft:gpt-3.5-turbo-0613:org::abc") == "cl100k_base"
    assert ox.token_counter("gpt-3.5-turbo-0125").exact


def test_chat_token_count_matches_the_cookbook_rule() -> None:
    counter = ox.token_counter("gpt-3.5-turbo-0125")
    msgs = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"}]
    # 3 priming + per message (3 + role + content): role tokens are 1 each here
    assert ox.message_tokens(msgs, counter) == 3 + 2 * (3 + 1 + 2)


@pytest.mark.parametrize(
    ("n", "epochs"), [(1, 25), (10, 10), (20, 5), (34, 3), (3961, 3), (8333, 3), (8334, 2), (30000, 1)]
)
def test_auto_epochs_rule(n: int, epochs: int) -> None:
    assert ox.default_epochs(n) == epochs


def test_estimate_uses_the_price_table_and_overrides() -> None:
    row = {"messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi"}]}
    est = ox.estimate_cost([row] * 20, [], "gpt-3.5-turbo-0613")
    assert est.epochs == 5 and est.epochs_auto
    assert est.billed_tokens == est.train_tokens * 5
    assert est.cost_usd == pytest.approx(est.billed_tokens * 8.0 / 1e6, abs=1e-4)
    assert est.price_date == "2023-08-22"
    cheaper = ox.estimate_cost([row] * 20, [], "gpt-3.5-turbo-0613", 2, {"training": 1.0})
    assert cheaper.epochs == 2 and cheaper.price_per_1m == 1.0 and cheaper.price_date == "override"


def test_price_tables() -> None:
    assert gpu_price("A40").price_per_hour == 0.475
    assert match_gpu("NVIDIA H100 80GB HBM3") == "H100"
    assert match_gpu("NVIDIA H100 PCIe") == "H100 PCIe"
    assert match_gpu("NVIDIA A100-SXM4-80GB") == "A100"
    assert match_gpu("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert match_gpu("NVIDIA RTX A4000") is None  # not an A40
    assert gpu_price("NVIDIA H200", {"H200": 2.5}).price_per_hour == 2.5
    for row in GPU_PRICES.values():
        assert row.date and row.source and row.price_per_hour > 0
    with pytest.raises(TunebenchError, match="no price for GPU 'TPU'"):
        gpu_price("TPU")
    assert openai_price("ft:gpt-4o-mini-2024-07-18:org::x").training == 3.0
    assert openai_price("gpt-3.5-turbo").model == "gpt-3.5-turbo-0125"
    with pytest.raises(TunebenchError, match="no OpenAI price for model 'gpt-9'"):
        openai_price("gpt-9")
    custom = openai_price("gpt-9", {"training": 1, "input": 2, "output": 3, "date": "2030-01-01"})
    assert (custom.training, custom.output, custom.date) == (1.0, 3.0, "2030-01-01")


def test_prices_file_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("gpu:\n  A40: 0.39\nopenai:\n  gpt-4o-2024-08-06:\n    training: 20\n")
    monkeypatch.setenv("TUNEBENCH_PRICES", str(path))
    assert gpu_price("NVIDIA A40").price_per_hour == 0.39
    assert openai_price("gpt-4o").training == 20.0 and openai_price("gpt-4o").input == 3.75
