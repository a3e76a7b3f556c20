"""Loading a cascade's tokenizer, for any model family (Hugging Face format: tokenizer.json + config).

Everything read from disk is read as UTF-8: inside a Triton backend process the locale is often ASCII,
and every byte-level BPE vocabulary holds non-ASCII bytes.
"""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(path: str | Path):  # -> transformers.PreTrainedTokenizerFast
    """The family's tokenizer through transformers.AutoTokenizer (local files only, never a download)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
