"""ViGGO scorer on the real test split and on hand-made predictions of every error kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tunebench.errors import TunebenchError
from tunebench.evaluation import evaluate, viggo

# A real test-split MR (checked against the CSV below) with two list attributes.
GOLD = (
    "inform(name[Tom Clancy's The Division], esrb[M (for Mature)], rating[average], "
    "genres[role-playing, shooter, tactical], player_perspective[third person], has_multiplayer[yes], "
    "platforms[PlayStation, Xbox, PC], available_on_steam[yes])"
)
RATES = ("exact_match", "mr_match", "function_accuracy", "parse_rate")
MICRO = tuple(f"{p}_{m}" for p in ("slot", "attribute") for m in ("precision", "recall", "f1"))


def read_test(data_dir: Path) -> list[dict[str, str]]:
    with (data_dir / "viggo" / "test.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def one(prediction: object, gold: str = GOLD, **options: Any) -> dict[str, Any]:
    rows, _ = viggo.score([{"id": "x", "prediction": prediction, "gold": gold}], options)
    return rows[0]


def test_gold_is_a_real_test_mr(data_dir: Path) -> None:
    assert GOLD in {row["mr"] for row in read_test(data_dir)}


def test_gold_as_prediction_scores_100_percent_everywhere(data_dir: Path) -> None:
    rows = [{"id": i, "prediction": r["mr"], "gold": r["mr"]} for i, r in enumerate(read_test(data_dir))]
    assert len(rows) == 1083
    per_example, metrics = viggo.score(rows, {})
    assert metrics["n"] == metrics["n_scored"] == 1083
    for name in (*RATES, *MICRO, "slot_f1_example_mean"):
        assert metrics[name] == 1.0, name
        assert metrics[f"{name}_ci95"] == [1.0, 1.0], name
    assert set(metrics["error_counts"].values()) == {0}
    assert metrics["unparseable"] == metrics["unknown_function"] == metrics["unknown_attribute"] == 0
    for attr, row in metrics["per_attribute"].items():
        assert row["correct"] == row["support"] == row["predicted"] > 0, attr
    assert sum(f["mr_match"] for f in metrics["per_function"].values()) == 1083
    assert all(list(c) == [g] for g, c in metrics["function_confusion"].items())
    assert all(r["exact_match"] and r["mr_match"] and r["parsed"] and r["error"] is None for r in per_example)


def test_exact_match_is_stripped_string_equality() -> None:
    assert one(f"  {GOLD}\n")["exact_match"] is True
    spaced = one(GOLD.replace("rating[average]", "rating[ average ]"))
    assert (spaced["exact_match"], spaced["mr_match"]) == (False, True)


def test_wrong_function() -> None:
    row = one(GOLD.replace("inform(", "give_opinion("))
    assert (row["function_match"], row["mr_match"], row["exact_match"]) == (False, False, False)
    assert row["errors"]["wrong_function"] is True
    assert row["errors"]["missing"] == row["errors"]["extra"] == row["errors"]["wrong_value"] == []
    assert row["slots"] == {"correct": 8, "predicted": 8, "gold": 8}
    assert row["unknown_function"] is None


def test_missing_attribute() -> None:
    row = one(GOLD.replace(", available_on_steam[yes]", ""))
    assert row["function_match"] is True and row["mr_match"] is False
    assert row["errors"]["missing"] == ["available_on_steam"]
    assert row["attribute_status"]["available_on_steam"] == "missing"
    assert row["slots"] == {"correct": 7, "predicted": 7, "gold": 8}
    assert row["slot_f1"] == pytest.approx(14 / 15, abs=1e-6)


def test_extra_attribute() -> None:
    rows, metrics = viggo.score(
        [{"id": 1, "prediction": GOLD[:-1] + ", release_year[2016])", "gold": GOLD}], {}
    )
    row = rows[0]
    assert row["mr_match"] is False
    assert row["errors"]["extra"] == ["release_year"]
    assert row["errors"]["missing"] == []
    assert row["slots"] == {"correct": 8, "predicted": 9, "gold": 8}
    year = metrics["per_attribute"]["release_year"]
    assert (year["support"], year["predicted"], year["extra"], year["precision"]) == (0, 1, 1, 0.0)
    assert metrics["slot_precision"] == pytest.approx(8 / 9, abs=1e-6) and metrics["slot_recall"] == 1.0


def test_wrong_value() -> None:
    row = one(GOLD.replace("rating[average]", "rating[poor]"))
    assert row["mr_match"] is False and row["function_match"] is True
    assert row["errors"]["wrong_value"] == ["rating"]
    assert row["attribute_status"]["rating"] == "wrong_value"
    assert row["slots"]["correct"] == 7 and row["attributes"]["correct"] == 8


def test_reordered_attributes_match_the_mr_but_not_the_string() -> None:
    parts = [
        "name[Tom Clancy's The Division]",
        "esrb[M (for Mature)]",
        "rating[average]",
        "genres[role-playing, shooter, tactical]",
        "player_perspective[third person]",
        "has_multiplayer[yes]",
        "platforms[PlayStation, Xbox, PC]",
        "available_on_steam[yes]",
    ]
    assert f"inform({', '.join(parts)})" == GOLD
    row = one(f"inform({', '.join(reversed(parts))})")
    assert (row["exact_match"], row["mr_match"]) == (False, True)


def test_list_values_compare_as_sets() -> None:
    reordered = one(
        GOLD.replace("genres[role-playing, shooter, tactical]", "genres[tactical,role-playing, shooter]")
    )
    assert (reordered["exact_match"], reordered["mr_match"]) == (False, True)
    fewer = one(GOLD.replace("platforms[PlayStation, Xbox, PC]", "platforms[PC, Xbox]"))
    assert fewer["mr_match"] is False and fewer["errors"]["wrong_value"] == ["platforms"]
    # A comma inside a non-list value is part of the value, not a separator.
    gold = "inform(name[X], developer[Spectrum HoloByte, Inc.])"
    assert one("inform(name[X], developer[Inc., Spectrum HoloByte])", gold=gold)["mr_match"] is False


@pytest.mark.parametrize(
    "prediction",
    ["", "   ", None, "Tom Clancy's The Division is an average game.", "inform(name[Tom Clancy", GOLD + ")"],
)
def test_unparseable_prediction_is_wrong_not_an_error(prediction: object) -> None:
    row = one(prediction)
    assert row["parsed"] is False and row["parse_error"]
    assert (row["exact_match"], row["mr_match"], row["function_match"]) == (False, False, False)
    assert row["error"] is None  # the verdicts are known: all wrong
    assert len(row["errors"]["missing"]) == 8
    assert row["slots"] == {"correct": 0, "predicted": 0, "gold": 8}
    assert row["slot_f1"] == 0.0


def test_unknown_function_and_attribute_are_listed_and_wrong() -> None:
    fn = one(GOLD.replace("inform(", "describe("))
    assert fn["unknown_function"] == "describe" and fn["function_match"] is False and fn["parsed"] is True
    attr = one(GOLD[:-1] + ", price[cheap])")
    assert attr["unknown_attributes"] == ["price"]
    assert attr["errors"]["extra"] == ["price"] and attr["mr_match"] is False


def test_duplicated_attribute_is_not_a_match() -> None:
    row = one(GOLD[:-1] + ", rating[average])")
    assert row["errors"]["duplicated"] == ["rating"] and row["mr_match"] is False
    assert row["slots"] == {"correct": 8, "predicted": 9, "gold": 8}


def test_ignore_case_option() -> None:
    lower = GOLD.replace("PlayStation", "playstation")
    assert one(lower)["mr_match"] is False
    assert one(lower, ignore_case=True)["mr_match"] is True
    with pytest.raises(TunebenchError, match="ignore_case"):
        one(GOLD, ignore_case="yes")


def test_invalid_gold_is_unscorable_and_excluded() -> None:
    rows = [
        {"id": 1, "prediction": GOLD, "gold": GOLD},
        {"id": 2, "prediction": GOLD, "gold": "inform(name[broken"},
    ]
    per_example, metrics = viggo.score(rows, {})
    bad = per_example[1]
    assert bad["mr_match"] is None and bad["function_match"] is None and "gold" in bad["error"]
    assert metrics["mr_match"] == 1.0 and metrics["mr_match_n"] == 1
    assert metrics["exact_match"] == 0.5 and metrics["gold_invalid"] == 1


def test_aggregates_of_a_mixed_set() -> None:
    predictions = [
        GOLD,  # all right
        GOLD.replace("rating[average]", "rating[poor]"),  # 7/8 slots
        GOLD.replace(", available_on_steam[yes]", ""),  # 7/7 predicted, 7/8 gold
        GOLD.replace("inform(", "confirm("),  # slots right, function wrong
        "no idea",  # unparseable: 0/8
    ]
    rows = [{"id": i, "prediction": p, "gold": GOLD} for i, p in enumerate(predictions)]
    _, m = viggo.score(rows, {})
    assert m["mr_match"] == 0.2 and m["function_accuracy"] == 0.6 and m["parse_rate"] == 0.8
    correct, predicted, gold = 8 + 7 + 7 + 8 + 0, 8 + 8 + 7 + 8 + 0, 40
    assert m["slot_precision"] == pytest.approx(correct / predicted, abs=1e-6)
    assert m["slot_recall"] == pytest.approx(correct / gold, abs=1e-6)
    assert m["slot_f1"] == pytest.approx(2 * correct / (predicted + gold), abs=1e-6)
    assert m["attribute_recall"] == pytest.approx(31 / 40, abs=1e-6)
    for name in (*RATES, *MICRO):
        low, high = m[f"{name}_ci95"]
        assert low <= m[name] <= high, name
    assert m["error_counts"] == {
        "wrong_function": 2,
        "unparseable": 1,
        "unknown_function": 0,
        "unknown_attribute": 0,
        "missing": 1 + 8,
        "extra": 0,
        "wrong_value": 1,
        "duplicated": 0,
    }
    per_attr = m["per_attribute"]
    assert per_attr["rating"] == {
        "support": 5,
        "predicted": 4,
        "correct": 3,
        "missing": 1,
        "extra": 0,
        "wrong_value": 1,
        "precision": 0.75,
        "recall": 0.6,
        "f1": pytest.approx(2 * 3 / 9, abs=1e-6),
    }
    assert per_attr["release_year"]["support"] == 0 and per_attr["release_year"]["recall"] is None
    # The per-attribute table adds up to the micro slot scores.
    assert sum(r["correct"] for r in per_attr.values()) / sum(r["support"] for r in per_attr.values()) == (
        pytest.approx(m["slot_recall"], abs=1e-6)
    )
    assert m["per_function"]["inform"] == {"support": 5, "function_match": 3, "mr_match": 1}
    assert m["function_confusion"] == {"inform": {"<unparseable>": 1, "confirm": 1, "inform": 3}}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_evaluate_writes_metrics_and_per_example(tmp_path: Path, data_dir: Path) -> None:
    golds = [r["mr"] for r in read_test(data_dir)[:20]]
    rows = [{"id": f"t{i}", "prediction": g, "gold": g} for i, g in enumerate(golds)]
    rows[0]["prediction"] = ""
    predictions = write_jsonl(tmp_path / "pred.jsonl", rows)
    metrics = evaluate("viggo", predictions, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk == metrics and metrics["task"] == "viggo"
    assert metrics["exact_match"] == 0.95 and metrics["unparseable"] == 1
    lines = (tmp_path / "out" / "per_example.jsonl").read_text(encoding="utf-8").splitlines()
    written = [json.loads(line) for line in lines]
    assert [r["id"] for r in written] == [f"t{i}" for i in range(20)]
    assert written[0]["parsed"] is False and written[1]["mr_match"] is True


def test_evaluate_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pred.jsonl"
    good = json.dumps({"id": 1, "prediction": GOLD, "gold": GOLD})
    path.write_text(good + "\n" + '{"id": 2, "prediction": "inform(name[X])", "gold": \n', encoding="utf-8")
    with pytest.raises(TunebenchError, match=r"pred\.jsonl:2: invalid JSON"):
        evaluate("viggo", path, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_evaluate_missing_field_names_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pred.jsonl", [{"id": 1, "prediction": GOLD, "gold": GOLD}, {"id": 2, "gold": GOLD}]
    )
    with pytest.raises(TunebenchError, match=r":2: field 'prediction'"):
        evaluate("viggo", path, tmp_path / "out")
