"""The chat family's tokenizer: byte-level BPE with Qwen2's pre-tokenizer and ChatML special tokens.

Shaped like Qwen2.5's tokenizer.json so that the product's "any tokenizer" paths meet the same
structure a real checkpoint has: Qwen2's split regex (digits one at a time, letters with one leading
non-letter) followed by ByteLevel without its own regex; ByteLevel decoder; no BOS added; the special
tokens after the learned vocabulary in Qwen2's order. Trained on a fixed generated corpus, so the
files are byte-identical from run to run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from optistop.tiny.chat import (
    CHAT_TEMPLATE,
    MAX_POSITIONS,
    PHRASINGS,
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    VOCAB_SIZE,
    render_chat,
    stream,
)

# Qwen2's pre-tokenizer pattern, verbatim.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS_SIZE = 20_000  # conversations; enough that every word of the task appears many times
EXTRA_TEXT = (  # plain English so that system prompts and follow-ups other than ours tokenise sensibly
    "You are a helpful assistant. Answer the question. Reply with words only. Thank you! "
    "What is the answer? Please answer briefly, in lowercase, without digits."
)


def corpus(seed: int = 0) -> list[str]:
    """Rendered train-split conversations (prompt + answer + <|im_end|>) and the phrasings."""
    data = stream("train", seed)
    texts = [render_chat([{"role": "user", "content": p}]) + a + "<|im_end|>\n"
             for p, a in (next(data) for _ in range(CORPUS_SIZE))]
    rng = random.Random(f"chat-tokenizer/{seed}")
    texts += [p.format(n=rng.randrange(1_000_000_000)) for p in PHRASINGS] + [EXTRA_TEXT, SYSTEM_PROMPT]
    return texts


def train_tokenizer(seed: int = 0):
    """A ``tokenizers.Tokenizer``; special tokens are added after training so they get the last ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    # Special tokens must not be learned from as text: strip them from the corpus, add them after.
    texts = corpus(seed)
    for s in SPECIAL_TOKENS:
        texts = [t.replace(s, "\n") for t in texts]
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def tokenizer_config() -> dict[str, object]:
    """tokenizer_config.json as Qwen2.5-Instruct writes it (less the tool-call template)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MAX_POSITIONS,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer(out_dir: Path, seed: int = 0) -> None:
    """Write tokenizer.json and tokenizer_config.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(seed).save(str(out_dir / "tokenizer.json"), pretty=True)
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load(directory: Path):
    """The tokenizer as the product loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))
