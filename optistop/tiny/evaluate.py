"""Evaluate the tiny family on the held-out test split and write the manifest.

$ python -m optistop.tiny.evaluate --models models/tiny --out artifacts/tiny_eval.json

Accuracy is measured with batched greedy decoding; latency at batch 1 with the members interleaved
prompt by prompt, so that drift of this shared machine hits every member alike. The manifest
(models/tiny/manifest.json) gets the training records, sha256 per file and these figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from optistop.tiny.members import MEMBERS
from optistop.tiny.tasks import generate_split, grade
from optistop.tiny.tasks.suite import Item

TEST_PER_CELL = 60     # 3 families x 4 levels x 60 = 720 held-out items
LATENCY_PER_CELL = 10  # 120 prompts at batch 1 per member


def sha256_files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def accuracy_table(items: list[Item], correct: list[bool]) -> dict[str, object]:
    by_family: dict[str, list[bool]] = defaultdict(list)
    by_level: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item, ok in zip(items, correct):
        by_family[item.family].append(ok)
        by_level[item.family][str(item.level)].append(ok)
    mean = lambda xs: round(sum(xs) / len(xs), 4)
    return {
        "accuracy": mean(correct),
        "accuracy_by_family": {f: mean(v) for f, v in by_family.items()},
        "accuracy_by_level": {f: {lv: mean(v) for lv, v in d.items()} for f, d in by_level.items()},
    }


def hierarchy_checks(results: dict[str, dict]) -> dict[str, object]:
    """The acceptance conditions of the family, evaluated on measured figures."""
    names = [n for n in MEMBERS if n in results]
    acc = [results[n]["accuracy"] for n in names]
    lat = [results[n]["latency_ms"] for n in names]
    fams = results[names[0]]["accuracy_by_family"]
    hardest = min(fams, key=lambda f: statistics.mean(results[n]["accuracy_by_family"][f] for n in names))
    top = str(max(int(lv) for lv in results[names[0]]["accuracy_by_level"][hardest]))
    hard = [results[n]["accuracy_by_level"][hardest][top] for n in names]
    return {
        "hardest_family": hardest,
        "hardest_level": int(top),
        "hardest_cell_accuracy": dict(zip(names, hard)),
        "accuracy_strictly_increasing": all(a < b for a, b in zip(acc, acc[1:])),
        "hardest_cell_gap_at_least_10_points": all(b - a >= 0.10 for a, b in zip(hard, hard[1:])),
        "smallest_at_least_40_percent": acc[0] >= 0.40,
        "latency_strictly_increasing": all(a < b for a, b in zip(lat, lat[1:])),
    }


def main(argv: list[str] | None = None) -> int:
    from optistop.engines.runner import StageModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models/tiny"))
    ap.add_argument("--out", type=Path, default=Path("artifacts/tiny_eval.json"))
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args(argv)

    names = [n for n in MEMBERS if (args.models / n / "config.json").exists()]
    if not names:
        print(f"error: no trained members under {args.models}; run `make models-train`")
        return 2
    models = {n: StageModel(args.models / n) for n in names}
    items = generate_split("test", TEST_PER_CELL)
    results: dict[str, dict] = {}
    for n, m in models.items():
        gens = []
        for i in range(0, len(items), 64):
            gens += m.generate([it.prompt for it in items[i:i + 64]], args.max_tokens)
        results[n] = accuracy_table(items, [grade(it.prompt, g.text) for it, g in zip(items, gens)])
        results[n]["params"] = m.n_params
        results[n]["n_test_items"] = len(items)

    lat_items = generate_split("test", LATENCY_PER_CELL, seed=1)
    times: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, int] = {n: 0 for n in names}
    for it in lat_items:
        for n, m in models.items():  # interleaved: one prompt on every member, then the next
            t0 = time.perf_counter()
            g = m.generate([it.prompt], args.max_tokens)[0]
            times[n].append(time.perf_counter() - t0)
            tokens[n] += len(g.generated.token_ids) + 1  # + the end token it also computed
    for n in names:
        results[n]["latency_ms"] = round(1e3 * statistics.mean(times[n]), 3)
        results[n]["latency_p50_ms"] = round(1e3 * statistics.median(times[n]), 3)
        results[n]["tokens_per_s"] = round(tokens[n] / sum(times[n]), 1)

    checks = hierarchy_checks(results)
    report = {"members": results, "checks": checks, "n_latency_prompts": len(lat_items)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    manifest_path = args.models / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    manifest.setdefault("members", {})
    manifest["command"] = "make models-train && make models-eval"
    manifest["checks"] = checks
    for n in names:
        record_path = args.models / f"{n}.train.json"
        entry = manifest["members"].setdefault(n, {})
        if record_path.exists():
            entry["training"] = json.loads(record_path.read_text(encoding="utf-8"))
        entry["sha256"] = sha256_files(args.models / n)
        entry.update({k: results[n][k] for k in ("accuracy", "accuracy_by_family", "accuracy_by_level",
                                                 "latency_ms", "tokens_per_s", "params")})
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    print(f"{'member':8s} {'params':>8s} {'acc':>6s} " + " ".join(
        f"{f}:{'/'.join(results[names[0]]['accuracy_by_level'][f])}".rjust(22)
        for f in results[names[0]]['accuracy_by_level']) + f" {'ms/prompt':>9s} {'tok/s':>7s}")
    for n in names:
        r = results[n]
        cells = " ".join(("/".join(f"{100 * v:.0f}" for v in r["accuracy_by_level"][f].values())).rjust(22)
                         for f in r["accuracy_by_level"])
        print(f"{n:8s} {r['params']:8d} {100 * r['accuracy']:5.1f}% {cells} {r['latency_ms']:9.2f} "
              f"{r['tokens_per_s']:7.0f}")
    print("checks:", json.dumps(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
