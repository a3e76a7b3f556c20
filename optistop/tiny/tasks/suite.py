"""Deterministic, disjoint train / validation / test splits over all families and levels.

Disjointness is by construction, not by bookkeeping: ``split_of(prompt)`` hashes the prompt text and
every generator rejects prompts that hash into another split. Level 1 addition has few distinct
prompts, so items may repeat *within* a split; they never cross splits.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from optistop.tiny.tasks.kinds import FAMILIES, LEVELS, check_level, get_family

# Share of the prompt space per split, in tenths (hash bucket 0..9).
SPLITS: dict[str, range] = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}
# Seeds per split so that adding items to one split never changes another.
_SPLIT_SEED = {"train": 1_000, "val": 2_000, "test": 3_000}


@dataclass(frozen=True)
class Item:
    """One labelled prompt."""

    id: str
    family: str
    level: int
    prompt: str
    answer: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def split_of(prompt: str) -> str:
    """The split a prompt belongs to (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 10
    for name, buckets in SPLITS.items():
        if bucket in buckets:
            return name
    raise AssertionError("hash buckets do not cover 0..9")  # unreachable by construction


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def sample(rng: random.Random, family: str, level: int, split: str) -> tuple[str, str]:
    """One (prompt, answer) of ``family``/``level`` that belongs to ``split``."""
    fam = get_family(family)
    check_level(level)
    while True:
        prompt, answer = fam.make(rng, level)
        if split_of(prompt) == split:
            return prompt, answer


def generate_split(
    split: str,
    per_cell: int,
    seed: int = 0,
    families: tuple[str, ...] | None = None,
    levels: tuple[int, ...] | None = None,
) -> list[Item]:
    """``per_cell`` items for each (family, level) cell, deterministic in ``seed``."""
    _check_split(split)
    fams = tuple(families) if families else tuple(FAMILIES)
    lvls = tuple(levels) if levels else LEVELS
    items: list[Item] = []
    for fam in fams:
        get_family(fam)
        for lvl in lvls:
            check_level(lvl)
            rng = random.Random(f"{seed}/{_SPLIT_SEED[split]}/{fam}/{lvl}")
            for i in range(per_cell):
                prompt, answer = sample(rng, fam, lvl, split)
                items.append(Item(f"{split}-{fam}-{lvl}-{i}", fam, lvl, prompt, answer))
    return items


def stream(split: str, seed: int) -> Iterator[tuple[str, str]]:
    """Endless (prompt, answer) stream for training: families and levels uniformly at random."""
    _check_split(split)
    rng = random.Random(f"stream/{seed}/{split}")
    fams = tuple(FAMILIES)
    while True:
        yield sample(rng, rng.choice(fams), rng.choice(LEVELS), split)


def grade(prompt: str, output: str) -> bool:
    """Exact-match grade of ``output`` for ``prompt``, solving the prompt independently."""
    for fam in FAMILIES.values():
        if fam.matches(prompt):
            return output.strip() == fam.solve(prompt)
    raise ValueError(f"prompt {prompt!r} belongs to no task family; valid families: {', '.join(FAMILIES)}")
