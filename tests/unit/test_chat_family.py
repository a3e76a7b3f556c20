"""The chat family (Qwen2.5-Instruct-shaped): task, grader, splits, tokenizer and template, committed files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from optistop.serving.tokenizers import PromptEncoder, end_token_ids, load_tokenizer
from optistop.tiny.chat import generate_split, grade, grade_answer, grader, number_to_words, split_of

CHAT = Path(__file__).resolve().parents[2] / "models" / "chat"


@pytest.mark.parametrize(("n", "words"), [(0, "zero"), (7, "seven"), (40, "forty"), (71, "seventy-one"),
                                          (4071, "four thousand seventy-one"), (100000, "one hundred thousand"),
                                          (982311, "nine hundred eighty-two thousand three hundred eleven")])
def test_number_to_words_by_hand(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_grader_forgives_case_hyphens_and_and_only() -> None:
    assert grade_answer("seventy-one", "Seventy one.") and grader("four thousand and seventy-one", "four thousand "
                                                                  "seventy-one")
    assert not grade_answer("seventy-one", "seventy-two") and grade("Write 71 in words.", "seventy-one")


def test_splits_are_disjoint_by_prompt() -> None:
    seen = {s: {it.prompt for it in generate_split(s, 30, seed=1)} for s in ("train", "val", "test")}
    assert not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])
    assert all(split_of(p) == s for s, ps in seen.items() for p in ps)


def test_tokenizer_template_and_end_tokens() -> None:
    tok = load_tokenizer(CHAT / "small")
    ids = end_token_ids(tok, CHAT / "small")
    assert tok.convert_ids_to_tokens(list(ids)) == ["<|im_end|>", "<|endoftext|>"]
    enc = PromptEncoder(tok, chat_template=True)
    p = enc.encode(text="Write 4071 in words.")
    assert p.rendered.endswith("<|im_start|>assistant\n") and p.user_text == "Write 4071 in words."
    assert enc.encode(messages=[{"role": "user", "content": "Write 4071 in words."}]) == p
    assert "Write 4071" in tok.decode(list(p.ids))


def test_committed_files_match_the_manifest() -> None:
    manifest = json.loads((CHAT / "manifest.json").read_text())
    for name, member in manifest["members"].items():
        for f, digest in member["sha256"].items():
            assert hashlib.sha256((CHAT / name / f).read_bytes()).hexdigest() == digest, (name, f)
        assert member["stops_at_im_end"] == 1.0
    acc = [manifest["members"][m]["accuracy"] for m in ("small", "medium", "large")]
    assert acc == sorted(acc) and acc[0] >= 0.4
