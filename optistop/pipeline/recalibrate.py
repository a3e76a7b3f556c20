"""Recalibration from audited traffic: refit the operating point on the audit log, write a new version.

$ optistop calibrate --from-audit audit.jsonl --policy my_repo/quality_predictor/1/policy.json \\
      [--prompts scored_calibration.jsonl] [--target 0.95]

Each audit record is a complete calibration row: every stage's answer and the served predictor's
confidence (an audit runs the stages the request skipped). Labels, relative to the reference stage as the
target is: a stage is "correct" when its answer agrees with the reference's (the reference itself counts
as correct); where a grader labelled the audit, a disagreeing answer the grader marked right counts as
correct too. ``--prompts`` adds the original calibration set (a scored replay file, e.g. calibrate's
``--replay-out``), so that a few hundred audits refine rather than replace it. The predictor is not
retrained: the server's confidences are what the log holds.

The new artifact is written beside the old as ``policy.json`` (atomically: a temporary file, then a rename)
with ``version`` one higher; the old one is kept as ``policy.v<N>.json``. A serving cascade watching the
file (spec ``policy_watch_s``) swaps it in without dropping a request; in-flight requests finish on the old.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optistop.audit import normalise, read_log
from optistop.offline import policy_fit as F
from optistop.offline.operating import ReplayInputError, arrays_from_records, build_artifact
from optistop.policy_artifact import PolicyBook


def agreement_baseline_of(a: Any, rule: Any, ref: int = -1) -> float | None:
    """The label-free quality estimate of ``rule`` on calibration arrays ``a`` (optistop.audit.agreement_baseline)
    against the reference stage ``ref``, stored in policy.json so the server's label-free alarm compares like
    with like. None without answers."""
    import numpy as np

    from optistop import policy as K
    from optistop.audit import agreement_baseline

    if a.resp is None:
        return None
    _, ans = K.simulate(rule, a.conf, a.ex_ante, a.resp)
    served = a.resp[np.arange(len(ans)), ans].tolist()
    return round(agreement_baseline(served, a.resp[:, ref].tolist(), float(a.correct[:, ref].mean())), 6)


def drift_baselines_of(a: Any, rule: Any, ref: int = -1) -> dict[str, float]:
    """What the server's drift detectors compare traffic with (optistop.drift), read on calibration arrays
    ``a`` for ``rule`` by the twin's own code (optistop.offline.stream.baselines)."""
    from optistop.offline.stream import baselines

    return {k: round(v, 6) for k, v in baselines(a, rule, ref).items()}


def with_safer_points(art: dict[str, Any]) -> dict[str, Any]:
    """Store the next safer certified operating points in the artifact (``safer``: what ``on_drift =
    "safer"`` steps through; optistop.serving.audit.safer_points derives the same when it is absent)."""
    from optistop.serving.audit import safer_points

    art["safer"] = [{"policy": p, "lambda": lam} for p, lam in safer_points(PolicyBook(art))]
    return art


def records_from_audit(path: Path, warn: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """(replay records, audits skipped). Audits without a confidence for every stage (a predictor that
    failed) cannot be calibration rows and are skipped, as are sampled requests' audits (two samples
    disagree by chance; the quality predictor and its rule are fitted on greedy answers)."""
    out, skipped = [], 0
    for rec in read_log(path, warn):
        conf, answers = rec["confidences"], rec["answers"]
        names, costs = rec.get("stages"), rec.get("costs")
        if (not isinstance(conf, list) or not isinstance(answers, list) or names is None or costs is None
                or len(conf) != len(answers) or any(c is None or not math.isfinite(c) for c in conf)
                or any(not isinstance(a, str) for a in answers) or rec.get("sampled")):
            skipped += 1
            continue
        stage = rec.get("reference_stage", len(answers) - 1)   # the server's reference (the last, before v2)
        ref = normalise(answers[stage if isinstance(stage, int) and 0 <= stage < len(answers) else -1])
        graded = rec.get("served_correct") is not None
        stages = []
        for k, (c, a) in enumerate(zip(conf, answers, strict=True)):
            ok = normalise(a) == ref or (graded and k == rec["served_stage"] and bool(rec["served_correct"]))
            st = {"model": names[k], "cost": float(costs[k]), "correct": bool(ok), "confidence": float(c),
                  "response": a}
            if isinstance(rec.get("ex_ante"), list) and len(rec["ex_ante"]) == len(conf):
                st["ex_ante"] = float(rec["ex_ante"][k])
            stages.append(st)
        out.append({"id": rec.get("request_id", ""), "stages": stages})
    return out, skipped


def recalibrate(log: Path, policy: Path, target: float, prompts: Path | None = None, seed: int = 0,
                warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    from optistop.offline.replay_files import read_records

    old = json.loads(policy.read_text(encoding="utf-8"))
    records, skipped = records_from_audit(log, warn)
    n_audit = len(records)
    if n_audit == 0:
        raise ReplayInputError(f"{log}: no usable audit records ({skipped} skipped)")
    names = [st["model"] for st in records[0]["stages"]]
    if names != list(old.get("stages", [])):
        raise ReplayInputError(f"{log}: audits are for stages {names}, {policy} for {old.get('stages')}")
    if prompts is not None:
        extra, _ = read_records(prompts)
        for r in extra:  # the calibration set's stage names may be model ids; the costs must agree
            if len(r.get("stages", [])) != len(names):
                raise ReplayInputError(f"{prompts}: records with {len(r.get('stages', []))} stages, the audits have "
                                       f"{len(names)}")
            r["stages"] = [dict(st, model=names[k]) for k, st in enumerate(r["stages"])]
        records = records + extra
    a = arrays_from_records(records)
    # the audits' labels are agreement with the reference stage the artifact was certified against: the
    # same stage stays the reference (on a ladder that is not monotone "best" need not be the last)
    ref = PolicyBook(old, str(policy)).reference
    crit = F.Criterion(target, target - 0.005, reference=str(ref))
    version = int(old.get("version", 1)) + 1
    keep = {k: old[k] for k in ("spec", "tokenizer_sha256", "predictor", "data_sha256") if k in old}
    art, ch = build_artifact(a, names, crit, seed, version=version, reference_accuracy=float(a.correct[:, ref].mean()),
                            recalibrated_from={"audit_log": str(log), "audits": n_audit, "skipped": skipped,
                                               "prompts": str(prompts) if prompts else None,
                                               "previous_version": version - 1}, **keep)
    art["agreement_baseline"] = agreement_baseline_of(a, ch["rule"], ref)
    art["drift_baselines"] = drift_baselines_of(a, ch["rule"], ref)
    with_safer_points(art)
    backup = policy.with_name(f"policy.v{version - 1}.json")
    shutil.copyfile(policy, backup)
    tmp = policy.with_name(f".{policy.name}.tmp")
    tmp.write_text(json.dumps(art) + "\n", encoding="utf-8")
    os.replace(tmp, policy)   # atomic: a watcher reads the old file or the new one, never half of one
    return {"version": version, "operating": art["operating"], "audits": n_audit, "skipped": skipped,
            "rows": len(records), "backup": str(backup), "policy": str(policy)}
