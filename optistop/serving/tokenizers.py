"""A cascade's tokenizer for any model family: loading, chat templates, end tokens.

The cascade tokenizes once per request for every stage (all stages share one tokenizer, checked at load).
Raw text or OpenAI-style chat messages come in; the family's chat template is applied once when the spec
asks for it (``chat_template = true``) or when messages are sent, with the generation prompt added, as an
instruct model expects. The user's own text (the last user turn) is what the prompt features see, so the
predictor does not learn the template.

End tokens: TensorRT-LLM takes one ``end_id`` per request; every other end token of the family (e.g.
Qwen2.5-Instruct's ``<|endoftext|>`` beside ``<|im_end|>``) is a stop word. They come from the
tokenizer's ``eos_token`` and the checkpoint's generation_config.json ``eos_token_id`` (int or list).

Everything read from disk is read as UTF-8: inside a Triton backend process the locale is often ASCII,
and every byte-level BPE vocabulary holds non-ASCII bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


def load_tokenizer(path: str | Path):  # -> transformers.PreTrainedTokenizerFast
    """The family's tokenizer through transformers.AutoTokenizer (local files only, never a download)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def end_token_ids(tokenizer: Any, checkpoint: str | Path | None = None) -> tuple[int, ...]:
    """The family's end tokens, the tokenizer's eos first (the engine's ``end_id``), then the others."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    for d in (checkpoint, getattr(tokenizer, "name_or_path", None)):
        cfg = Path(d) / "generation_config.json" if d else None
        if cfg is not None and cfg.is_file():
            eos = json.loads(cfg.read_text(encoding="utf-8")).get("eos_token_id")
            for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []):
                if int(i) not in ids:
                    ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos_token and generation_config.json names no eos_token_id")
    return tuple(ids)


def parse_messages(raw: str) -> list[dict[str, str]]:
    """OpenAI-style messages from JSON; ValueError naming what is wrong and what is valid."""
    try:
        msgs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg} at character {exc.pos}); send a list such as "
                         '[{"role": "user", "content": "12+35="}]') from None
    if not isinstance(msgs, list) or not msgs:
        raise ValueError('must be a non-empty JSON list of {"role", "content"} objects')
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be an object with role in {list(ROLES)} and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError(f"the last message must come from the user, got role {out[-1]['role']!r}")
    return out


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]   # what every stage engine receives
    user_text: str         # the last user turn: what the prompt features see
    rendered: str          # the text the ids encode (template applied), for logs and collection


class PromptEncoder:
    """Text or messages -> token ids, the same way for every request and every stage."""

    def __init__(self, tokenizer: Any, chat_template: bool = False, system_prompt: str = "",
                 end_ids: Sequence[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not self.has_template:
            raise ValueError(f"cascade.chat_template is true but the tokenizer at "
                             f"{getattr(tokenizer, 'name_or_path', '?')} has no chat_template")
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.end_ids = tuple(end_ids) if end_ids else end_token_ids(tokenizer)
        self.end_id = self.end_ids[0]
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.end_id)
        self._fast = _backend(tokenizer)

    @classmethod
    def for_spec(cls, spec: Any) -> PromptEncoder:
        tok = load_tokenizer(spec.tokenizer)
        checkpoint = spec.stages[0].checkpoint if spec.stages else None
        return cls(tok, spec.chat_template, spec.system_prompt, end_token_ids(tok, checkpoint))

    def encode(self, text: str | None = None, messages: list[dict[str, str]] | None = None) -> Prompt:
        """Exactly one of ``text`` and ``messages``. Without a chat template in the family, messages
        reduce to the last user turn's text (the family was trained on raw prompts)."""
        if (text is None) == (messages is None):
            raise ValueError("give exactly one of text and messages")
        if messages is None:
            assert text is not None
            if not self.chat_template:
                return Prompt(self._ids(text, True), text, text)
            messages = [{"role": "user", "content": text}]
        user_text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        if not self.has_template:
            return Prompt(self._ids(user_text, True), user_text, user_text)
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return Prompt(self._ids(rendered, False), user_text, rendered)  # the template has its specials

    def _ids(self, text: str, add_special_tokens: bool) -> tuple[int, ...]:
        if self._fast is not None:
            return tuple(self._fast.encode(text, add_special_tokens=add_special_tokens).ids)
        return tuple(int(i) for i in self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def token_ids(self, text: str) -> tuple[int, ...]:
        """``text`` alone as token ids (no template, no special tokens): how a stop word is generated."""
        return self._ids(text, False)

    def decode(self, ids: Sequence[int]) -> str:
        if self._fast is None:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        text = self._fast.decode(list(ids), skip_special_tokens=True)
        # what transformers' decode adds after the Rust tokenizer's (the family's own setting)
        return self.tokenizer.clean_up_tokenization(text) if self.tokenizer.clean_up_tokenization_spaces else text


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer under a fast transformers tokenizer, set up as transformers calls it (no
    truncation, no padding), or None for a slow one. Calling it directly gives the same ids for a
    twentieth of the time: transformers' __call__ wraps every request in BatchEncoding machinery."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    fast.no_truncation()
    fast.no_padding()
    return fast
