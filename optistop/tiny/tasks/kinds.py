"""The synthetic task families: addition, reversal, digit sorting.

Difficulty levels run 1..4. What makes a level hard differs per family:
- ``add``: carrying over more digits (level L: the first operand has exactly L digits, the second
  1..L digits). Small models learn 1-digit sums quickly and carrying late.
- ``rev``: longer strings to reverse (copying by position needs attention that small models lack).
- ``sort``: more digits to sort.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

LEVELS: tuple[int, ...] = (1, 2, 3, 4)

# Character alphabet the tokenizer must cover; prompts and answers use nothing else.
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
SYMBOLS = "+=:RS"

# Reversal / sorting lengths per level (inclusive ranges).
_LENGTHS: dict[int, tuple[int, int]] = {1: (3, 4), 2: (5, 7), 3: (8, 10), 4: (11, 12)}


def _number(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _make_add(rng: random.Random, level: int) -> tuple[str, str]:
    a = _number(rng, level)
    b = _number(rng, rng.randint(1, level))
    return f"{a}+{b}=", str(a + b)


def _make_rev(rng: random.Random, level: int) -> tuple[str, str]:
    lo, hi = _LENGTHS[level]
    s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))
    return f"R:{s}=", s[::-1]


def _make_sort(rng: random.Random, level: int) -> tuple[str, str]:
    lo, hi = _LENGTHS[level]
    s = "".join(rng.choice(DIGITS) for _ in range(rng.randint(lo, hi)))
    return f"S:{s}=", "".join(sorted(s))


def _solve_add(prompt: str) -> str:
    a, b = prompt.rstrip("=").split("+")
    return str(int(a) + int(b))


def _solve_rev(prompt: str) -> str:
    return prompt[2:].rstrip("=")[::-1]


def _solve_sort(prompt: str) -> str:
    return "".join(sorted(prompt[2:].rstrip("=")))


@dataclass(frozen=True)
class Family:
    """A task family: a generator per level and an exact solver used by the grader."""

    name: str
    make: Callable[[random.Random, int], tuple[str, str]]
    solve: Callable[[str], str]
    matches: Callable[[str], bool]


FAMILIES: dict[str, Family] = {
    "add": Family("add", _make_add, _solve_add, lambda p: "+" in p),
    "rev": Family("rev", _make_rev, _solve_rev, lambda p: p.startswith("R:")),
    "sort": Family("sort", _make_sort, _solve_sort, lambda p: p.startswith("S:")),
}


def get_family(name: str) -> Family:
    """Return the family called ``name``; unknown names fail with the valid choices."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; valid families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_level(level: int) -> int:
    if level not in LEVELS:
        raise ValueError(f"unknown task level {level!r}; valid levels: {', '.join(map(str, LEVELS))}")
    return level
