"""The report's figures (matplotlib, Agg backend). Every title states the data and n."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optistop.policy import optimal_thresholds, paper_thresholds  # noqa: E402

_META = {"Software": None}          # no version stamp: byte-identical reruns
LABEL = {"optimal": "optimal (fitted s)", "optimal_s0": "optimal (s = 0)", "paper": "paper (sec. 5.3)"}


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=_META)
    plt.close(fig)
    return path.name


def pareto(name: str, res: dict, path: Path) -> str:
    """Quality (relative to the last stage) vs mean cost over the lambda sweep, held-out."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for p, style in (("optimal", "-o"), ("optimal_s0", ":."), ("paper", "--s")):
        if p in res["sweep"]:
            pts = sorted((r["cost"], r["quality_rel"]) for r in res["sweep"][p])
            ax.plot(*zip(*pts, strict=True), style, ms=3, label=LABEL[p] + " (lambda sweep)")
    pol = res["policies"]
    n, ref = res["n"], res["accuracy"][-1]
    for p, m in pol.items():
        if p.startswith("fixed:") or p in ("random", "oracle"):
            half = 1.96 * np.sqrt(max(m["quality"] * (1 - m["quality"]), 1e-12) / n) / ref
            ax.errorbar(m["cost"], m["quality_rel"], yerr=half, fmt="k^" if p == "oracle" else "kD", ms=5)
            lab = res["stages"][int(p[6:])] if p.startswith("fixed:") else p
            ax.annotate(lab, (m["cost"], m["quality_rel"]), fontsize=7, xytext=(4, -10),
                        textcoords="offset points")
    for p, mk in (("optimal", "r*"), ("paper", "b*")):
        if p in pol:
            m = pol[p]
            half = 1.96 * np.sqrt(max(m["quality"] * (1 - m["quality"]), 1e-12) / n) / ref
            ax.errorbar(m["cost"], m["quality_rel"], yerr=half, fmt=mk, ms=11,
                        label=f"{LABEL[p]} at the operating point")
    ax.axhline(res["target"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("mean cost per prompt (all stages run are paid)")
    ax.set_ylabel("quality / quality of the last stage")
    ax.set_title(f"{name}: quality vs cost, held-out (cross-fitted), n = {n}\n"
                 f"bars: 95% interval; dotted line: target {res['target']:.0%}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def thresholds(costs: Sequence[float], ex_ante: Sequence[float], resolution: Sequence[float], what: str,
               path: Path) -> str:
    """Figure 2(a) redone: thresholds vs lambda, the paper's rule and the optimal one."""
    lams = np.geomspace(0.1, 1000, 120)
    pth = paper_thresholds(lams, costs)
    oth = optimal_thresholds(lams, costs, ex_ante, resolution)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i in range(len(costs) - 1):
        ax.plot(lams, pth[:, i], "--", label=f"paper, after stage {i}")
        ax.plot(lams, oth[:, i], "-", label=f"optimal, after stage {i}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("lambda (price of one unit of quality, in cost units)")
    ax.set_ylabel("confidence needed to stop")
    r = ", ".join(f"{x:.2f}" for x in ex_ante)
    s = ", ".join(f"{x:.2f}" for x in resolution)
    ax.set_title(f"Thresholds vs lambda (fig. 2a redone); costs {list(costs)}\n"
                 f"optimal uses ex-ante r = ({r}), resolution s = ({s}):\n{what}", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


def stage_distribution(results: dict[str, dict], path: Path) -> str:
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        res = results[name]
        pols = [p for p in ("optimal", "paper", "random", "oracle") if p in res["policies"]]
        bottom = np.zeros(len(pols))
        for k, stage in enumerate(res["stages"]):
            share = np.array([res["policies"][p]["stage_dist"][k] for p in pols])
            ax.bar(pols, share, bottom=bottom, label=stage.split("/")[-1][:24])
            bottom += share
        ax.set_title(f"{name}, held-out, n = {res['n']}\nshare of prompts answered by each stage", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return _save(fig, path)


def regret(curves: dict[str, dict], path: Path) -> str:
    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        c = curves[name]
        t = np.asarray(c["T"], float)
        for fb, col in (("full", "C0"), ("explore", "C3")):
            if fb not in c["feedback"]:
                continue
            d = c["feedback"][fb]
            m, sd = np.asarray(d["regret_mean"]), np.asarray(d["regret_sd"])
            ax.plot(t, np.maximum(m, 1e-2), color=col, label=f"{fb} feedback (mean of {c['seeds']} seeds)")
            ax.fill_between(t, np.maximum(m - sd, 1e-2), np.maximum(m + sd, 1e-2), color=col, alpha=0.15)
            f = d["fit"]
            ax.plot(t, f["sqrtT_logT"]["c"] * np.sqrt(t) * np.log(t), color=col, ls="--", lw=0.8,
                    label=f"fit {f['sqrtT_logT']['c']:.3g} sqrt(T) log T (R2 {f['sqrtT_logT']['r2']:.2f})")
            if "power" in f:
                ax.plot(t, f["power"]["c"] * t ** f["power"]["a"], color=col, ls=":", lw=0.8,
                        label=f"fit T^{f['power']['a']:.2f} (R2 {f['power']['r2']:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (prompts)")
        ax.set_ylabel("regret vs best fixed thresholds in hindsight\n(loss units: costs + lambda (1 - q), scaled)")
        ax.set_title(f"{name}: {c['n_prompts']} prompts resampled, K = {c['K']} rules, lambda = "
                     f"{c['lam']:.3g}", fontsize=8)
        ax.legend(fontsize=6)
    return _save(fig, path)
