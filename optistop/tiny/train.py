"""Train the tiny family from scratch and write weights, tokenizer and manifest.

$ python -m optistop.tiny.train --out models/tiny            # all three, about 25 min on one core
$ python -m optistop.tiny.train --out /tmp/t --member small --steps 5   # a smoke run
$ python -m optistop.tiny.train --family tiny-trt --out models/tiny-trt  # head size 64 (TensorRT-LLM), ~3 min

Loss is on answer tokens (and <eos>) only; the prompt is context. AdamW with linear warm-up and a
cosine decay. One torch thread: on this 2-core shared machine two threads ran 10-26x slower.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from optistop.tiny.members import FAMILIES, MEMBERS, Member, Recipe, qwen2_config
from optistop.tiny.tasks.suite import stream


def make_batch(tokenizer, pairs: list[tuple[str, str]]):
    """Right-padded (input_ids, attention_mask, labels) with labels only on the answer + <eos>."""
    import torch

    rows, label_rows = [], []
    for prompt, answer in pairs:
        p = tokenizer(prompt).input_ids  # <bos> + prompt characters
        a = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(p + a)
        label_rows.append([-100] * len(p) + a)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, : len(r)] = torch.tensor(lab)
    return ids, mask, labels


def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_member(member: Member, tokenizer, out_dir: Path, steps: int | None = None,
                 log_every: int = 100) -> dict[str, object]:
    """Train one member and save it with ``save_pretrained``; returns its training record."""
    import torch
    from transformers import Qwen2ForCausalLM

    recipe = member.recipe if steps is None else Recipe(**{**member.recipe.to_dict(), "steps": steps})
    torch.set_num_threads(1)
    torch.manual_seed(recipe.seed)
    config = qwen2_config(member.shape, len(tokenizer), tokenizer.bos_token_id,
                          tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    data = stream("train", recipe.seed)
    start, loss_val = time.perf_counter(), float("nan")
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        ids, mask, labels = make_batch(tokenizer, [next(data) for _ in range(recipe.batch_size)])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_val = loss.detach().item()
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            print(f"[{member.name}] step {step}/{recipe.steps} loss {loss_val:.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "shape": member.shape.__dict__,
        "recipe": recipe.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": loss_val,
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": 1,
    }


def main(argv: list[str] | None = None) -> None:
    import torch
    import transformers

    from optistop.tiny.tokenizer import build_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/tiny"))
    ap.add_argument("--family", choices=sorted(FAMILIES), default="tiny",
                    help="tiny (the CPU stand-ins) or tiny-trt (head size 64, for TensorRT-LLM engines)")
    ap.add_argument("--member", action="append", choices=sorted(MEMBERS),
                    help="train only these members (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke runs)")
    args = ap.parse_args(argv)

    tokenizer = build_tokenizer()
    # One record per member (not one shared manifest) so that members can train in parallel
    # processes; `python -m optistop.tiny.evaluate` folds the records, hashes and metrics into manifest.json.
    members = FAMILIES[args.family]
    for name in args.member or list(members):
        record = train_member(members[name], tokenizer, args.out / name, args.steps)
        record.update({"torch": torch.__version__, "transformers": transformers.__version__})
        if args.family != "tiny":
            record["family"] = args.family
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        (args.out / f"{name}.train.json").write_text(text, encoding="utf-8")
        print(f"[{name}] saved to {args.out / name} in {record['train_seconds']}s", flush=True)

if __name__ == "__main__":
    main()
