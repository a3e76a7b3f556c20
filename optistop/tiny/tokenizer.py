"""Character-level tokenizer shared by the whole tiny family.

Built with the ``tokenizers`` library and saved as ``tokenizer.json`` so that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads it like any Hugging Face tokenizer. The
post-processor prepends ``<bos>``; generation stops at ``<eos>``.
"""

from __future__ import annotations

from optistop.tiny.tasks.kinds import DIGITS, LETTERS, SYMBOLS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
ALPHABET: str = DIGITS + LETTERS + SYMBOLS + " "


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A fast tokenizer with one token per character of ``ALPHABET``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in ALPHABET:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token; Fuse joins decoded characters without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
