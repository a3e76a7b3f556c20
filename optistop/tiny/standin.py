"""A large-vocabulary stand-in for a real checkpoint, built at run time: nothing is downloaded.

$ python -m optistop.tiny.standin --out /tmp/standin                 # Qwen2.5-0.5B widths, 2 of its 24 layers

A randomly initialised ``Qwen2ForCausalLM`` with a real vocabulary size (Qwen2.5's 151,936 rows) and,
by default, the widths of Qwen2.5-0.5B (896 / 4,864, 14 heads, 2 KV heads, tied embeddings) with fewer
layers. It takes the chat family's tokenizer (models/chat/small: byte-level BPE, ChatML, 459 tokens),
its vocabulary padded to the embedding's rows, so prompts encode exactly as the chat family's and the
model's costs are those of a real vocabulary: the prefill's vocabulary projection, the log-softmax per
token, the size of the embedding. Its answers are noise (it is untrained), and ids past the tokenizer's
459 decode to nothing: it is for speed and shape, not for quality.

The same seed and shape give identical weights (one torch RNG seeded before construction).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from optistop import ROOT

CHAT_TOKENIZER = ROOT / "models" / "chat" / "small"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
QWEN25_VOCAB = 151_936
# Qwen2.5-0.5B-Instruct's config.json widths (its 24 layers are what `layers` cuts)
QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
              "num_key_value_heads": 2}
# The smallest shape with the real vocabulary: for unit tests (39 MB of weights, builds in ~0.3 s)
TEST_SHAPE = {"hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4, "num_key_value_heads": 2}


def standin_config(layers: int = 2, vocab_size: int = QWEN25_VOCAB, max_positions: int = 4096,
                   **shape: int) -> Any:
    """A Qwen2Config of the given shape (default QWEN25_05B widths) with the chat tokenizer's special ids."""
    from transformers import Qwen2Config

    chat = json.loads((CHAT_TOKENIZER / "config.json").read_text(encoding="utf-8"))
    if vocab_size < chat["vocab_size"]:
        raise ValueError(f"vocab_size {vocab_size} is below the chat tokenizer's {chat['vocab_size']} tokens")
    widths = {**QWEN25_05B, **shape}
    return Qwen2Config(vocab_size=vocab_size, num_hidden_layers=layers, max_position_embeddings=max_positions,
                       tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       bos_token_id=chat["bos_token_id"], eos_token_id=chat["eos_token_id"],
                       pad_token_id=chat["pad_token_id"], **widths)


def build_standin(out: Path, layers: int = 2, seed: int = 0, vocab_size: int = QWEN25_VOCAB,
                  max_positions: int = 4096, **shape: int) -> Path:
    """Write the stand-in as a Hugging Face directory at ``out`` (weights + the chat tokenizer); returns it."""
    import torch
    from transformers import Qwen2ForCausalLM

    config = standin_config(layers, vocab_size, max_positions, **shape)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:   # the tokenizer's ids are a prefix of the padded vocabulary
        shutil.copyfile(CHAT_TOKENIZER / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.tiny.standin", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (Qwen2.5-0.5B has 24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-shape", action="store_true", help="the unit tests' narrow shape (width 64)")
    args = ap.parse_args(argv)
    path = build_standin(args.out, args.layers, args.seed, **(TEST_SHAPE if args.test_shape else {}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
