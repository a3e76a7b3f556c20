"""Evaluate the chat family on the held-out test split and write manifest.json next to the members.

$ python -m optistop.tiny.chat_evaluate --models models/chat

Every prompt goes through the tokenizer's own chat template (add_generation_prompt=True), as the
product sends it. Accuracy uses batched greedy decoding; latency is batch 1 with the members
interleaved prompt by prompt, so drift of this shared machine hits every member alike. "Stops" is the
share of generations that end at <|im_end|> before max_new_tokens: the issue's acceptance test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from optistop.tiny.chat import LEVELS, MEMBERS, generate_split, grade

TEST_PER_LEVEL = 150    # 4 levels x 150 = 600 held-out items
LATENCY_PER_LEVEL = 10  # 40 prompts at batch 1 per member
COMMAND = ("make models-chat (python -m optistop.tiny.chat_train --out models/chat && "
           "python -m optistop.tiny.chat_evaluate --models models/chat)")


@dataclass(frozen=True)
class Output:
    text: str
    n_tokens: int
    stop_token: int | None  # None: ran to max_new_tokens


class Member:
    """A loaded member: greedy decoding with KV cache that stops at any of generation_config's eos ids."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad = int(self.tok.pad_token_id)
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def prompt_ids(self, user_text: str) -> list[int]:
        text = self.tok.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                            add_generation_prompt=True)
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Output]:
        import torch

        rows = [self.prompt_ids(p) for p in prompts]
        n, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding so that every row's next token is at the end
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # padding must not shift RoPE positions
        out: list[list[int]] = [[] for _ in range(n)]
        stop: list[int | None] = [None] * n
        cache, step_ids, step_pos = None, ids, pos
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                res = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                                 cache=cache, use_cache=True)
                cache, best = res.cache, res.logits[:, -1, :].argmax(-1)
                for i in range(n):
                    if stop[i] is None:
                        if int(best[i]) in self.stop_ids:
                            stop[i] = int(best[i])
                        else:
                            out[i].append(int(best[i]))
                if all(s is not None for s in stop):
                    break
                step_ids, step_pos = best[:, None], step_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        return [Output(self.tok.decode(o, skip_special_tokens=True), len(o), s) for o, s in zip(out, stop)]


def sha256_files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def checks(results: dict[str, dict]) -> dict[str, object]:
    """The family's acceptance conditions, on measured figures."""
    names = list(results)
    top = str(max(LEVELS))
    acc = [results[n]["accuracy"] for n in names]
    hard = [results[n]["accuracy_by_level"][top] for n in names]
    lat = [results[n]["latency_ms"] for n in names]
    return {
        "hardest_level": int(top),
        "hardest_level_accuracy": dict(zip(names, hard)),
        "accuracy_strictly_increasing": all(a < b for a, b in zip(acc, acc[1:])),
        "hardest_level_gap_at_least_10_points": all(b - a >= 0.10 for a, b in zip(hard, hard[1:])),
        "smallest_at_least_40_percent_on_level_1": results[names[0]]["accuracy_by_level"]["1"] >= 0.40,
        "latency_strictly_increasing": all(a < b for a, b in zip(lat, lat[1:])),
        "all_stop_at_im_end_99_percent": all(results[n]["stops_at_im_end"] >= 0.99 for n in names),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models/chat"))
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--per-level", type=int, default=TEST_PER_LEVEL)
    args = ap.parse_args(argv)

    names = [n for n in MEMBERS if (args.models / n / "config.json").exists()]
    if not names:
        print(f"error: no trained members under {args.models}; run train.py first")
        return 2
    members = {n: Member(args.models / n) for n in names}
    items = generate_split("test", args.per_level)
    results: dict[str, dict] = {}
    for n, m in members.items():
        outs: list[Output] = []
        for i in range(0, len(items), 50):
            outs += m.generate([it.prompt for it in items[i:i + 50]], args.max_tokens)
        im_end = m.tok.convert_tokens_to_ids("<|im_end|>")
        by_level: dict[str, list[bool]] = defaultdict(list)
        for it, o in zip(items, outs):
            by_level[str(it.level)].append(grade(it.prompt, o.text))
        mean = lambda xs: round(sum(xs) / len(xs), 4)
        results[n] = {
            "accuracy": mean([ok for v in by_level.values() for ok in v]),
            "accuracy_by_level": {lv: mean(v) for lv, v in by_level.items()},
            "stops_at_im_end": mean([o.stop_token == im_end for o in outs]),
            "mean_answer_tokens": round(statistics.mean(o.n_tokens for o in outs), 2),
            "params": m.n_params,
            "n_test_items": len(items),
            "examples": [{"prompt": it.prompt, "output": o.text, "reference": it.answer}
                         for it, o in list(zip(items, outs))[args.per_level - 1::args.per_level]],
        }

    lat_items = generate_split("test", LATENCY_PER_LEVEL, seed=1)
    times: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, int] = {n: 0 for n in names}
    for it in lat_items:
        for n, m in members.items():  # interleaved: one prompt on every member, then the next
            t0 = time.perf_counter()
            o = m.generate([it.prompt], args.max_tokens)[0]
            times[n].append(time.perf_counter() - t0)
            tokens[n] += o.n_tokens + 1  # + the end token it also computed
    for n in names:
        results[n]["latency_ms"] = round(1e3 * statistics.mean(times[n]), 3)
        results[n]["latency_p50_ms"] = round(1e3 * statistics.median(times[n]), 3)
        results[n]["tokens_per_s"] = round(tokens[n] / sum(times[n]), 1)

    tok = members[names[0]].tok
    manifest = {
        "family": "chat",
        "task": "numbers in words (optistop/tiny/chat.py): 'Write 4071 in words.' -> 'four thousand seventy-one'",
        "command": COMMAND,
        "checks": checks(results),
        "eval": {"test_items_per_level": args.per_level, "latency_prompts": len(lat_items),
                 "max_new_tokens": args.max_tokens, "torch_threads": 1},
        "tokenizer": {"vocab_size": len(tok), "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                      "special_ids": {t: tok.convert_tokens_to_ids(t)
                                      for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}},
        "members": {},
    }
    for n in names:
        record = args.models / f"{n}.train.json"
        entry = dict(results[n], sha256=sha256_files(args.models / n))
        if record.exists():
            entry["training"] = json.loads(record.read_text())
        manifest["members"][n] = entry
    (args.models / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    print(f"{'member':8s} {'params':>8s} {'acc':>6s} {'by level ' + '/'.join(map(str, LEVELS)):>20s} "
          f"{'stops':>6s} {'ms/prompt':>9s} {'tok/s':>6s}")
    for n in names:
        r = results[n]
        cells = "/".join(f"{100 * v:.0f}" for v in r["accuracy_by_level"].values())
        print(f"{n:8s} {r['params']:8d} {100 * r['accuracy']:5.1f}% {cells:>20s} "
              f"{100 * r['stops_at_im_end']:5.1f}% {r['latency_ms']:9.2f} {r['tokens_per_s']:6.0f}")
    print("checks:", json.dumps(manifest["checks"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
