"""Replay files in: checked arrays from the JSONL that ``optistop replay`` reads, with confidences from a
text verifier where the records carry none (one fitted on the calibration file where there are two)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optistop.files import json_lines
from optistop.offline import policy_fit as F
from optistop.offline.operating import ReplayInputError, arrays_from_records


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    records, lines = [], []
    with open(path, encoding="utf-8") as fh:
        for n, rec in json_lines(fh):
            if isinstance(rec, json.JSONDecodeError):
                raise ReplayInputError(f"{path}:{n}: not valid JSON ({rec.msg})") from None
            if not isinstance(rec, dict):
                raise ReplayInputError(f"{path}:{n}: expected a JSON object")
            records.append(rec)
            lines.append(n)
    return records, lines


def stage_names(path: str | Path) -> list[str]:
    """The stages' model names on the file's first line (what ``--reference NAME`` may name)."""
    with open(path, encoding="utf-8") as fh:
        first = json.loads(next(line for line in fh if line.strip()))
    return [str(s.get("model", f"stage{k}")) for k, s in enumerate(first.get("stages", []))]


def _has_confidence(records: Sequence[dict[str, Any]]) -> bool:
    return all(s.get("confidence") is not None for r in records for s in r.get("stages", []))


def _arrays(path: str | Path, records: list[dict[str, Any]], lines: list[int], need_confidence: bool) -> F.Arrays:
    try:
        return arrays_from_records(records, lines, need_confidence=need_confidence)
    except ReplayInputError as exc:
        raise ReplayInputError(f"{path}:{str(exc).removeprefix('line ')}") from None


def load(path: str | Path, seed: int = 0) -> F.Arrays:
    """Checked arrays from a replay file; missing confidences come from a cross-fitted text verifier."""
    records, lines = read_records(path)
    has_conf = _has_confidence(records)
    a = _arrays(path, records, lines, has_conf)
    if not has_conf:
        from optistop.offline.fit import verifier_scores

        a.conf, ex = verifier_scores(records, seed)
        a.ex_ante = a.ex_ante if a.ex_ante is not None else ex
    return a


def load_pair(cal_path: str | Path, traffic_path: str | Path, seed: int = 0) -> tuple[F.Arrays, F.Arrays]:
    """(calibration, traffic) arrays of ``--fit`` and ``--eval`` / ``--stream``. Where neither file carries
    confidences, ONE text verifier fitted on the calibration file scores both (out of fold on it), as a
    deployment's predictor is trained before the traffic it scores: a verifier per file put the two on
    different scales (thresholds fitted on one read the other) and learnt the traffic's confidences from
    the very labels the replay judges them by. Confidences in one file only: refused, one line."""
    (rc, lc), (rt, lt) = read_records(cal_path), read_records(traffic_path)
    hc, ht = _has_confidence(rc), _has_confidence(rt)
    if hc != ht:
        without, other = (cal_path, traffic_path) if ht else (traffic_path, cal_path)
        raise ReplayInputError(f"{without} lacks a stage confidence that {other} has: give both files "
                               "confidences, or neither (a text verifier fitted on the calibration file then "
                               "scores both)")
    if not hc:
        from optistop.offline.fit import score_from_cal

        for path, recs in ((cal_path, rc), (traffic_path, rt)):   # checked before the verifier reads them
            _arrays(path, recs, lc if recs is rc else lt, need_confidence=False)
        score_from_cal(rc, rt, seed, keep_ex_ante=True)
    return _arrays(cal_path, rc, lc, True), _arrays(traffic_path, rt, lt, True)
