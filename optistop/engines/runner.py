"""The stage runner: greedy generation with per-token log-probs from a Hugging Face causal-LM directory.

One implementation serves the embedded stage engines (model_repository/stage_*), the predictor's label
collection and the tests. It works for any Qwen2-architecture checkpoint given by path, the tiny family
or a real Qwen2.5 directory alike.

Semantics follow TensorRT-LLM's ``tensorrt_llm`` model: generation stops at ``end_id``; the end token
is not part of the returned tokens; ``hit_max_tokens`` says that no end token came within the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Generated:
    """Generated tokens of one sequence (the end token excluded) and their log-probs."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    hit_max_tokens: bool

    @property
    def cum_logprob(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class Sampling:
    """One sequence's sampling (TensorRT-LLM's temperature / runtime_top_k / runtime_top_p / random_seed):
    the next token is drawn from softmax(logits / temperature) cut to the top_k tokens (0: no cut) and to
    the smallest set holding top_p of the probability, with a generator seeded by ``seed``."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def _draw(logprobs, rows: list[tuple[int, Sampling, object]]):
    """The sampled next token of each listed row; ``logprobs``: (B, V) log-softmax of the logits."""
    import torch

    out = {}
    for i, s, gen in rows:
        scaled = logprobs[i] / s.temperature
        if 0 < s.top_k < scaled.numel():
            kth = torch.topk(scaled, s.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, -1)
        if s.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= s.top_p    # keep the smallest prefix reaching top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        out[i] = int(torch.multinomial(probs, 1, generator=gen))
    return out


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str
    generated: Generated
    latency_ms: float = field(default=0.0, compare=False)


class StageModel:
    """A loaded causal LM plus its tokenizer. Loading is explicit (no work at import)."""

    def __init__(self, path: str | Path, threads: int | None = 1) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"{self.path}: not a Hugging Face model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=torch.float32)
        self.model.eval()
        self.end_id: int = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else self.end_id)
        self.max_positions: int = int(self.model.config.max_position_embeddings)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt).input_ids)

    def decode(self, ids: tuple[int, ...] | list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate_ids(self, batch: list[list[int]], max_new_tokens: int, end_id: int | None = None,
                     stop_words: tuple[tuple[int, ...], ...] = (),
                     on_token: Callable[[int, int, float], bool] | None = None,
                     sampling: Sequence[Sampling | None] = ()) -> list[Generated]:
        """Greedy decoding for a batch of token-id lists (left-padded internally), with KV cache;
        ``sampling[i]`` (when given and not None) samples row i instead. Log-probs are the model's own
        (temperature 1, before top-k/top-p), what the quality predictor's features were fitted on.

        A sequence also ends once its tokens end with one of ``stop_words``; the stop word stays in
        its output (unlike ``end_id``), as in TensorRT-LLM. ``on_token(row, token_id, logprob)`` is called
        as each token is chosen (what a streaming engine sends); returning False stops that row there (a
        cancelled request), the others go on."""
        import torch

        if not batch:
            return []
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if any(len(ids) == 0 for ids in batch):
            raise ValueError("every sequence needs at least one input token")
        longest = max(len(ids) for ids in batch)
        if longest + max_new_tokens > self.max_positions:
            raise ValueError(f"input of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                             f"model context of {self.max_positions} positions")
        end = self.end_id if end_id is None else int(end_id)
        n = len(batch)
        ids = torch.full((n, longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, longest - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, longest - len(row):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift RoPE
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool)
        # one seeded generator per sampled row: a request's tokens do not depend on its batch mates
        samplers = [(i, smp, torch.Generator().manual_seed(smp.seed % 2**63))
                    for i, smp in enumerate(sampling) if smp is not None]
        past = None
        step_ids, step_pos = ids, positions
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                # logits_to_keep=1: the prefill projects only the last position onto the vocabulary,
                # (B, 1, V) instead of (B, T, V): at a real vocabulary (151,936) that projection is most
                # of a long prompt's prefill, and at 4,096 tokens x batch 8 it would be ~20 GB
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                                 cache=past, use_cache=True, logits_to_keep=1)
                past = out.cache
                logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
                best = logprobs.argmax(-1)                                           # (B,)
                if samplers:
                    for i, token in _draw(logprobs, [r for r in samplers if not done[r[0]]]).items():
                        best[i] = token
                best_lp = logprobs.gather(-1, best[:, None])[:, 0]
                for i in range(n):
                    if done[i]:
                        continue
                    if int(best[i]) == end:
                        done[i] = True
                    else:
                        tokens[i].append(int(best[i]))
                        logps[i].append(float(best_lp[i]))
                        done[i] = any(tuple(tokens[i][-len(w):]) == w for w in stop_words)
                        if on_token is not None and not on_token(i, tokens[i][-1], logps[i][-1]):
                            done[i] = True
                if bool(done.all()):
                    break
                step_ids = best[:, None]
                step_pos = step_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        return [Generated(tuple(t), tuple(lp), hit_max_tokens=not bool(d))
                for t, lp, d in zip(tokens, logps, done)]

    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[Generation]:
        """Tokenize, generate and decode; latency is the wall time of the whole batch."""
        start = time.perf_counter()
        outs = self.generate_ids([self.encode(p) for p in prompts], max_new_tokens)
        ms = (time.perf_counter() - start) * 1e3
        return [Generation(p, self.decode(g.token_ids), g, ms) for p, g in zip(prompts, outs)]
