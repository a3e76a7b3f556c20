"""What the offline replay fits: text features, an L2 logistic regression, Platt calibration.

Small and deterministic (numpy + scipy, no sampling). Used when a replay file carries no confidences
(RouteLLM), and to recalibrate the confidences a file does carry (tiny family).

Features (``prompt_features`` is all an ex-ante, prompt-only estimate sees; ``response_features`` adds
what a post-hoc estimate of one stage sees: that stage's own answer, never a later stage's):
- the paper's B.2 statistics (length, words, '?', '!', lexical diversity), numbers in the prompt;
- hashed word unigrams and bigrams of the prompt, plus any ``meta`` tags of the record (e.g. the MMLU
  subject, known at request time);
- of a response: length, lines, numbers, whether it states a final number (``####`` or "answer is"),
  whether that number is an integer, its magnitude, how many of the prompt's numbers it uses, arithmetic
  slips in ``a op b = c`` and in ``<<expr=value>>`` calculator notes, repeated lines, and token
  log-probability statistics when given.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from optistop.calibration import apply, fit_platt
from optistop.logistic import fit_logistic, sigmoid

HASH_DIM = 1 << 14
_WORD = re.compile(r"[a-z]+|\d+")
_NUM = re.compile(r"-?\d[\d,]*\.?\d*")
_EQ = re.compile(r"(-?\d[\d,]*\.?\d*)\s*([-+*/x×÷])\s*(-?\d[\d,]*\.?\d*)\s*=\s*\$?(-?\d[\d,]*\.?\d*)")
_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_FINAL = re.compile(r"(?:####|answer is:?|answer:)\s*\$?\s*(-?\d[\d,]*\.?\d*)", re.I)


def _num(s: str) -> float | None:
    try:
        return float(s.replace(",", "").rstrip("."))
    except ValueError:
        return None


def _hash(token: str) -> int:
    return zlib.crc32(token.encode()) % HASH_DIM


def hashed_tokens(text: str, meta: Sequence[str] = ()) -> list[int]:
    words = _WORD.findall(text.lower())
    toks = set(words) | {a + " " + b for a, b in zip(words, words[1:], strict=False)}
    toks |= {"__meta=" + m for m in meta}
    return sorted({_hash(t) for t in toks})


def prompt_stats(prompt: str) -> list[float]:
    words = prompt.split()
    nums = _NUM.findall(prompt)
    return [math.log1p(len(prompt)), math.log1p(len(words)), prompt.count("?"), prompt.count("!"),
            len({w.lower() for w in words}) / max(len(words), 1), math.log1p(len(nums)),
            max((len(n.replace(",", "").split(".")[0]) for n in nums), default=0)]


def _safe_eval(expr: str) -> float | None:
    expr = expr.replace(",", "").replace("x", "*").replace("×", "*").replace("÷", "/")
    expr = re.sub(r"(?<=[\d)])\s*\(", "*(", re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)", expr))   # 2(3) -> 2*(3)
    if not re.fullmatch(r"[\d.+\-*/() ]+", expr) or "**" in expr:
        return None
    try:
        return float(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 - digits and operators only
    except (SyntaxError, ZeroDivisionError, ValueError, OverflowError, TypeError):
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.011, 1e-3 * abs(b))    # allows rounding to cents, not real slips


_SEGMENT = re.compile(r"[\d.,$()\s]*\d[\d.,$\s+\-*/x×÷()%]*")


def chain_slips(response: str) -> tuple[int, int]:
    """(wrong, checked) links in chains "expr = expr = value" (calculator notes <<e=v>> included):
    each evaluable side must equal the next one."""
    bad = total = 0
    for line in response.replace("<<", " ").replace(">>", " = ").splitlines():
        parts = line.split("=")
        if len(parts) < 2:
            continue
        vals = []
        for j, part in enumerate(parts):
            segs = _SEGMENT.findall(part)
            if not segs:
                vals.append(None)
                continue
            expr = (segs[0] if j == len(parts) - 1 else segs[-1]).replace("$", "").strip()
            vals.append(_safe_eval(expr) if re.search(r"\d", expr) else None)
        for a, b in zip(vals, vals[1:], strict=False):
            if a is not None and b is not None:
                total += 1
                bad += not _close(a, b)
    return bad, total


def response_stats(prompt: str, response: str, logprobs: Sequence[float] | None = None) -> list[float]:
    lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
    nums = [_num(n) for n in _NUM.findall(response)]
    nums = [n for n in nums if n is not None]
    finals = _FINAL.findall(response)
    final = _num(finals[-1]) if finals else (nums[-1] if nums else None)
    eqs = _EQ.findall(response)
    eq_bad = 0
    for a, op, b, c in eqs:
        x, y, z = _num(a), _num(b), _num(c)
        if None in (x, y, z):
            continue
        val = {"+": x + y, "-": x - y, "*": x * y, "x": x * y, "×": x * y,
               "/": x / y if y else math.inf, "÷": x / y if y else math.inf}[op]
        eq_bad += not _close(val, z)
    calcs = _CALC.findall(response)
    calc_bad = 0
    for expr, val in calcs:
        v, z = _safe_eval(expr), _num(val.strip())
        calc_bad += v is None or z is None or not _close(v, z)
    pnums = {_num(n) for n in _NUM.findall(prompt)} - {None}
    covered = len(pnums & set(nums)) / max(len(pnums), 1)
    last_results = [_num(c) for *_, c in eqs] + [_num(v.strip()) for _, v in calcs]
    final_is_result = float(final is not None and final in last_results)
    chain = chain_slips(response)
    lp = np.asarray(logprobs if logprobs is not None else [], dtype=float)
    return [math.log1p(len(response)), math.log1p(len(lines)), math.log1p(len(nums)),
            float(bool(finals)), float(final is not None), float(final is not None and final == int(final)),
            math.log1p(abs(final)) if final is not None and math.isfinite(final) else 0.0,
            covered, math.log1p(len(eqs) + len(calcs)), float(eq_bad + calc_bad > 0),
            math.log1p(eq_bad + calc_bad), (eq_bad + calc_bad) / max(len(eqs) + len(calcs), 1),
            final_is_result, 1.0 - len(set(lines)) / max(len(lines), 1),
            float(chain[0] > 0), math.log1p(chain[0]), chain[0] / max(chain[1], 1), math.log1p(chain[1]),
            float(lp.mean()) if lp.size else 0.0, float(lp.min()) if lp.size else 0.0,
            float(lp.size > 0)]


def design(dense: np.ndarray, hashed: Sequence[Sequence[int]] | None) -> sp.csr_matrix:
    """[standardised-by-caller dense | binary hashed] as one sparse matrix with a bias column."""
    n = dense.shape[0]
    parts = [sp.csr_matrix(np.hstack([np.ones((n, 1)), dense]))]
    if hashed is not None:
        rows = np.repeat(np.arange(n), [len(h) for h in hashed])
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in hashed]) if n else np.zeros(0, int)
        parts.append(sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, HASH_DIM)))
    return sp.hstack(parts).tocsr()


class Standardizer:
    def __init__(self, x: np.ndarray) -> None:
        self.mu = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        sd = x.std(axis=0) if len(x) else np.ones(x.shape[1])
        self.sd = np.where(sd > 1e-9, sd, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mu) / self.sd


def fold_ids(n: int, k: int, seed: int) -> np.ndarray:
    """Seeded assignment of n items to k folds of near-equal size."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) % k
    rng.shuffle(ids)
    return ids


def fit_predict_cv(dense: np.ndarray, hashed: Sequence[Sequence[int]] | None, y: np.ndarray,
                   train: np.ndarray, test: np.ndarray, seed: int,
                   l2_grid: Sequence[float] = (10.0, 100.0, 1000.0), inner: int = 3
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit on ``train`` (indices), predict calibrated P(y=1) for train (out-of-fold) and ``test``.

    The L2 strength is chosen by inner-fold log loss; Platt scaling is fitted on the out-of-fold scores;
    the final model is refitted on all of ``train``. Returns (p_train_oof, p_test, info)."""
    std = Standardizer(dense[train])
    x = design(std(dense), hashed)
    keep = x[train].getnnz(axis=0) >= 2          # features seen at least twice in training; bias stays first
    keep[0] = True
    x = x[:, np.flatnonzero(keep)]
    xtr, ytr = x[train], y[train].astype(float)
    folds = fold_ids(len(train), inner, seed)
    oof = {l2: np.zeros(len(train)) for l2 in l2_grid}
    for f in range(inner):
        tr, va = folds != f, folds == f
        for l2 in l2_grid:
            w = fit_logistic(xtr[tr], ytr[tr], l2)
            oof[l2][va] = sigmoid(xtr[va] @ w)
    ll = {l2: -np.mean(ytr * np.log(np.clip(p, 1e-9, 1)) + (1 - ytr) * np.log(np.clip(1 - p, 1e-9, 1)))
          for l2, p in oof.items()}
    best = min(l2_grid, key=lambda k: (ll[k], k))
    cal = fit_platt(oof[best], ytr)
    w = fit_logistic(xtr, ytr, best)
    p_test = apply(cal, sigmoid(x[test] @ w))
    return apply(cal, oof[best]), p_test, {"l2": best, "platt": cal, "inner_logloss": ll[best]}


def verifier_scores(records: Sequence[dict], seed: int = 0, folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, ex_ante), each (N, n), out-of-fold: a text verifier for replays that carry answers but
    no confidences (e.g. RouteLLM's). ex_ante reads the prompt (hashed tokens + statistics); confidence
    reads the prompt and that stage's answer (and its log-probs when recorded). Every score of item i comes
    from a model that never saw i's label."""
    N, n = len(records), len(records[0]["stages"])
    prompts = [str(r.get("prompt", "")) for r in records]
    pd = np.array([prompt_stats(p) for p in prompts])
    ph = [hashed_tokens(p, [str(t) for t in r.get("meta", [])]) for p, r in zip(prompts, records, strict=True)]
    fid = fold_ids(N, folds, seed)
    conf, ex = np.zeros((N, n)), np.zeros((N, n))
    for k in range(n):
        y = np.array([bool(r["stages"][k]["correct"]) for r in records])
        resp = [r["stages"][k].get("response") for r in records]
        post = None
        if all(isinstance(x, str) for x in resp):
            lps = [r["stages"][k].get("logprobs") for r in records]
            rd = np.array([response_stats(p, x, lp) for p, x, lp in zip(prompts, resp, lps, strict=True)])
            rh = [sorted(set(h) | set(hashed_tokens("r " + x))) for h, x in zip(ph, resp, strict=True)]
            post = (np.hstack([pd, rd]), rh)
        for f in range(folds):
            tr, te = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
            _, ex[te, k], _ = fit_predict_cv(pd, ph, y, tr, te, seed + k)
            if post is not None:
                _, conf[te, k], _ = fit_predict_cv(post[0], post[1], y, tr, te, seed + 100 + k)
            else:
                conf[te, k] = ex[te, k]
    return np.clip(conf, 0.0, 1.0), np.clip(ex, 0.0, 1.0)


def score_from_cal(cal: list[dict], stream: list[dict], seed: int = 0,
                   keep_ex_ante: bool = False) -> None:
    """Confidences as a deployment has them: a text verifier (as ``verifier_scores``, prompt-only where the
    records carry no answers; with their log-probs where recorded) fitted on the calibration records only,
    out-of-fold on them, applied to the stream, which it never saw. Written into the records' stages as
    ``confidence`` and ``ex_ante`` (``keep_ex_ante``: a stage's given ``ex_ante`` stays where every record
    has one)."""
    recs = cal + stream
    tr, te = np.arange(len(cal)), np.arange(len(cal), len(recs))
    prompts = [str(r.get("prompt", "")) for r in recs]
    pd = np.array([prompt_stats(p) for p in prompts])
    ph = [hashed_tokens(p, [str(t) for t in r.get("meta", [])]) for p, r in zip(prompts, recs, strict=True)]
    for k in range(len(recs[0]["stages"])):
        y = np.array([bool(r["stages"][k]["correct"]) for r in recs])
        ex = np.zeros(len(recs))
        ex[tr], ex[te], _ = fit_predict_cv(pd, ph, y, tr, te, seed + k)
        conf = ex.copy()
        resp = [r["stages"][k].get("response") for r in recs]
        if all(isinstance(x, str) for x in resp):
            lps = [r["stages"][k].get("logprobs") for r in recs]
            rd = np.array([response_stats(p, x, lp) for p, x, lp in zip(prompts, resp, lps, strict=True)])
            rh = [sorted(set(h) | set(hashed_tokens("r " + x))) for h, x in zip(ph, resp, strict=True)]
            conf[tr], conf[te], _ = fit_predict_cv(np.hstack([pd, rd]), rh, y, tr, te, seed + 100 + k)
        given = keep_ex_ante and all(r["stages"][k].get("ex_ante") is not None for r in recs)
        for i, r in enumerate(recs):
            r["stages"][k]["confidence"] = float(np.clip(conf[i], 0, 1))
            if not given:
                r["stages"][k]["ex_ante"] = float(np.clip(ex[i], 0, 1))
