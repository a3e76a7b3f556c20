"""The drift alarm's figures over audit draws: detection delay on shifted streams and false alarms on
unshifted streams of the same length (README, "Knowing the quality you deliver").

$ python -m optistop.offline.drift_sweep artifacts/shift_routellm artifacts/shift_llama --seeds 20

Each DIR holds cal.jsonl and stream.jsonl from ``python -m optistop.offline.stream build`` (the shift at
request ``--shift``, 1000 there). Shifted: the twin (optistop.offline.stream.run_stream, the server's
detectors and budget) on the stream with ``--seeds`` audit draws. Unshifted: the stream's first ``--shift``
requests (easy subjects, unseen by the calibration) resampled with replacement to the stream's length, one
resample per seed, through the same twin: any alarm there is a false alarm.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from optistop.offline import policy_fit as F
from optistop.offline.replay_files import load
from optistop.offline.stream import run_stream


def sweep(d: Path, seeds: int, shift: int, rate: float, **kw) -> dict:
    cal, tr = load(d / "cal.jsonl"), load(d / "stream.jsonl")
    crit, N = F.Criterion(), len(tr.conf)
    runs = [run_stream(cal, tr, rate, crit, seed=s, **kw)["summary"] for s in range(seeds)]
    delay = [min(r["alarms"]) - shift if r["alarms"] else None for r in runs]
    early = [x for x in delay if x is not None and x < 0]
    pre = tr.take(np.arange(shift))
    quiet = [run_stream(cal, pre.take(np.random.default_rng(1000 + s).integers(0, shift, N)), rate, crit,
                        seed=s, **kw)["summary"] for s in range(seeds)]
    after = [r["quality_rel_after_recal"] for r in runs if r["quality_rel_after_recal"] is not None]
    return {"dir": str(d), "n": N, "seeds": seeds, "audit_share": max(r["audits"] / N for r in runs),
            "delay": delay, "early": len(early), "missed": sum(x is None for x in delay),
            "quality_alarm_delay": [r["first_quality_alarm"] - shift if r["first_quality_alarm"] else None
                                    for r in runs],
            "quality": [r["quality_rel"] for r in runs], "after_recal": after,
            "recalibrated": len(after), "cost": [r["cost"] for r in runs],
            "audit_cost": [r["audit_cost"] for r in runs],
            "cheapest_adequate": runs[0]["cheapest_adequate_stage_cost"],
            "false_alarm_runs": sum(bool(r["alarms"]) for r in quiet)}


def line(r: dict) -> str:
    ok = sorted(x for x in r["delay"] if x is not None and x >= 0)
    med = ok[len(ok) // 2] if ok else None
    q = [x for x in r["quality_alarm_delay"] if x is not None and x >= 0]
    return (f"| {Path(r['dir']).name} ({r['n']}) | {r['audit_share']:.1%} | {med} / {ok[-1] if ok else None} "
            f"({r['early']} before, {r['missed']} missed) | {len(q)} of {r['seeds']}"
            f"{f' (median +{sorted(q)[len(q) // 2]})' if q else ''} | "
            f"{min(r['after_recal']) if r['after_recal'] else None} ({r['recalibrated']} of {r['seeds']}) | "
            f"{np.mean(r['quality']):.3f} | {np.mean(r['cost']):.2f} ({np.mean(r['audit_cost']):.2f}) | "
            f"{r['cheapest_adequate']:g} | {r['false_alarm_runs']} of {r['seeds']} |")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.offline.drift_sweep", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--shift", type=int, default=1000)
    ap.add_argument("--audit", type=float, default=0.05)
    ap.add_argument("--label-free", action="store_true")
    ap.add_argument("--on-drift", choices=["none", "safer"], default="safer")
    args = ap.parse_args(argv)
    print("| stream (requests) | most audits | first alarm after the shift, median / max | quality alarm fired "
          "| worst quality after recalibration | mean quality | mean cost (audits) | cheapest adequate stage "
          "| unshifted runs with an alarm |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in args.dirs:
        print(line(sweep(d, args.seeds, args.shift, args.audit, label_free=args.label_free,
                         on_drift=args.on_drift)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
