"""The report's figures (matplotlib, Agg backend). Every title states the data and n; no version stamp in
the files, so reruns are byte-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_META = {"Software": None}
TOL = 0.945


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=_META)
    plt.close(fig)
    return path.name


def cost_quality(name: str, r: dict[str, Any], path: Path) -> str:
    """Held-out quality (share of the reference stage's) vs mean cost: the served rule per seed, the served
    procedure's frontier over targets, the baselines of seed 0 as points, and the hindsight-tuned threshold
    cascade over stage subsets as a reference line (not a policy)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    hc = r.get("hindsight_curve") or []
    if hc:
        ax.plot([p[2] for p in hc], [p[1] for p in hc], "-", color="0.55", lw=1.5,
                label="threshold cascade tuned in hindsight on the evaluated data (reference)")
        hind = r["acceptance"]["hindsight_cost"]
        ax.axvline(1.1 * hind, color="0.55", ls=":", lw=1, label="1.10 x hindsight cost at 95%")
    sc = r.get("served_curve") or []
    if sc:
        ax.plot([p[2] for p in sc], [p[1] for p in sc], "-^", color="C3", lw=1, ms=4,
                label="served procedure at targets " + ", ".join(f"{p[0]:.0%}" for p in sc) + " (5-fold, seed 0)")
    seeds = r["by_seed"]
    ax.plot([s["cost"] for s in seeds], [s["quality_rel"] for s in seeds], "o", color="C3", ms=5, alpha=0.6,
            label=f"served rule, {len(seeds)} seeds (5-fold held-out)")
    markers = {"router": ("s", "C0"), "paper": ("v", "C2"), "random": ("x", "k")}
    for p, m in r["candidates"].items():
        if p == "served":
            continue
        mk, col = markers.get(p, ("D", "C1"))
        lab = f"fixed: {r['stages'][int(p[6:])].split('/')[-1]}" if p.startswith("fixed:") else p
        ax.plot(m["cost"], m["quality_rel"], mk, color=col, ms=6)
        ax.annotate(lab, (m["cost"], m["quality_rel"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axhline(TOL, color="C3", ls="--", lw=0.8, label="94.5% of the reference stage (acceptance)")
    ax.set_xlabel("mean cost per prompt (every stage run counts)")
    ax.set_ylabel("quality / reference stage's quality")
    ax.set_ylim(max(0.0, min([TOL - 0.1] + [m["quality_rel"] for m in r["candidates"].values()]) - 0.02), 1.04)
    ax.set_title(f"{r['label']}\nn = {r['n']}, held-out", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def small_curve(datasets: dict[str, dict[str, Any]], path: Path) -> str:
    """Cost (as a ratio to the hindsight cascade on the evaluated prompts) and miss rate against the number
    of fitting prompts."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    for k, r in datasets.items():
        sm = r.get("small") or {}
        if not sm:
            continue
        ms = sorted(sm, key=int)
        x = [int(m) for m in ms]
        a1.plot(x, [sm[m].get("ratio_to_hindsight", sm[m]["ratio_to_kfold"]) for m in ms], "-o", ms=4, label=k)
        a2.plot(x, [sm[m]["miss_rate"] for m in ms], "-o", ms=4, label=k)
    a1.axhline(1.25, color="0.5", ls="--", lw=0.8)
    a1.axhline(1.15, color="0.5", ls=":", lw=0.8)
    a2.axhline(0.10, color="0.5", ls="--", lw=0.8)
    a1.set_ylabel("cost / hindsight cascade cost")
    a2.set_ylabel("miss rate (quality < 94.5% of reference)")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("fitting prompts")
        ax.legend(fontsize=7)
    fig.suptitle("Small calibration sets: fit on m random prompts, evaluate on the rest", fontsize=9)
    return _save(fig, path)
