from __future__ import annotations

import random

import pytest

from optistop.tiny.tasks import FAMILIES, LEVELS, generate_split, get_family, grade, split_of
from optistop.tiny.tasks.suite import sample


@pytest.mark.parametrize(
    ("prompt", "output", "ok"),
    [
        ("4821+377=", "5198", True),
        ("4821+377=", "5197", False),
        ("9+7=", "16", True),
        ("9+7=", " 16\n", True),      # surrounding whitespace is not an error
        ("9+7=", "016", False),       # but a different string is
        ("R:abcde=", "edcba", True),
        ("R:abcde=", "abcde", False),
        ("S:39182=", "12389", True),
        ("S:39182=", "12398", False),
        ("S:3=", "", False),
    ],
)
def test_graders_on_hand_made_cases(prompt: str, output: str, ok: bool) -> None:
    assert grade(prompt, output) is ok


def test_grade_rejects_foreign_prompt() -> None:
    with pytest.raises(ValueError, match="valid families: add, rev, sort"):
        grade("hello", "x")


def test_generated_answers_are_correct_and_levels_are_graded() -> None:
    items = generate_split("val", 20)
    assert len(items) == 20 * len(FAMILIES) * len(LEVELS)
    for it in items:
        assert grade(it.prompt, it.answer)
        assert split_of(it.prompt) == "val"
    adds = {lvl: [it for it in items if it.family == "add" and it.level == lvl] for lvl in LEVELS}
    for lvl, cell in adds.items():
        assert all(len(it.prompt.split("+")[0]) == lvl for it in cell)
    revs = [it for it in items if it.family == "rev" and it.level == 4]
    assert all(11 <= len(it.answer) <= 12 for it in revs)


def test_splits_are_disjoint() -> None:
    train = {it.prompt for it in generate_split("train", 200)}
    val = {it.prompt for it in generate_split("val", 100)}
    test = {it.prompt for it in generate_split("test", 100)}
    assert not train & val and not train & test and not val & test
    assert len(test) > 600  # enough distinct held-out prompts


def test_generation_is_deterministic_in_seed() -> None:
    a = generate_split("test", 5, seed=7)
    b = generate_split("test", 5, seed=7)
    c = generate_split("test", 5, seed=8)
    assert a == b
    assert a != c


def test_unknown_family_and_level_name_the_valid_values() -> None:
    with pytest.raises(ValueError, match=r"unknown task family 'mul'; valid families: add, rev, sort"):
        get_family("mul")
    with pytest.raises(ValueError, match=r"unknown task level 7; valid levels: 1, 2, 3, 4"):
        sample(random.Random(0), "add", 7, "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_split("dev", 1)
