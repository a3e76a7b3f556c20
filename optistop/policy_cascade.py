"""The threshold cascade over any ordered subset of stages, as a served kernel rule (optistop.policy).

``CascadeRule(stages, thresholds, agree)``: run ``stages[0]`` first (any stage: start anywhere), then after
stage ``stages[j]`` (j < m - 1) stop iff its score >= ``thresholds[j]``, else run ``stages[j + 1]`` (stages not
listed are skipped); ``stages[-1]`` always answers. The score is the stage's confidence, plus 1 when
``agree`` and its answer text equals the previous listed stage's (answer ids as the served cascade builds
them, optistop.cascade): a threshold t <= 1 then stops on agreement *or* confidence >= t, a threshold
1 < t <= 2 on agreement *and* confidence >= t - 1. One scalar per stage covers both uses of agreement.
Fitted by optistop.offline.cascades; the served operating point when it is the cheapest certified rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optistop.policy import Decision, One, State, _empty, last_run


@dataclass
class CascadeRule:
    stages: tuple[int, ...]
    thresholds: np.ndarray          # (len(stages) - 1,)
    agree: bool = False
    name: str = "cascade"
    uses_ex_ante: bool = False

    def __post_init__(self) -> None:
        self.stages = tuple(int(k) for k in self.stages)
        self.thresholds = np.asarray(self.thresholds, float).reshape(-1)
        if not self.stages or len(self.thresholds) != len(self.stages) - 1 or \
                any(b <= a for a, b in zip(self.stages, self.stages[1:])):
            raise ValueError(f"cascade: stages {self.stages} must be increasing with one threshold per stage "
                             f"but the last ({len(self.thresholds)} given)")
        self._pos = {k: j for j, k in enumerate(self.stages)}

    def to_json(self) -> dict:
        return {"policy": "cascade", "lambda": None, "stages": list(self.stages), "agree": self.agree,
                "thresholds": [float(t) if np.isfinite(t) else 1e9 for t in self.thresholds]}

    def decide(self, s: State) -> Decision:
        N = s.conf.shape[0]
        d = _empty(N)
        last = last_run(s.conf)
        d.next_stage[last < 0] = self.stages[0]
        for k, j in self._pos.items():
            rows = np.flatnonzero(last == k)
            if not rows.size:
                continue
            if j == len(self.stages) - 1:
                d.stop[rows], d.answer_stage[rows], d.threshold[rows] = True, k, 0.0
                continue
            score = s.conf[rows, k].copy()
            if self.agree and j > 0 and s.resp is not None:
                prev = self.stages[j - 1]
                score += (s.resp[rows, k] == s.resp[rows, prev]) & (s.resp[rows, k] >= 0)
            stop = score >= self.thresholds[j]
            d.stop[rows], d.threshold[rows] = stop, min(max(float(self.thresholds[j]), 0.0), 1.0)
            d.answer_stage[rows[stop]] = k
            d.next_stage[rows[~stop]] = self.stages[j + 1]
        if np.any((last >= 0) & ~np.isin(last, self.stages)):
            raise RuntimeError(f"cascade {self.stages}: a stage outside the cascade ran")
        return d

    def decide_one(self, conf: Sequence[float], ex_ante: Sequence[float] | None,
                   resp: Sequence[int] | None) -> One:
        ran = [k for k, c in enumerate(conf) if c == c]   # NaN != NaN: not run
        if not ran:
            return One(False, self.stages[0], -1, 1.0)
        k = ran[-1]
        j = self._pos.get(k)
        if j is None:
            raise RuntimeError(f"cascade {self.stages}: stage {k}, outside the cascade, ran")
        if j == len(self.stages) - 1:
            return One(True, -1, k, 0.0)
        score = float(conf[k])
        if self.agree and j > 0 and resp is not None:
            prev = self.stages[j - 1]
            score += float(resp[k] == resp[prev] and resp[k] >= 0)
        th = float(self.thresholds[j])
        shown = min(max(th, 0.0), 1.0)
        return One(True, -1, k, shown) if score >= th else One(False, self.stages[j + 1], -1, shown)
