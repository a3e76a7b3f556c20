"""Replay records -> checked arrays, and the policy artifact the server loads (optistop.policy_artifact).

``arrays_from_records`` validates before anything is fitted: every line has the same stages with the
same costs, ``correct`` is present, and ``confidence`` / ``ex_ante`` are numbers in [0, 1] (NaN fails);
one line names the record's line number and the field. Nothing is clipped.

``build_artifact`` fits everything a served request needs on a calibration set: the model of later stages
(lambda-free answer models), fitted-Q at every lambda of the grid, the operating point chosen with a
stated confidence (optistop.offline.policy_fit.choose), the paper's rule at the same target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from optistop.offline import policy_fit as F
from optistop.policy_artifact import FORMAT, answer_to_json, cont_to_json


class ReplayInputError(ValueError):
    """A replay record that cannot be used; the message names the line and the field."""


def _prob(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 <= float(v) <= 1.0):
        raise ReplayInputError(f"{where}: {v!r} is not a probability in [0, 1] (log-probabilities and raw scores "
                               f"must be mapped to a probability first; NaN is not allowed)")
    return float(v)


def arrays_from_records(records: Sequence[dict[str, Any]], lines: Sequence[int] | None = None,
                        need_confidence: bool = True) -> F.Arrays:
    """Checked arrays; ``lines[i]`` is record i's line number in its file (1-based) for messages."""
    if not records:
        raise ReplayInputError("replay: no records")
    first = records[0].get("stages")
    if not isinstance(first, list) or not first:
        raise ReplayInputError(f"line {lines[0] if lines else 1}: field 'stages' must be a non-empty list")
    n = len(first)
    costs = []
    for k, s in enumerate(first):
        c = s.get("cost")
        if isinstance(c, bool) or not isinstance(c, int | float) or not (math.isfinite(c) and c > 0):
            raise ReplayInputError(f"line {lines[0] if lines else 1}: stages[{k}].cost: {c!r} is not a cost > 0")
        costs.append(float(c))
    conf = np.full((len(records), n), np.nan)
    ex = np.full((len(records), n), np.nan)
    correct = np.zeros((len(records), n), bool)
    has_ex = True
    vocab: dict[str, int] = {}
    resp = np.full((len(records), n), -1)
    for i, r in enumerate(records):
        ln = lines[i] if lines else i + 1
        st = r.get("stages")
        if not isinstance(st, list) or len(st) != n:
            raise ReplayInputError(f"line {ln}: stages: {len(st) if isinstance(st, list) else st!r} stages, "
                                   f"expected {n} as on the first line")
        for k, s in enumerate(st):
            w = f"line {ln}: stages[{k}]"
            if "correct" not in s or not isinstance(s["correct"], bool | int):
                raise ReplayInputError(f"{w}.correct: missing or not a boolean")
            if s.get("cost") != costs[k] and float(s.get("cost", -1)) != costs[k]:
                raise ReplayInputError(f"{w}.cost: {s.get('cost')!r} differs from {costs[k]} on the first line")
            correct[i, k] = bool(s["correct"])
            if s.get("confidence") is not None:
                conf[i, k] = _prob(s["confidence"], f"{w}.confidence")
            elif need_confidence:
                raise ReplayInputError(f"{w}.confidence: missing (the probability that this answer is right)")
            if s.get("ex_ante") is not None:
                ex[i, k] = _prob(s["ex_ante"], f"{w}.ex_ante")
            else:
                has_ex = False
            if isinstance(s.get("response"), str) and s["response"].strip():
                resp[i, k] = vocab.setdefault(" ".join(s["response"].split()), len(vocab))
    return F.Arrays(conf, correct, np.asarray(costs), ex if has_ex else None, resp if (resp >= 0).any() else None)


def build_artifact(cal: F.Arrays, stages: Sequence[str], crit: F.Criterion, seed: int = 0,
                   lambdas: tuple[float, ...] = F.LAMBDAS, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(artifact, choice info). The grid covers every lambda, so a request's own lambda is served too."""
    # fitted-Q is a comparator only (policy_fit.COMPARATOR_ONLY): its grid below serves it by name
    ch = F.choose(cal, crit, seed, lambdas, names=stages, optimal=False)
    # the served operating point is the rule certified as fitted on the fitting part, so the model rules
    # served at a request's own lambda come from the same part (one set of answer models for all)
    fit = cal.take(ch["fit_idx"])
    answer = ch["answer"]
    grid = [{"lam": lam, "cont": cont_to_json(
        ch["rule"].cont if ch["choice"] == ("optimal", lam) else F.fit_optimal(fit, lam, answer).cont)}
        for lam in lambdas]
    name, param = ch["choice"]
    rule = ch["rule"]
    op = F.operating_json((name, param, rule, 0.0, 0.0))   # the one mapping from a candidate to policy.json
    paper = F.paper_at_target(cal, crit.target)
    q, c = F.outcome(rule, cal)
    ref = ch["reference"]
    last = max(cal.correct[:, ref].mean(), 1e-12)
    art = {"format": FORMAT, "stages": list(stages), "costs": cal.costs.tolist(),
           "use_ex_ante": cal.ex_ante is not None, "use_agree": cal.resp is not None,
           "answer": answer_to_json(answer), "grid": grid, "operating": op,
           "paper": {"lambda": paper.lam, "platt": paper.platt.round(8).tolist()},
           "criterion": {"target": crit.target, "t_lcb": crit.t_lcb, "confidence": crit.confidence,
                         "reference": ref, "reference_stage": list(stages)[ref], "test": crit.test,
                         "fit_share": crit.fit_share},
           "calibration": {"n": int(len(cal.conf)), "n_fit": int(len(ch["fit_idx"])),
                           "quality_rel_in_sample": round(float(q.mean() / last), 6),
                           "cost_in_sample": round(float(c.mean()), 6), "path": ch["path"]}, **extra}
    return art, ch
