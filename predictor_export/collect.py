"""Collect quality labels from real stage outputs: every stage of the cascade spec over the task suite.

$ python predictor_export/collect.py --spec cascade.toml --out artifacts/collected.jsonl   # ~1-2 min, 2 cores

Each stage runs with optistop.engines.runner.StageModel (the runner behind the embedded stage engines), greedy,
max_new_tokens = the spec's max_tokens_default, in fixed batches; the task suite's grader labels each
answer. Splits are the suite's disjoint train / val / test splits (optistop.tiny.tasks.generate_split).

Output: one JSON object per line, one line per item (the replay schema):
    {"id", "prompt", "split", "family", "level", "answer",
     "stages": [{"model": stage name, "cost": spec cost, "correct": bool, "response": decoded text,
                 "token_ids": [generated ids, end token excluded], "logprobs": [nats, one per token],
                 "hit_max_tokens": bool, "latency_ms": batch wall time / batch size,
                 "batch_size": int}, ... one entry per stage, in spec order]}
plus ``<out>.meta.json`` (spec, sizes, seed, max tokens, versions, timing). Labels depend only on the
models and the seed (``optistop.predictor.model.data_sha256`` hashes everything but the timing fields).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from optistop.spec import DEFAULT_SPEC, SpecError, load_spec
from optistop.tiny.tasks import SPLITS, generate_split, grade
from optistop.tiny.tasks.suite import Item

PER_CELL = {"train": 100, "val": 300, "test": 100}   # x 12 cells (3 families x 4 levels)


def run_stage(position: int, name: str, checkpoint: str, prompts: list[str], max_tokens: int,
              batch_size: int) -> list[dict[str, Any]]:
    """Greedy generations of one stage for every prompt (runs in a worker process, one torch thread)."""
    from tqdm import tqdm

    from optistop.engines.runner import StageModel

    model = StageModel(checkpoint, threads=1)
    out: list[dict[str, Any]] = []
    with tqdm(total=len(prompts), desc=f"{name:8s}", position=position, leave=True, file=sys.stderr,
              mininterval=1.0) as bar:
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i:i + batch_size]
            for g in model.generate(batch, max_tokens):
                out.append({"response": g.text, "token_ids": list(g.generated.token_ids),
                            "logprobs": list(g.generated.logprobs),
                            "hit_max_tokens": g.generated.hit_max_tokens,
                            "latency_ms": round(g.latency_ms / len(batch), 4), "batch_size": len(batch)})
            bar.update(len(batch))
    return out


def items_for(per_cell: dict[str, int], seed: int) -> list[Item]:
    items: list[Item] = []
    for split in SPLITS:
        items += generate_split(split, per_cell[split], seed=seed)
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--out", type=Path, default=Path("artifacts/collected.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    for split, n in PER_CELL.items():
        ap.add_argument(f"--{split}-per-cell", type=int, default=n, help=f"items per cell (default {n})")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"error: {exc} (train the tiny family first: `make models-train`)", file=sys.stderr)
        return 2
    per_cell = {s: getattr(args, f"{s}_per_cell") for s in SPLITS}
    items = items_for(per_cell, args.seed)
    prompts = [it.prompt for it in items]
    max_tokens = spec.max_tokens_default
    sizes = ", ".join(f"{s}: {per_cell[s] * len(items) // sum(per_cell.values())}" for s in SPLITS)
    print(f"collecting {len(items)} items ({sizes}) x {len(spec.stages)} stages, max_tokens={max_tokens}, "
          f"{args.workers} workers", file=sys.stderr)
    t0 = time.perf_counter()
    order = sorted(range(len(spec.stages)), key=lambda i: -spec.stages[i].cost)  # longest job first
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {i: pool.submit(run_stage, pos, spec.stages[i].name, str(spec.stages[i].checkpoint),
                                  prompts, max_tokens, args.batch_size) for pos, i in enumerate(order)}
        outputs = {i: f.result() for i, f in futures.items()}
    seconds = time.perf_counter() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    correct: dict[tuple[str, str], list[bool]] = {}
    with open(tmp, "w", encoding="utf-8") as fh:
        for k, it in enumerate(items):
            stages = []
            for i, st in enumerate(spec.stages):
                gen = outputs[i][k]
                ok = grade(it.prompt, gen["response"])
                correct.setdefault((st.name, it.id.split("-")[0]), []).append(ok)
                stages.append({"model": st.name, "cost": st.cost, "correct": ok, **gen})
            split = it.id.split("-")[0]
            rec = {"id": it.id, "prompt": it.prompt, "split": split, "family": it.family, "level": it.level,
                   "answer": it.answer, "stages": stages}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    accuracy = {f"{name}/{split}": round(sum(v) / len(v), 4) for (name, split), v in sorted(correct.items())}
    meta = {"spec": str(spec.source), "stages": list(spec.stage_names), "costs": list(spec.costs),
            "per_cell": per_cell, "n_items": len(items), "seed": args.seed, "max_tokens": max_tokens,
            "batch_size": args.batch_size, "decoding": "greedy", "accuracy": accuracy,
            "seconds": round(seconds, 1), "python": platform.python_version()}
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} ({len(items)} items) in {seconds:.0f} s; accuracy: {json.dumps(accuracy)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
