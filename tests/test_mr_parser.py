"""The ViGGO MR parser on every real MR and on the malformed text models produce."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tunebench.evaluation.mr import ATTRIBUTES, FUNCTIONS, MR, ParseFailure, normalize_value, parse_mr


def read_mrs(data_dir: Path, split: str) -> list[str]:
    with (data_dir / "viggo" / f"{split}.csv").open(encoding="utf-8", newline="") as handle:
        return [row["mr"] for row in csv.DictReader(handle)]


@pytest.mark.parametrize(("split", "rows"), [("train", 5103), ("valid", 714), ("test", 1083)])
def test_every_real_mr_round_trips(data_dir: Path, split: str, rows: int) -> None:
    mrs = read_mrs(data_dir, split)
    assert len(mrs) == rows
    for text in mrs:
        mr = parse_mr(text)
        assert isinstance(mr, MR), (text, mr)
        assert str(mr) == text
        assert mr.function in FUNCTIONS
        assert set(mr.attributes) <= set(ATTRIBUTES)
        assert not mr.duplicated()


def test_real_data_shapes_are_parsed_as_expected(data_dir: Path) -> None:
    mrs = set(read_mrs(data_dir, "train")) | set(read_mrs(data_dir, "test"))
    # A value with parentheses inside brackets, a list value, and an empty value.
    esrb = next(m for m in mrs if "esrb[E 10+ (for Everyone 10 and Older)]" in m)
    assert dict(parse_mr(esrb).slots)["esrb"] == "E 10+ (for Everyone 10 and Older)"
    empty = next(m for m in mrs if "player_perspective[]" in m)
    assert dict(parse_mr(empty).slots)["player_perspective"] == ""
    # A comma inside a non-list value stays one value.
    spectrum = next(m for m in mrs if "developer[Spectrum HoloByte, Inc" in m)
    developer = parse_mr(spectrum).normalized()["developer"]
    assert isinstance(developer, str) and developer.startswith("Spectrum HoloByte, Inc")


def test_whitespace_tolerated_and_canonicalised() -> None:
    mr = parse_mr("  inform ( name [ Portal 2 ] ,genres[ puzzle,  shooter ] , )\n")
    assert isinstance(mr, MR)
    assert mr.function == "inform"
    assert mr.slots == (("name", "Portal 2"), ("genres", "puzzle,  shooter"))
    assert mr.normalized()["genres"] == frozenset({"puzzle", "shooter"})


def test_list_values_split_only_for_list_attributes() -> None:
    assert normalize_value("platforms", "PC, Xbox") == normalize_value("platforms", "Xbox,PC")
    assert normalize_value("player_perspective", "") == frozenset()
    assert normalize_value("exp_release_date", "June 29,  2018") == "June 29, 2018"
    assert normalize_value("name", "Half  Life") == "Half Life"
    assert normalize_value("name", "HALF life", ignore_case=True) == "half life"


def test_nested_brackets_and_no_slots() -> None:
    assert parse_mr("inform(name[a [b] c])").slots == (("name", "a [b] c"),)
    assert parse_mr("request()") == MR("request", ())


def test_duplicates_are_kept_and_reported() -> None:
    mr = parse_mr("inform(name[A], name[B], rating[good])")
    assert mr.attributes == ["name", "name", "rating"]
    assert mr.duplicated() == ["name"]
    assert mr.normalized()["name"] == "A"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "not a string"),
        (42, "not a string"),
        ("Portal 2 is a puzzle game", "no '('"),
        ("inform(name[Portal 2]", "missing closing ')'"),
        ("inform(name[Portal 2)", "unbalanced '['"),
        ("inform(name[Portal 2]])", "expected ',' or ')'"),
        ("inform(name[Portal 2] rating[good])", "expected ',' or ')'"),
        ("inform(name)", "has no [value]"),
        ("inform(name[X]) and more", "after the closing ')'"),
        ("MR: inform(name[X])", "not an identifier"),
        ("inform(, name[X])", "expected an attribute name"),
    ],
)
def test_bad_text_is_a_failure_value_not_an_exception(text: object, message: str) -> None:
    result = parse_mr(text)
    assert isinstance(result, ParseFailure)
    assert message in str(result)
