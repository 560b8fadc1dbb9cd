"""Custom tasks from the files people bring: OpenAI chat JSONL, prompt/completion JSONL, rows;
chat data trained in the chat template; the metrics of task.metrics; paths from the config's folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunebench.config import TaskConfig, load_experiment
from tunebench.errors import TunebenchError
from tunebench.evaluation import custom as custom_scorer
from tunebench.tasks import get_task
from tunebench.training.data import IGNORE, tokenize_examples

SYSTEM = {"role": "system", "content": "Answer in JSON."}
CHAT = [
    {"messages": [SYSTEM, {"role": "user", "content": "two"}, {"role": "assistant", "content": '{"n": 2}'}]},
    {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": '{"n": 0}', "weight": 0},
            {"role": "user", "content": "no, one"},
            {"role": "assistant", "content": '{"n": 1}'},
        ]
    },
    {"messages": [{"role": "user", "content": "three"}, {"role": "assistant", "content": '{"n": 3}'}]},
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def custom(path: Path, **extra: Any) -> Any:
    return get_task(TaskConfig(name="custom", train_file=str(path), test_file=str(path), **extra))


def test_chat_rows_become_context_and_last_assistant_target(tmp_path: Path) -> None:
    task = custom(write_jsonl(tmp_path / "chat.jsonl", CHAT))
    assert task.format == "chat" and task.chat_data and not task.first_line_only
    test = task.load_examples()["test"]
    assert [ex.completion for ex in test] == ['{"n": 2}', '{"n": 1}', '{"n": 3}']
    assert test[1].fields["input"] == "no, one"
    # a chat model is sent the turns before the target, without the training-only weight key
    assert task.chat_messages(test[1]) == [
        SYSTEM,
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": '{"n": 0}'},
        {"role": "user", "content": "no, one"},
    ]
    # the OpenAI upload is the file's own messages, weight included
    assert [task.training_messages(ex) for ex in test] == [row["messages"] for row in CHAT]
    assert task.scorer_options() == {
        "metrics": ["exact_match", "exact_match_normalized"],
        "unwrap_fence": True,
    }


def test_chat_rows_breaking_openais_rules_name_their_line(tmp_path: Path) -> None:
    bad = [
        CHAT[0],
        {},
        {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(bad[0]) + "\n\n" + json.dumps(bad[2]) + "\n", encoding="utf-8")
    with pytest.raises(TunebenchError, match=r"bad\.jsonl:3: message 1: role 'bot' is not one of"):
        custom(path).load_examples()
    write_jsonl(path, [CHAT[0], {"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(TunebenchError, match=r"bad\.jsonl:2: no assistant message"):
        custom(path).load_examples()
    write_jsonl(path, [{"messages": [{"role": "user", "content": "q", "weight": 0}, CHAT[0]["messages"][2]]}])
    with pytest.raises(
        TunebenchError, match=r"bad\.jsonl:1: message 1: 'weight' is only allowed on assistant"
    ):
        custom(path, format="chat").load_examples()


def test_prompt_completion_rows(tmp_path: Path) -> None:
    rows = [{"prompt": "2+2=", "completion": "4", "id": "a"}, {"prompt": "3+3=", "completion": "6\nsix"}]
    task = custom(write_jsonl(tmp_path / "pc.jsonl", rows), system_prompt="Add.")
    assert task.format == "prompt_completion" and not task.chat_data and not task.first_line_only
    first, second = task.load_examples()["test"]
    assert (first.prompt, first.completion, first.fields) == ("2+2=", "4", {"id_in_file": "a"})
    assert task.chat_messages(second) == [
        {"role": "system", "content": "Add."},
        {"role": "user", "content": "3+3="},
    ]
    assert task.postprocess(" 6\nsix\n") == "6\nsix"  # no first-line rule by default
    write_jsonl(tmp_path / "pc.jsonl", [*rows, {"prompt": "x", "completion": 5}])
    with pytest.raises(TunebenchError, match=r"pc\.jsonl:3: field 'completion': expected text, got int"):
        custom(tmp_path / "pc.jsonl").load_examples()


def test_rows_keep_the_template_and_first_line_rule(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [{"q": "hi", "target": "yo"}])
    task = custom(path, prompt_template="Q: {q}\nA: ")
    assert task.format == "rows" and task.first_line_only
    assert task.load_examples()["test"][0].prompt == "Q: hi\nA: "
    assert task.scorer_options()["unwrap_fence"] is False
    with pytest.raises(
        TunebenchError, match=r"rows\.jsonl: rows without 'messages'.*need task\.prompt_template"
    ):
        custom(path).load_examples()


def test_chat_data_is_labeled_on_assistant_turns_in_the_chat_template(tmp_path: Path, data_dir: Path) -> None:
    from transformers import AutoTokenizer

    from tests.tiny import CHATML, build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(
        build_tiny_model(tmp_path / "m", data_dir, chat_template=CHATML)
    )
    task = custom(write_jsonl(tmp_path / "chat.jsonl", CHAT))
    examples = task.load_examples()["test"]
    tokenized, stats = tokenize_examples(examples, tokenizer, eos_id=0, suffix="\n", max_length=256)
    one_turn, two_turns = tokenized[0], tokenized[1]
    text = tokenizer.decode(two_turns.input_ids)
    assert text == tokenizer.apply_chat_template(CHAT[1]["messages"], tokenize=False)

    def labeled(ex: Any) -> list[str]:
        """The labeled stretches of an example, as text."""
        runs, current = [], []
        for token, label in zip(ex.input_ids, ex.labels, strict=True):
            if label != IGNORE:
                current.append(token)
            elif current:
                runs.append(tokenizer.decode(current))
                current = []
        return [*runs, tokenizer.decode(current)] if current else runs

    assert labeled(one_turn) == ['{"n": 2}<|im_end|>\n']
    # the weight-0 turn is context; the last assistant turn is trained on, end-of-turn included
    assert labeled(two_turns) == ['{"n": 1}<|im_end|>\n']
    both = [{**m, "weight": 1} if m.get("weight") == 0 else m for m in CHAT[1]["messages"]]
    again = custom(write_jsonl(tmp_path / "both.jsonl", [{"messages": both}])).load_examples()["test"]
    assert labeled(tokenize_examples(again, tokenizer, 0, "\n", 256)[0][0]) == [
        '{"n": 0}<|im_end|>\n',
        '{"n": 1}<|im_end|>\n',
    ]
    # what a model is sent at prediction time is the text right before the last labeled turn
    prompt = tokenizer.apply_chat_template(
        task.chat_messages(examples[1]), tokenize=False, add_generation_prompt=True
    )
    assert text == prompt + '{"n": 1}<|im_end|>\n'
    assert stats.labeled_tokens == sum(ex.n_labeled for ex in tokenized)


# --- every metric through task.metrics, against values computed by hand -------------------
ROWS = [  # prediction, gold
    ('```json\n{"a": 1, "b": [1, 2]}\n```', '{"b": [2, 1], "a": 1.0}'),
    ('{"a": 1, "b": [1]}', '{"a": 1, "b": [1, 2]}'),
    ("not json", '{"a": 1}'),
    ("[]", "{}"),
]


def scored(tmp_path: Path, metrics: list[str], rows: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    task = custom(path, metrics=metrics, **extra)
    per_row = [{"id": str(i), "prediction": p, "gold": g} for i, (p, g) in enumerate(rows)]
    return custom_scorer.score(per_row, task.scorer_options())[1]


def test_json_metrics_through_task_metrics(tmp_path: Path) -> None:
    m = scored(tmp_path, ["json_valid", "json_match", "json_field_f1"], ROWS)
    # fence unwrapped (chat default): rows 1, 2, 4 parse; row 1 equals its gold (1 == 1.0, but
    # list order kept: [1, 2] != [2, 1]) -> no match; nothing matches
    assert m["json_valid"] == pytest.approx(3 / 4)
    assert m["json_match"] == 0.0
    # field F1: row 1 leaves {a:1, b[]:1, b[]:2} both sides -> 1.0; row 2 P={a:1,b[]:1}, G={a:1,b[]:1,b[]:2}
    # -> 2*2/5 = 0.8; row 3 invalid -> 0; row 4 [] vs {} are different empty leaves -> 0
    assert m["json_field_f1"] == pytest.approx((1.0 + 0.8 + 0.0 + 0.0) / 4)
    plain = scored(tmp_path, ["json_valid"], ROWS, unwrap_fence=False)
    assert plain["json_valid"] == pytest.approx(2 / 4)


def test_json_schema_valid_from_a_file_beside_the_config(tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    write_jsonl(tmp_path / "cfg" / "chat.jsonl", CHAT)
    config = tmp_path / "cfg" / "x.yaml"
    config.write_text(
        "name: x\ntask: {name: custom, train_file: chat.jsonl, test_file: chat.jsonl, "
        "metrics: [json_schema_valid], json_schema: schema.json}\n",
        encoding="utf-8",
    )
    task = get_task(load_experiment(config).task)
    rows = [
        {"id": str(i), "prediction": p, "gold": "{}"}
        for i, p in enumerate(['{"a": 1}', '{"a": "1"}', "{}", "x"])
    ]
    assert custom_scorer.score(rows, task.scorer_options())[1]["json_schema_valid"] == 0.25
    inline = scored(tmp_path, ["json_schema_valid"], [('{"a": 2}', "{}"), ("[1]", "{}")], json_schema=schema)
    assert inline["json_schema_valid"] == 0.5


def test_text_and_label_metrics_through_task_metrics(tmp_path: Path) -> None:
    text = scored(tmp_path, ["token_f1", "exact_match"], [("The cat sat", "a cat sat down"), ("x", "y")])
    # tokens (articles dropped): {cat, sat} vs {cat, sat, down}: P=1, R=2/3 -> F1 0.8; then 0
    assert text["token_f1"] == pytest.approx(0.4)
    assert text["exact_match"] == 0.0
    labels = [("pos", "pos"), ("neg", "pos"), ("neg", "neg"), ("pos", "neg"), ("pos", "pos"), ("meh", "neg")]
    m = scored(tmp_path, ["label_accuracy", "macro_f1"], labels)
    assert m["label_accuracy"] == pytest.approx(3 / 6)
    # pos: predicted 3 times, right 2 (P=2/3), support 3 (R=2/3) -> 2/3; neg: P=1/2, R=1/3 -> 0.4
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.4) / 2)


# --- paths in a config are read from its folder ---------------------------------------------
def test_config_paths_and_metric_modules_resolve_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    write_jsonl(folder / "chat.jsonl", CHAT)
    (folder / "my_metrics.py").write_text(
        "def starts_brace(prediction, gold):\n    return prediction.startswith('{')\n", encoding="utf-8"
    )
    (folder / "x.yaml").write_text(
        "name: x\ntask: {name: custom, train_file: chat.jsonl, test_file: missing.jsonl, "
        "metrics: ['my_metrics:starts_brace', exact_match]}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: neither the data nor the module is on the path here
    config = load_experiment(Path("project/x.yaml"))
    assert config.task.train_file == str(folder / "chat.jsonl")
    with pytest.raises(TunebenchError, match=f"{folder / 'missing.jsonl'}: file not found"):
        get_task(config.task).load_examples()
    options = get_task(config.task).scorer_options()
    rows = [{"id": "1", "prediction": "{}", "gold": "{}"}, {"id": "2", "prediction": "x", "gold": "x"}]
    metrics = custom_scorer.score(rows, options)[1]
    assert metrics["metrics"] == [f"{folder / 'my_metrics.py'}:starts_brace", "exact_match"]
    assert metrics[f"{folder / 'my_metrics.py'}:starts_brace"] == 0.5
