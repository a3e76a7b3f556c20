"""Knowing the quality you deliver: audit statistics, the drift alarm and the audit log, shared by the
server (optistop.serving.audit) and its offline twin (optistop.offline.stream). Pure Python, no numpy.

An *audit* completes a served request off its critical path: every stage it did not run is run, up to the
reference (the last stage), so the audited row looks like a calibration row. Audits are drawn among
requests accepted before the reference (or with stages skipped; optistop.drift.Budget): the others agree
with the reference by construction, so the disagreement over audits bounds the traffic's from above.

Two estimates of the delivered quality relative to the reference stage, each with a confidence interval:

- label-free, from agreement: if the served answer equals the reference's, both are equally right, so the
  delivered quality q >= q_ref - P(disagree), i.e. q / q_ref >= 1 - P(disagree) / q_ref. P(disagree) gets a
  Wilson interval; q_ref (the reference's accuracy, unknown without labels) is the calibration's, or a
  value the operator states (spec ``audit_reference_quality``). A lower bound: pessimistic by design.
- graded, where a grader labels both answers: the ratio R = sum(served correct) / sum(reference correct)
  over the audits, with a delta-method interval (the same standard error the operating-point choice uses).

The drift alarm is optistop.drift's (two sequential tests against calibration baselines); ``Monitor.drifted``
is its fallback for a policy.json without ``drift_baselines`` and what ``optistop audit`` reports: over the
last ``window`` audits (at least ``min_audits``), the interval's *upper* end below the tolerance, i.e. the
audits show with confidence that quality is below the tolerance. The label-free bound is pessimistic (answers
that differ from a wrong reference count against it), so without a grader the alarm compares it with what the
same bound read on the calibration set (``agreement_tolerance``: that baseline less the target's margin;
``agreement_baseline``), not with the quality tolerance: a drift, not the bound's bias. The lower end is what
is exported and certified against; an alarm on it would fire on healthy traffic, because the operating point
is chosen to sit at the target (README, "Knowing the quality you deliver").
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optistop.files import json_lines

Z = 1.645            # one-sided 95%
WINDOW = 200         # audits the estimate and the alarm look at
MIN_AUDITS = 10      # no alarm on fewer
ROTATE_BYTES = 64 << 20
ROTATE_KEEP = 3
DRIFT_ACTIONS = ("none", "safer")
GRADERS_HELP = 'none | module:function (e.g. "optistop.tiny.tasks:grade"; called as function(prompt, answer) -> bool)'
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n (two-sided at ``z``); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass(frozen=True)
class Estimate:
    mode: str            # "agreement" (label-free) or "graded"
    n: int               # audits it rests on
    estimate: float      # quality relative to the reference stage (agreement: its lower bound)
    lower: float
    upper: float
    disagree: float      # share of audits whose served answer differs from the reference's

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def agreement_estimate(disagree: int, n: int, q_ref: float, z: float = Z) -> Estimate:
    """Label-free: q / q_ref >= 1 - P(disagree) / q_ref, with P(disagree)'s Wilson interval."""
    q_ref = min(max(q_ref, 1e-6), 1.0)
    p = disagree / n if n else 0.0
    lo, hi = wilson(disagree, n, z)
    return Estimate("agreement", n, 1 - p / q_ref, 1 - hi / q_ref, 1 - lo / q_ref, p)


def graded_estimate(served: list[float], ref: list[float], disagree: int, z: float = Z) -> Estimate:
    """Graded: R = sum(served) / sum(ref); standard error sd(served - R ref) / (mean(ref) sqrt(n))."""
    n = len(served)
    if n == 0 or sum(ref) == 0:
        return Estimate("graded", n, 1.0 if n == 0 else 0.0, 0.0, 1.0, disagree / n if n else 0.0)
    r = sum(served) / sum(ref)
    d = [s - r * f for s, f in zip(served, ref, strict=True)]
    mean_d = sum(d) / n
    sd = math.sqrt(sum((x - mean_d) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    se = sd / ((sum(ref) / n) * math.sqrt(n))
    return Estimate("graded", n, r, r - z * se, r + z * se, disagree / n)


@dataclass
class Audit:
    """One audit's outcome, what the monitor needs."""

    agree: bool
    cost_audit: float
    served_correct: bool | None = None     # graded labels, where a grader is configured
    reference_correct: bool | None = None


@dataclass
class Monitor:
    """Sliding-window quality estimate and drift alarm. ``served``/``audit_cost`` count all traffic seen."""

    q_ref: float
    tolerance: float
    window: int = WINDOW
    min_audits: int = MIN_AUDITS
    z: float = Z
    audits: deque = field(default_factory=deque)
    requests: int = 0
    serve_cost: float = 0.0
    audit_cost: float = 0.0
    alarm: bool = False
    agreement_tolerance: float | None = None   # the label-free estimate's tolerance; None: ``tolerance``

    def served(self, cost: float) -> None:
        self.requests += 1
        self.serve_cost += cost

    def add(self, a: Audit) -> bool:
        """Record an audit; True when this audit raises the alarm (it was off)."""
        self.audits.append(a)
        while len(self.audits) > self.window:
            self.audits.popleft()
        self.audit_cost += a.cost_audit
        was, self.alarm = self.alarm, self.drifted()
        return self.alarm and not was

    def estimate(self) -> Estimate:
        win = list(self.audits)
        dis = sum(not a.agree for a in win)
        if win and all(a.served_correct is not None and a.reference_correct is not None for a in win):
            return graded_estimate([float(bool(a.served_correct)) for a in win],
                                   [float(bool(a.reference_correct)) for a in win], dis, self.z)
        return agreement_estimate(dis, len(win), self.q_ref, self.z)

    def drifted(self) -> bool:
        if len(self.audits) < self.min_audits:
            return False
        est = self.estimate()
        tol = self.agreement_tolerance if est.mode == "agreement" and self.agreement_tolerance is not None \
            else self.tolerance
        return est.upper < tol

    def cost_share(self) -> float:
        total = self.serve_cost + self.audit_cost
        return self.audit_cost / total if total > 0 else 0.0

    def reset(self) -> None:
        """After a recalibration: the old audits describe the old policy."""
        self.audits.clear()
        self.alarm = False


def agreement_baseline(served: list[int], reference: list[int], q_ref: float) -> float:
    """The label-free estimate on calibration rows: 1 - P(served answer id != reference's) / q_ref
    (answer ids as the kernel's: equal ids agree; -1, no answer, agrees with nothing)."""
    dis = sum(s != r or s < 0 for s, r in zip(served, reference, strict=True))
    return 1 - dis / max(len(served), 1) / min(max(q_ref, 1e-6), 1.0)


def check_grader(name: str) -> str:
    """The spec's ``audit_grader``: "none" or ``module:function`` (dotted module, one function name);
    ValueError, one line naming the valid values, otherwise. Loaded at initialize by ``load_grader``."""
    import re

    mod, colon, fn = name.partition(":")
    if name != "none" and not (colon and re.fullmatch(_DOTTED, mod) and fn.isidentifier()):
        raise ValueError(f"{name!r} is not a grader; valid: {GRADERS_HELP}")
    return name


def load_grader(name: str) -> Any:
    """The grader a spec names: None for "none", else the imported ``function(prompt, answer) -> bool``
    (raising ValueError for a prompt it cannot label). Imported by name at initialize, so the serving layer
    depends on no task suite (tests/unit/test_layers.py). ValueError, one line, when it cannot be loaded."""
    import importlib

    if check_grader(name) == "none":
        return None
    mod, _, fn = name.partition(":")
    try:
        func = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"audit_grader {name!r}: cannot import {fn} from {mod} ({exc}); "
                         f"valid: {GRADERS_HELP}") from None
    if not callable(func):
        raise ValueError(f"audit_grader {name!r}: {mod}.{fn} is not callable; valid: {GRADERS_HELP}")
    return func


def normalise(text: str) -> str:
    """Answers agree when equal up to whitespace (as the kernel's answer ids: optistop.cascade)."""
    return " ".join(text.split())


class AuditLog:
    """Append-only JSONL with size-based rotation: ``LOG`` -> ``LOG.1`` -> ... ``LOG.keep`` (dropped)."""

    def __init__(self, path: str | Path, max_bytes: int = ROTATE_BYTES, keep: int = ROTATE_KEEP) -> None:
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        with open(self.path, "a", encoding="utf-8") as fh:   # one write of one line: no torn records
            fh.write(line)

    def _rotate(self) -> None:
        for i in range(self.keep, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))


def log_files(path: str | Path) -> list[Path]:
    """A log and its rotated predecessors, oldest first."""
    p = Path(path)
    old = sorted((q for q in p.parent.glob(p.name + ".*") if q.suffix[1:].isdigit()),
                 key=lambda q: -int(q.suffix[1:]))
    return old + ([p] if p.exists() else [])


REQUIRED = ("served_stage", "answers", "confidences", "reference_stage", "agree", "cost_served", "cost_audit")


def read_log(path: str | Path, warn: Any = None) -> Iterator[dict[str, Any]]:
    """The audit records of a log (rotated files included, oldest first). A corrupt or partial line is
    skipped with a warning naming the file and line (to ``warn``, default stderr), never a crash."""
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no audit log there (spec audit_log; the server writes it)")
    say = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for n, rec in json_lines(fh):
                if isinstance(rec, json.JSONDecodeError):
                    say(f"{f}:{n}: skipped: not valid JSON ({rec.msg}); a partial or corrupt line")
                    continue
                missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
                if missing:
                    say(f"{f}:{n}: skipped: not an audit record (missing {', '.join(missing)})")
                    continue
                yield rec


def audit_of(rec: dict[str, Any]) -> Audit:
    return Audit(bool(rec["agree"]), float(rec["cost_audit"]), rec.get("served_correct"),
                 rec.get("reference_correct"))


def summarise(records: Iterable[dict[str, Any]], q_ref: float, tolerance: float, window: int = WINDOW,
              z: float = Z, agreement_tolerance: float | None = None) -> dict[str, Any]:
    """What ``optistop audit LOG`` prints: the estimate over the whole log and over its last window."""
    recs = [r for r in records if not r.get("sampled")]   # sampled answers disagree by chance (module doc)
    whole = Monitor(q_ref, tolerance, window=max(len(recs), 1), z=z)
    last = Monitor(q_ref, tolerance, window=window, z=z, agreement_tolerance=agreement_tolerance)
    for r in recs:
        a = audit_of(r)
        whole.add(a)
        last.add(a)
    serve = sum(float(r["cost_served"]) for r in recs)
    aud = sum(float(r["cost_audit"]) for r in recs)
    versions = sorted({str(r.get("policy_version", "?")) for r in recs})
    return {"audits": len(recs), "q_ref": q_ref, "tolerance": tolerance, "policy_versions": versions,
            "all": whole.estimate().as_dict(), "window": last.estimate().as_dict(), "alarm": last.drifted(),
            "audit_cost_per_audit": round(aud / len(recs), 6) if recs else 0.0,
            "served_cost_per_audited_request": round(serve / len(recs), 6) if recs else 0.0,
            "served_stages": {str(s): sum(r["served_stage"] == s for r in recs)
                              for s in sorted({r["served_stage"] for r in recs})}}


def main(argv: list[str] | None = None) -> int:
    """``optistop audit LOG``: the delivered-quality estimate from an audit log (rotated files included)."""
    import argparse

    ap = argparse.ArgumentParser(prog="optistop audit", description=main.__doc__)
    ap.add_argument("log", type=Path, help="the audit log (spec audit_log; default audit.jsonl beside the spec)")
    ap.add_argument("--policy", type=Path, default=None,
                    help="policy.json: its reference_accuracy (q_ref) and criterion t_lcb (tolerance)")
    ap.add_argument("--reference-quality", type=float, default=None, help="q_ref of the label-free bound")
    ap.add_argument("--tolerance", type=float, default=None, help="alarm below this (default 0.945)")
    ap.add_argument("--window", type=int, default=WINDOW, help="audits in the recent window")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    art: dict[str, Any] = {}
    try:
        if args.policy is not None:
            art = json.loads(args.policy.read_text(encoding="utf-8"))
        q_ref = args.reference_quality or float(art.get("reference_accuracy", 1.0))
        tol = args.tolerance if args.tolerance is not None else float(art.get("criterion", {}).get("t_lcb", 0.945))
        if not (0 < q_ref <= 1 and 0 <= tol <= 1 and args.window >= 1):
            ap.error("--reference-quality must be in (0, 1], --tolerance in [0, 1], --window >= 1")
        crit = art.get("criterion", {})
        base = art.get("agreement_baseline") if args.tolerance is None else None
        agree_tol = None if base is None else float(base) - (float(crit.get("target", 0.95)) - tol)
        s = summarise(read_log(args.log), q_ref, tol, args.window, agreement_tolerance=agree_tol)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s))
        return 0
    print(summary_line(s))
    return 0


def summary_line(s: dict[str, Any]) -> str:
    """One paragraph: what ``optistop audit`` and ``optistop health --audit-log`` print."""
    if not s["audits"]:
        return "audits: none yet"
    w, a = s["window"], s["all"]
    return (f"audits: {s['audits']} (policy versions {', '.join(s['policy_versions'])}); delivered quality "
            f"relative to the reference ({w['mode']}): last {w['n']}: {w['estimate']:.3f} "
            f"[{w['lower']:.3f}, {w['upper']:.3f}], all: {a['estimate']:.3f} [{a['lower']:.3f}, {a['upper']:.3f}]; "
            f"disagreement {a['disagree']:.1%}; q_ref {s['q_ref']:g}, tolerance {s['tolerance']:g}: "
            f"{'DRIFT ALARM' if s['alarm'] else 'no alarm'}; audit cost {s['audit_cost_per_audit']:g} per audit, "
            f"served cost {s['served_cost_per_audited_request']:g} per audited request; served by stage "
            f"{s['served_stages']}")
