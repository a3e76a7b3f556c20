"""The chat family: Qwen2.5-Instruct-shaped models (byte-level BPE, ChatML, <|im_end|>) on "numbers in words".

The task asks for a number written out in English words ("Write 4071 in words." -> "four thousand
seventy-one"). Answers are several tokens long (1 to 14), exactly checkable, and graded by the
number of digits: level 1 is 0..99, level 2 three or four digits, level 3 five or six, level 4 seven to
nine (millions). Long numbers need the model to find each digit's place value from the length of the
number, which extra depth and training buy, so the members separate on level 4 while all do well on
level 1.

Splits are disjoint by construction, as in the tiny family's suite: the user prompt's sha256 picks
its split and generators reject prompts that hash elsewhere. Nothing here imports from ``optistop``
so the module can move without breaking.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from optistop.tiny.members import Member, Recipe, Shape

# --- the task -------------------------------------------------------------------------------------

LEVELS: tuple[int, ...] = (1, 2, 3, 4)
LEVEL_DIGITS: dict[int, tuple[int, ...]] = {1: (1, 2), 2: (3, 4), 3: (5, 6), 4: (7, 8, 9)}
# Training mix per level: the hard levels carry most of what there is to learn.
TRAIN_LEVEL_WEIGHTS: tuple[int, ...] = (1, 2, 3, 4)
# Natural instructions; several phrasings so that the models key on the number, not on one string.
PHRASINGS: tuple[str, ...] = (
    "Write {n} in words.",
    "Spell out the number {n}.",
    "How do you write {n} in words?",
    "Please write the number {n} in English words.",
    "Convert {n} to words.",
    "What is {n} in words?",
)
SYSTEM_PROMPT = "You are a helpful assistant."  # the template's default, as in Qwen2-Instruct

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n > 0:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """American English without "and": 4071 -> "four thousand seventy-one" (0 <= n < 10**9)."""
    if not 0 <= n < 1_000_000_000:
        raise ValueError(f"number out of range 0..999999999: {n}")
    if n == 0:
        return "zero"
    millions, rest = divmod(n, 1_000_000)
    thousands, ones = divmod(rest, 1000)
    words = (_below_thousand(millions) + ["million"] if millions else [])
    words += (_below_thousand(thousands) + ["thousand"] if thousands else [])
    return " ".join(words + _below_thousand(ones))


def _random_number(rng: random.Random, level: int) -> int:
    """A number of the level's length; inner zeros are over-sampled because they drop words."""
    digits = rng.choice(LEVEL_DIGITS[level])
    if digits <= 2:
        return rng.randrange(0, 100)
    first = str(rng.randint(1, 9))
    rest = "".join("0" if rng.random() < 0.25 else str(rng.randint(1, 9)) for _ in range(digits - 1))
    return int(first + rest)


# --- splits ---------------------------------------------------------------------------------------

SPLITS: dict[str, range] = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}
_SPLIT_SEED = {"train": 1_000, "val": 2_000, "test": 3_000}


@dataclass(frozen=True)
class Item:
    """One labelled prompt; ``prompt`` is the user's text, ``answer`` the reference words."""

    id: str
    level: int
    prompt: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_prompt_record(self) -> dict[str, object]:
        """The issue's collect format: ``{"id", "messages", "reference"}``."""
        return {"id": self.id, "messages": self.messages(), "reference": self.answer}


def split_of(prompt: str) -> str:
    """The split a user prompt belongs to (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 10
    for name, buckets in SPLITS.items():
        if bucket in buckets:
            return name
    raise AssertionError("hash buckets do not cover 0..9")


def _check(split: str, level: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; valid levels: {LEVELS}")


def sample(rng: random.Random, level: int, split: str) -> tuple[str, str]:
    """One (user prompt, answer) of ``level`` that belongs to ``split``."""
    _check(split, level)
    while True:
        n = _random_number(rng, level)
        prompt = rng.choice(PHRASINGS).format(n=n)
        if split_of(prompt) == split:
            return prompt, number_to_words(n)


def generate_split(split: str, per_level: int, seed: int = 0,
                   levels: tuple[int, ...] = LEVELS) -> list[Item]:
    """``per_level`` items for each level, deterministic in ``seed``. Level 1 may repeat items."""
    items: list[Item] = []
    for lvl in levels:
        _check(split, lvl)
        rng = random.Random(f"chat/{seed}/{_SPLIT_SEED[split]}/{lvl}")
        for i in range(per_level):
            prompt, answer = sample(rng, lvl, split)
            items.append(Item(f"{split}-words-{lvl}-{i}", lvl, prompt, answer))
    return items


def stream(split: str, seed: int) -> Iterator[tuple[str, str]]:
    """Endless (user prompt, answer) stream for training, levels drawn by ``TRAIN_LEVEL_WEIGHTS``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    rng = random.Random(f"chat-stream/{seed}/{split}")
    while True:
        level = rng.choices(LEVELS, weights=TRAIN_LEVEL_WEIGHTS)[0]
        yield sample(rng, level, split)


# --- grading --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+")


def normalise(text: str) -> str:
    """Case, hyphens, commas, a final period and British "and" do not count; every word does."""
    words = re.sub(r"[-,.!]", " ", text.strip().lower()).split()
    return " ".join(w for w in words if w != "and")


def grade_answer(reference: str, output: str) -> bool:
    return normalise(output) == normalise(reference)


def grade(prompt: str, output: str) -> bool:
    """Grade ``output`` for a user prompt by solving the prompt independently."""
    numbers = _NUMBER.findall(prompt)
    if len(numbers) != 1:
        raise ValueError(f"prompt {prompt!r} does not hold exactly one number to write in words")
    return grade_answer(number_to_words(int(numbers[0])), output)


# --- the family -----------------------------------------------------------------------------------

MAX_POSITIONS = 256  # prompt (~30 tokens) + answer (<= 15) + room for a generous max_tokens
VOCAB_SIZE = 512     # BPE target before the 3 special tokens; the corpus may stop it earlier
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Qwen2's order

# ChatML as in Qwen2-Instruct: a default system turn when none is given; the generation prompt opens
# the assistant turn. Tool calls are left out: nothing in this family uses them.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The template in plain Python, for building the tokenizer's corpus before a tokenizer exists.
    ``train.py`` checks that it agrees with ``apply_chat_template`` on the saved tokenizer."""
    out = "" if messages[0]["role"] == "system" else f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
    out += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


# Shapes and recipes are the tiny family's types (optistop.tiny.members); batch 64 and a shorter warm-up here.
MEMBERS: dict[str, Member] = {
    "small": Member("small", Shape(64, 2, 4, 2, 192), Recipe(steps=1200, batch_size=64, warmup=60)),
    "medium": Member("medium", Shape(96, 3, 4, 2, 288), Recipe(steps=1200, batch_size=64, warmup=60)),
    "large": Member("large", Shape(128, 4, 4, 2, 384), Recipe(steps=1500, batch_size=64, warmup=60)),
}


def qwen2_config(shape: Shape, vocab_size: int, endoftext_id: int, im_end_id: int):
    """Qwen2.5-Instruct's conventions: bos = pad = <|endoftext|>, eos = <|im_end|>, tied embeddings."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.ffn,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=endoftext_id,
        eos_token_id=im_end_id,
        pad_token_id=endoftext_id,
    )


def grader(response: str, reference: str, record: object = None) -> bool:
    """For ``optistop label --grader optistop.tiny.chat:grader`` (a user grader, module:function)."""
    return grade_answer(str(reference), response)


def main(argv: list[str] | None = None) -> int:
    """$ python -m optistop.tiny.chat --split val --per-level 100 --out prompts.jsonl   (collect's input)"""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m optistop.tiny.chat", description=main.__doc__)
    ap.add_argument("--split", default="val", choices=list(SPLITS))
    ap.add_argument("--per-level", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    items = generate_split(args.split, args.per_level, seed=args.seed)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(it.to_prompt_record()) + "\n" for it in items)
    print(f"wrote {len(items)} prompts to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
