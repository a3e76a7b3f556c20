"""Sequential drift detection and the audit budget, shared by the server (optistop.serving.audit) and its
offline twin (optistop.offline.stream). Pure Python.

Two one-sided Bernoulli CUSUMs (Page's test; README, "Knowing the quality you deliver"), each against a
baseline read on the calibration set for the rule in force:

- the *mix* warning, label-free, on every request: x = the request went on to the reference stage (was not
  accepted before it). Baseline p0 = the rule's share of calibration rows that reach the reference. Harder
  traffic is escalated more: this sees a shift within tens of requests, from traffic the cascade serves
  anyway, but it measures difficulty, not quality.
- the *quality* alarm, on audits of requests accepted before the reference (the only ones whose answer can
  differ from the reference's): x = the served answer disagrees with the reference's. Baseline p0 = the
  rule's disagreement among calibration rows it accepts before the reference.

Each CUSUM looks for a rise from p0 to p1 = p0 + ``delta``: S <- max(0, S + x log(p1/p0) + (1 - x)
log((1-p1)/(1-p0))), alarm when S >= h. Its false-alarm rate is set by h (measured on unshifted streams:
README). The drift alarm is the first of the two to cross.

The budget: each request earns ``rate`` audit credits (capped at ``bank``); an audit spends one, so audits
never exceed rate x requests + bank. In normal operation a share ``calm`` of the rate is spent; the rest is
banked and spent at once after a mix warning ("boost": every request accepted before the reference is
audited while credit lasts), so the quality alarm gets its audits when a shift is suspected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

H_MIX = 10.0         # the mix warning's threshold (README: false alarms on unshifted streams)
DELTA_MIX = 0.15     # the rise in the share reaching the reference it looks for
H_QUALITY = 6.0     # the quality alarm's threshold
DELTA_QUALITY = 0.12  # the rise in disagreement it looks for
CALM = 0.5           # share of the audit rate spent before a warning
BANK = 60.0          # audit credits kept for a boost


@dataclass
class Cusum:
    """One-sided Bernoulli CUSUM for a rise from ``p0`` to ``p0 + delta``; ``add`` True when it crosses."""

    p0: float
    delta: float
    h: float
    s: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.rebase(self.p0)

    def rebase(self, p0: float) -> None:
        """A new baseline (a new rule): start over."""
        self.p0 = min(max(p0, 1e-3), 0.99)
        p1 = min(self.p0 + self.delta, 0.999)
        self.up, self.down = math.log(p1 / self.p0), math.log((1 - p1) / (1 - self.p0))
        self.reset()

    def reset(self) -> None:
        self.s, self.n = 0.0, 0

    def add(self, x: bool) -> bool:
        was = self.s >= self.h
        self.s = max(0.0, self.s + (self.up if x else self.down))
        self.n += 1
        return self.s >= self.h and not was


@dataclass
class Budget:
    """Audit credits: ``rate`` per request (at most ``bank`` kept); ``draw`` decides one request's audit."""

    rate: float
    p_early: float = 1.0      # calibration share accepted before the reference (spends the calm rate there)
    calm: float = CALM
    bank: float = BANK
    credit: float = 0.0
    boost: bool = False
    spent: int = 0

    def earn(self) -> None:
        self.credit = min(self.credit + self.rate, self.bank + 1.0)

    def chance(self) -> float:
        """Probability of auditing a request that can be audited now."""
        if self.boost or self.rate >= 1.0:
            return 1.0
        return min(1.0, self.calm * self.rate / max(self.p_early, 1e-3))

    def draw(self, u: float) -> bool:
        """``u`` uniform in [0, 1): True when this request is audited (and the credit spent)."""
        if self.credit < 1.0 or u >= self.chance():
            return False
        self.credit -= 1.0
        self.spent += 1
        return True


def cusum_h(p0: float, delta: float, n: int, target: float, runs: int = 400, seed: int = 0) -> float:
    """The smallest threshold (0.5 steps) whose false-alarm rate over ``n`` Bernoulli(p0) draws is at most
    ``target``, simulated (a design aid for choosing h; the README's figures are on real streams)."""
    import random

    rng = random.Random(seed)
    c = Cusum(p0, delta, 0.0)
    peaks = []
    for _ in range(runs):
        s = peak = 0.0
        for _ in range(n):
            s = max(0.0, s + (c.up if rng.random() < c.p0 else c.down))
            peak = max(peak, s)
        peaks.append(peak)
    peaks.sort()
    q = peaks[min(int(math.ceil((1 - target) * runs)), runs - 1)]
    return math.ceil(q * 2) / 2
