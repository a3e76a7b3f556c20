from __future__ import annotations

from pathlib import Path

from optistop.serving.tokenizers import load_tokenizer
from optistop.tiny.tasks import generate_split
from optistop.tiny.tokenizer import ALPHABET, build_tokenizer


def test_round_trip_and_specials(tmp_path: Path) -> None:
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)  # through transformers.AutoTokenizer
    for it in generate_split("val", 3):
        for text in (it.prompt, it.answer):
            ids = loaded(text).input_ids
            assert ids[0] == loaded.bos_token_id
            assert len(ids) == len(text) + 1          # one token per character
            assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert len(loaded) == 4 + len(ALPHABET)


def test_committed_members_share_one_tokenizer(tiny_dir: Path) -> None:
    files = {(tiny_dir / m / "tokenizer.json").read_bytes() for m in ("small", "medium", "large")}
    assert len(files) == 1
