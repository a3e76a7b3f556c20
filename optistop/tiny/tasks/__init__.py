"""Task families with exact-match graders and graded difficulty.

Every family turns (rng, level) into an (prompt, answer) pair; prompts are plain text such as
``"4821+377="`` and answers are strings graded by exact match. Splits are disjoint by construction:
a prompt belongs to exactly one split, decided by a hash of its text (see ``split_of``).
"""

from optistop.tiny.tasks.kinds import FAMILIES, LEVELS, Family, get_family
from optistop.tiny.tasks.suite import SPLITS, Item, generate_split, grade, split_of

__all__ = [
    "FAMILIES",
    "LEVELS",
    "SPLITS",
    "Family",
    "Item",
    "generate_split",
    "get_family",
    "grade",
    "split_of",
]
