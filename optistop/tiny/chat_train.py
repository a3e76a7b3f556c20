"""Train the chat family from scratch: tokenizer, then each member, in Hugging Face format.

$ python -m optistop.tiny.chat_train --out models/chat                       # all members, about 10 min on one core
$ python -m optistop.tiny.chat_train --out /tmp/c --member small --steps 5   # a smoke run

Every example is a ChatML conversation rendered with the saved tokenizer's own chat template;
loss is on the assistant's answer and its <|im_end|> only, so the models learn to stop. AdamW with
linear warm-up and cosine decay. One torch thread: deterministic, and on this shared 2-core machine
more threads were slower, not faster.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from optistop.tiny.chat import MEMBERS, SPECIAL_TOKENS, Member, Recipe, qwen2_config, render_chat, stream
from optistop.tiny.chat_tokenizer import load, write_tokenizer


class Encoder:
    """Turns (user prompt, answer) pairs into training rows with the tokenizer's chat template."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.pad_token_id

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def answer_ids(self, answer: str) -> list[int]:
        return list(self.tok(answer, add_special_tokens=False).input_ids) + [self.im_end]

    def batch(self, pairs: list[tuple[str, str]]):
        """Right-padded (input_ids, attention_mask, labels) with labels on the answer + <|im_end|>."""
        import torch

        rows, label_rows = [], []
        for prompt, answer in pairs:
            p, a = self.prompt_ids(prompt), self.answer_ids(answer)
            rows.append(p + a)
            label_rows.append([-100] * len(p) + a)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, label_rows)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            labels[i, : len(r)] = torch.tensor(lab)
        return ids, mask, labels


def check_tokenizer(tokenizer) -> None:
    """Fail early if the saved template or the split into prompt + answer tokens drifts."""
    msgs = [{"role": "user", "content": "Write 4071 in words."}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if text != render_chat(msgs):
        raise AssertionError(f"chat template renders {text!r}, expected {render_chat(msgs)!r}")
    enc = Encoder(tokenizer)
    joint = tokenizer(text + "four thousand seventy-one<|im_end|>", add_special_tokens=False).input_ids
    if list(joint) != enc.prompt_ids(msgs[0]["content"]) + enc.answer_ids("four thousand seventy-one"):
        raise AssertionError("prompt and answer tokenise differently apart than together")


def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_member(member: Member, tokenizer, tok_dir: Path, out_dir: Path, steps: int | None = None,
                 log_every: int = 100) -> dict[str, object]:
    """Train one member and save weights, configs and the shared tokenizer files into ``out_dir``."""
    import shutil

    import torch
    from transformers import Qwen2ForCausalLM

    recipe = member.recipe if steps is None else Recipe(**{**member.recipe.to_dict(), "steps": steps})
    torch.set_num_threads(1)
    torch.manual_seed(recipe.seed)
    endoftext, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>"))
    model = Qwen2ForCausalLM(qwen2_config(member.shape, len(tokenizer), endoftext, im_end))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    enc, data = Encoder(tokenizer), stream("train", recipe.seed)
    # CPU seconds too: on a shared machine wall time says more about the neighbours than the model.
    start, cpu_start, loss_val = time.perf_counter(), time.process_time(), float("nan")
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        ids, mask, labels = enc.batch([next(data) for _ in range(recipe.batch_size)])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_val = loss.detach().item()
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            print(f"[{member.name}] step {step}/{recipe.steps} loss {loss_val:.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    # Qwen2.5-Instruct's generation_config: stop at <|im_end|> or <|endoftext|>; greedy here because
    # the product decodes greedily and a checkable task has one right answer.
    gc = model.generation_config
    gc.bos_token_id, gc.pad_token_id, gc.eos_token_id = endoftext, endoftext, [im_end, endoftext]
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # byte-identical in every member
        shutil.copyfile(tok_dir / name, out_dir / name)
    return {
        "shape": member.shape.__dict__,
        "recipe": recipe.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": loss_val,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "torch_threads": 1,
    }


def main(argv: list[str] | None = None) -> None:
    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/chat"))
    ap.add_argument("--member", action="append", choices=sorted(MEMBERS),
                    help="train only these members (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke runs)")
    args = ap.parse_args(argv)

    tok_dir = args.out / "tokenizer"
    write_tokenizer(tok_dir)
    tokenizer = load(tok_dir)
    check_tokenizer(tokenizer)
    assert all(tokenizer.convert_tokens_to_ids(t) is not None for t in SPECIAL_TOKENS)
    # One record per member so members can be trained one at a time; evaluate.py folds the records,
    # hashes and metrics into manifest.json.
    for name in args.member or list(MEMBERS):
        record = train_member(MEMBERS[name], tokenizer, tok_dir, args.out / name, args.steps)
        record.update({"torch": torch.__version__, "transformers": transformers.__version__})
        (args.out / f"{name}.train.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(f"[{name}] saved to {args.out / name} in {record['train_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
