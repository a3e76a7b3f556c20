"""Prefill with and without ``logits_to_keep=1`` on a large-vocabulary stand-in, side by side.

$ python -m optistop.perf.prefill                        # Qwen2.5-0.5B widths, 2 layers, 400-token prompt
$ python -m optistop.perf.prefill --layers 24 --batch 8   # the real depth (2 GB of weights)

The stand-in (optistop.tiny.standin) is a randomly initialised Qwen2 with Qwen2.5's 151,936-token
vocabulary, built at run time. One prefill step is the runner's first forward (optistop.engines.runner
``generate_ids``): the prompt through the model with a KV cache, then the log-softmax of the last
position. "before" projects every prompt position onto the vocabulary (what the runner did), "after" only
the last (``logits_to_keep=1``, what it does now). Rounds alternate the two so drift in the machine's
load falls on both; the median of each is printed with the ratio, in wall time and in process CPU time
(with one torch thread: what an idle core would take, whatever else loads the machine), plus the
runner's whole prefill (``generate_ids`` with one new token) and its decode time per token at this
batch, for sizing ``timeout_per_token_s``. The first tokens chosen by both variants are checked to be equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.perf.prefill", description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (Qwen2.5-0.5B has 24)")
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--decode-tokens", type=int, default=16, help="tokens for the decode-per-token figure")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the stage engines use 1)")
    args = ap.parse_args(argv)
    import torch

    from optistop.engines.runner import StageModel
    from optistop.tiny.standin import build_standin

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = build_standin(Path(tmp) / "standin", layers=args.layers,
                             max_positions=args.prompt_tokens + args.decode_tokens + 8)
        built = time.perf_counter() - t0
        sm = StageModel(path, threads=args.threads)
    cfg = sm.model.config
    print(f"stand-in: Qwen2 {cfg.hidden_size} wide, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size:,}, "
          f"{sm.n_params / 1e6:.0f}M params (built in {built:.1f} s); prompt {args.prompt_tokens} tokens, "
          f"batch {args.batch}, {args.threads} torch thread(s)")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 459, (args.batch, args.prompt_tokens), generator=g)   # the chat tokenizer's ids
    mask = torch.ones_like(ids)
    pos = torch.arange(args.prompt_tokens)[None].expand(args.batch, -1)

    def timed(fn):  # (wall s, process CPU s, result): CPU time is what an idle core would take
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - w, time.process_time() - c, out

    def prefill(keep: int) -> torch.Tensor:
        with torch.inference_mode():
            out = sm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=keep)
            return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).argmax(-1)

    prefill(1)   # warm-up: allocator, kernels
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        w0, c0, best_before = timed(lambda: prefill(0))   # 0: every position's logits
        w1, c1, best_after = timed(lambda: prefill(1))
        times["before"].append((w0, c0))
        times["after"].append((w1, c1))
        if not torch.equal(best_before, best_after):
            print("error: the two variants chose different first tokens", file=sys.stderr)
            return 1
    print(f"{'prefill step, median of ' + str(args.rounds):30s} {'before (all logits)':>20s} "
          f"{'after (last only)':>18s} {'after/before':>13s}")
    for col, label in ((0, "wall ms"), (1, "CPU ms (idle-core time)")):
        before = statistics.median(t[col] for t in times["before"])
        after = statistics.median(t[col] for t in times["after"])
        print(f"{label:30s} {before * 1e3:20.1f} {after * 1e3:18.1f} {after / before:13.3f}   "
              f"({(1 - after / before) * 100:.0f}% faster)")
    rows = [[int(x) for x in row] for row in ids]
    w1, c1, _ = timed(lambda: sm.generate_ids(rows, 1, end_id=-1))
    wn, cn, _ = timed(lambda: sm.generate_ids(rows, args.decode_tokens + 1, end_id=-1))
    per_w, per_c = (wn - w1) / args.decode_tokens, (cn - c1) / args.decode_tokens
    print(f"runner: generate_ids prefill + 1 token {w1 * 1e3:.0f} ms wall / {c1 * 1e3:.0f} ms CPU; decode per "
          f"token at batch {args.batch}: {per_w * 1e3:.0f} ms wall / {per_c * 1e3:.0f} ms CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
