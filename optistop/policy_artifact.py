"""The policy artifact: everything fitted for the stopping rules, in one versioned JSON file.

Written by ``optistop calibrate`` / the replay (optistop.offline.policy_fit.fit_artifact) beside the ONNX
predictor as ``policy.json``; loaded by the cascade at startup and read by the report, so the server runs
exactly the rule (and lambda) the report measured. Contents:

    {"format": "optistop-policy/1", "stages": [...], "costs": [...],
     "use_ex_ante": bool, "use_agree": bool,
     "answer": {mask: (n, d) weights},                  # P(correct_j | x_S), lambda-free
     "grid": [{"lam": lam, "cont": {mask: {k: [w_q, w_c, cmax]}}}, ...],   # fitted-Q per lambda
     "operating": {"policy": "optimal" | "router" | "cascade" | "fixed:k", "lambda": lam | null,
                   "stages": [...], "thresholds": [...], "agree": bool},   # (the subset cascade's)
     "paper": {"lambda": lam, "platt": [[a, b], ...]},  # the paper's rule at the same target
     "criterion": {"target", "t_lcb", "confidence", "reference", "reference_stage", "test", "fit_share"},
     "calibration": {"n", "n_fit", ..., "path": [{"name", "param", "cost", "quality_rel", "certified",
                     "operating"}, ...]},   # the tested sequence, safest first: safer certified points
     "data_sha256": ..., "predictor": {...}}

Format 2 adds the ``cascade`` operating point (optistop.policy_cascade) and the criterion's confidence and
reference stage. Format 1 artifacts (operating ``threshold`` with start + thresholds, criterion with z)
still load and serve as before; a format this code does not know is refused with one line.

A request that names a lambda gets, for ``optimal``, the grid's nearest lambda (log scale: its fitted
continuation models exist there only) and, for ``router``, that exact lambda (it needs none); one that
names none gets the operating point. ``PolicyBook.make`` turns a request's (policy, lambda) into a kernel rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optistop.files import read_document
from optistop.policy import FixedRule, ModelRule, PaperRule, Policy, RandomRule, ThresholdRule, ante_rule
from optistop.policy_cascade import CascadeRule

FORMAT = "optistop-policy/2"
FORMATS = ("optistop-policy/1", FORMAT)   # what this code reads
FILE_NAME = "policy.json"


class PolicyArtifactError(ValueError):
    """A policy artifact that cannot be used; the message names the file and the problem."""


def _w(a: np.ndarray) -> list:
    return np.asarray(a, float).round(8).tolist()


def cont_to_json(cont: dict[int, dict[int, tuple[np.ndarray, np.ndarray, float]]]) -> dict:
    return {str(m): {str(k): [_w(a), _w(b), float(c)] for k, (a, b, c) in v.items()} for m, v in cont.items()}


def answer_to_json(answer: dict[int, np.ndarray]) -> dict:
    return {str(m): _w(w) for m, w in answer.items()}


class PolicyBook:
    """The served rules of one artifact: ``make(name, lam, seed)`` -> a kernel rule for one request."""

    def __init__(self, art: dict[str, Any], where: str = "policy artifact") -> None:
        if art.get("format") not in FORMATS:
            raise PolicyArtifactError(f"{where}: format {art.get('format')!r}, this code reads "
                                      f"{' or '.join(map(repr, FORMATS))}; rerun `optistop calibrate`")
        try:
            self.stages: list[str] = list(art["stages"])
            self.costs = np.asarray(art["costs"], float)
            self.n = len(self.stages)
            # the stage the promise is relative to (audits, on_drift = safer); format 1 named none: the last
            self.reference = int(art.get("criterion", {}).get("reference", self.n - 1))
            if not 0 <= self.reference < self.n:
                raise ValueError(f"criterion reference {self.reference} is not a stage (0..{self.n - 1})")
            self.use_ex_ante, self.use_agree = bool(art["use_ex_ante"]), bool(art["use_agree"])
            self.answer = {int(m): np.asarray(w, float) for m, w in art["answer"].items()}
            self.grid = sorted((float(g["lam"]), {int(m): {int(k): (np.asarray(x[0], float), np.asarray(x[1], float),
                                                                    float(x[2])) for k, x in v.items()}
                                                  for m, v in g["cont"].items()}) for g in art["grid"])
            op = art["operating"]
            self.default_policy: str = op["policy"]
            self.default_lambda: float = float(op["lambda"]) if op.get("lambda") is not None else self.grid[-1][0]
            self.operating = op
            paper = art.get("paper", {})
            self.paper_lambda = float(paper.get("lambda", 1.0))
            self.paper_platt = np.asarray(paper.get("platt", [[1.0, 0.0]] * len(self.stages)), float)
            if self.default_policy == "ante" and not self.use_ex_ante:
                raise ValueError("the operating policy 'ante' routes by ex-ante estimates, which this predictor "
                                 "does not give (use_ex_ante false)")
            if self.default_policy == "threshold":
                self.threshold_rule: Policy = ThresholdRule(int(op["start"]), np.asarray(op["thresholds"], float))
            elif self.default_policy == "cascade":
                self.threshold_rule = CascadeRule(tuple(int(k) for k in op["stages"]),
                                                  np.asarray(op["thresholds"], float), bool(op.get("agree", False)))
                if max(self.threshold_rule.stages) >= len(self.stages):   # type: ignore[attr-defined]
                    raise ValueError(f"operating stages {op['stages']} name a stage beyond {len(self.stages)}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PolicyArtifactError(f"{where}: malformed ({type(exc).__name__}: {exc}); rerun `optistop "
                                      f"calibrate`") from None
        if len(self.costs) != self.n or not self.grid:
            raise PolicyArtifactError(f"{where}: needs one cost per stage and a non-empty lambda grid")
        self.art = art
        self._log_grid = [math.log(max(g, 1e-12)) for g, _ in self.grid]
        # built once, shared by requests: model rules are stateless after their first decision at each
        # history (optistop.policy.ModelRule.plan), so a request pays a dict lookup, not a construction
        self._rules: dict[tuple[str, int], ModelRule] = {}
        # requests may name any lambda: a bounded, thread-safe cache of built routers
        self._router = functools.lru_cache(maxsize=64)(self._build_router)
        self._ante = functools.lru_cache(maxsize=64)(lambda lam: ante_rule(self.costs, lam))

    def _build_router(self, lam: float) -> ModelRule:
        return ModelRule(self.n, self.costs, lam, self.use_ex_ante, self.use_agree, self.answer, {},
                         router_only=True, name="router")

    def check_matches(self, stages: Sequence[str], costs: Sequence[float], where: str) -> None:
        """Refuse a policy fitted for other stages or costs than the spec's (one line, both named)."""
        if list(stages) != self.stages or not np.allclose(costs, self.costs):
            raise PolicyArtifactError(f"{where}: fitted for stages {self.stages} with costs {self.costs.tolist()}, "
                                      f"but the spec has stages {list(stages)} with costs {list(costs)}; "
                                      f"recalibrate with `optistop calibrate` for this spec")

    def _grid_index(self, lam: float) -> int:
        """The grid point nearest to ``lam`` on a log scale."""
        target = math.log(max(lam, 1e-12))
        return min(range(len(self._log_grid)), key=lambda i: abs(self._log_grid[i] - target))

    def make(self, name: str | None, lam: float | None, seed: int = 0) -> tuple[Policy, float]:
        """(rule, lambda used) for a request; ValueError naming the valid policies."""
        name = name or self.default_policy
        base, _, arg = name.partition(":")
        if base == "fixed":
            if not arg.isdigit() or not 0 <= int(arg) < self.n:
                raise ValueError(f"unknown policy {name!r}; valid: {', '.join(self.valid_names())}")
            return FixedRule(int(arg), name), float(lam or 0.0)
        if base == "router" and not arg:
            # the router needs no fitted continuation, so it runs at the exact lambda (the operating point
            # was certified on a finer lambda grid than the fitted-Q one)
            use = float(self.default_lambda if lam is None else lam)
            return self._router(use), use
        if base == "ante" and not arg and self.use_ex_ante:
            use = float(self.default_lambda if lam is None else lam)
            return self._ante(use), use
        if base == "optimal" and not arg:
            i = self._grid_index(self.default_lambda if lam is None else lam)
            rule = self._rules.get((base, i))
            if rule is None:
                grid_lam, cont = self.grid[i]
                rule = self._rules[(base, i)] = ModelRule(
                    self.n, self.costs, grid_lam, self.use_ex_ante, self.use_agree, self.answer, cont, name=base)
            return rule, rule.lam
        if base == "paper" and not arg:
            use = self.paper_lambda if lam is None else lam
            return PaperRule(self.costs, use, self.paper_platt), use
        if base in ("threshold", "cascade") and not arg and self.default_policy == base:
            return self.threshold_rule, float(lam or 0.0)
        if base == "random" and not arg:
            return RandomRule(seed), float(lam or 0.0)
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(self.valid_names())}")

    def valid_names(self) -> list[str]:
        names = ["optimal", "router", *(["ante"] if self.use_ex_ante else []), "paper", f"fixed:0..{self.n - 1}",
                 "random"]
        return names + ([self.default_policy] if self.default_policy in ("threshold", "cascade") else [])


def load_policy(path: str | Path) -> PolicyBook:
    path = Path(path)
    art = read_document(path, PolicyArtifactError, missing="policy artifact not found; run `optistop calibrate`")
    return PolicyBook(art, str(path))
