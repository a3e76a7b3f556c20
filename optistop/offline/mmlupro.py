"""MMLU-Pro per-question model outputs as three-stage replay records, scored by a text verifier.

$ OMP_NUM_THREADS=1 python -m optistop.offline.mmlupro [--data ../shared/data/mmlu-pro] --out artifacts/mmlupro
  # writes qwen.jsonl and llama.jsonl (--ladder qwen|llama for one, --limit N for the first N questions)

Ladders (TIGER-AI-Lab/MMLU-Pro eval_results, 5-shot CoT): ``qwen`` = Qwen1.5-7B-Chat -> Qwen1.5-72B-Chat
-> Qwen1.5-110B; ``llama`` = Llama-3.1-8B-Instruct -> Llama-3.1-70B-Instruct -> gemini-1.5-pro-002. The files
carry no costs: we use the nominal 1 / 4.5 / 10 per stage run, for both ladders. Only questions every model of
a ladder answered, with the same gold letter in every file, are kept: qwen 12,032, llama 11,990 (gemini lacks
12 questions and has a different gold letter, a later correction, for 30).

One extraction rule for every model (the data README's): the last "answer is (X)", X in A-J, parentheses
and markdown bold optional. ``correct`` = that letter equals the gold letter; ``response`` = the letter, or
"" when the text states none. The files' own ``pred`` field is not used: it is filled inconsistently.

No log-probs exist, so each stage's ``confidence`` comes from a verifier that reads the answer text: an L2
logistic regression (``fit.fit_predict_cv``, Platt-calibrated) on hashed unigrams+bigrams of the answer's
last 2,000 characters plus the subject, and on dense statistics a grader would glance at (answer stated,
letter within the option count, distinct letters stated, length, hedging words, non-ASCII share, repeated
lines). ``ex_ante`` is the same learner on the prompt only (question + options + subject). Both are
out-of-fold (5 folds, seeded): the model that scores a question never saw its label, as a deployed
verifier never sees the label of the request it scores.

Measured on the full data (2 shared CPU cores, OMP_NUM_THREADS=1; accuracy | verifier AUROC | ex-ante AUROC):
  qwen  (12,032 questions, 260 s): 7B 0.267 | 0.757 | 0.666;  72B 0.418 | 0.798 | 0.657;  110B 0.492 | 0.694 | 0.663
  llama (11,990 questions, 154 s): 8B 0.434 | 0.703 | 0.645;  70B 0.627 | 0.679 | 0.640;  gemini 0.720 | 0.700 | 0.645
(answer stated: 78 / 82 / 94% and 91 / 98 / 100%; the README's accuracies are 0.264 / 0.419 / 0.492 and
0.433 / 0.626 / 0.720. Runtimes were taken on a loaded machine, load average ~9.)
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from optistop import ROOT
from optistop.offline import stats
from optistop.offline.fit import fit_predict_cv, fold_ids, hashed_tokens, prompt_stats

DEFAULT_DIR = ROOT.parent / "shared" / "data" / "mmlu-pro"
WHERE = ("MMLU-Pro data not found: put the model_outputs_*_5shots.zip files of eval_results/ of the public "
         "repository TIGER-AI-Lab/MMLU-Pro in ../shared/data/mmlu-pro (or pass --data)")
LADDERS: dict[str, tuple[str, ...]] = {
    "qwen": ("Qwen1.5-7B-Chat", "Qwen1.5-72B-Chat", "Qwen1.5-110B"),
    "llama": ("Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct", "gemini-1.5-pro-002"),
}
COSTS = (1.0, 4.5, 10.0)
FOLDS = 5
L2 = (30.0,)     # one fixed strength: a grid would triple the fits for little gain at ~12k questions
TAIL = 2000      # the verdict and the reasoning that led to it sit at the end of the answer
# "answer is (B)", "answer is: B", "answer is **(B)**", "answer is (**B**)"; the last one counts.
_ANS = re.compile(r"answer is:?\s*\**\s*\(?\s*\**\s*([A-J])\b")
_HEDGE = re.compile(r"\b(however|but|not sure|approximately|assum\w*|wait|maybe|might|unclear|none of|"
                    r"closest|cannot|can't|re-?evaluat\w*|mistake|incorrect|recheck|let me)\b", re.I)


def zip_path(data_dir: Path, model: str) -> Path:
    return data_dir / f"model_outputs_{model}_5shots.zip"


def find_dir(path: str | Path | None = None, ladders: Sequence[str] = tuple(LADDERS)) -> Path | None:
    """The data folder (argument, else the default) if it holds every zip of ``ladders``, else None."""
    d = Path(path) if path else DEFAULT_DIR
    ok = all(zip_path(d, m).is_file() for name in ladders for m in LADDERS[name])
    return d if ok else None


def extract(text: str | None) -> str | None:
    """The final answer letter: the last "answer is (X)" in the text, or None when none is stated."""
    found = _ANS.findall(text or "")
    return found[-1] if found else None


def answer_text(row: dict) -> str:
    # Most files put the answer in generated_text; the gemini files put it in model_outputs.
    return row.get("generated_text") or row.get("model_outputs") or ""


def options_of(row: dict) -> list[str]:
    opts = row["options"]
    return list(ast.literal_eval(opts) if isinstance(opts, str) else opts)  # the README allows a literal


def text_stats(text: str, n_opt: int) -> list[float]:
    """Dense features of an answer text (what a grader notices before reading the argument)."""
    letters = _ANS.findall(text)
    last = letters[-1] if letters else None
    cut = text.rfind("answer is")
    tail = text[cut:] if cut >= 0 else ""          # long text after the verdict: a runaway generation
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [float(last is not None), float(last is not None and ord(last) - 65 < n_opt),
            math.log1p(len(set(letters))), math.log1p(len(letters)), math.log1p(len(text)),
            math.log1p(len(_HEDGE.findall(text))), sum(ord(c) > 127 for c in text) / max(len(text), 1),
            math.log1p(len(tail)), 1.0 - len(set(lines)) / max(len(lines), 1), float(n_opt),
            math.log1p(text.count("="))]


def load(data_dir: Path, model: str) -> dict[int, dict]:
    """question_id -> row of one model's zip (one JSON list inside), read in memory."""
    with zipfile.ZipFile(zip_path(data_dir, model)) as z:
        names = [n for n in z.namelist() if n.endswith(".json")]
        if len(names) != 1:
            raise ValueError(f"{zip_path(data_dir, model)}: expected one .json inside, found {names}")
        rows = json.loads(z.read(names[0]).decode("utf-8"))
    return {int(r["question_id"]): r for r in rows}


def oof(dense: np.ndarray, hashed: Sequence[Sequence[int]], y: np.ndarray, seed: int,
        folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold calibrated P(y=1): item i is scored by a model fitted on the other folds only
    (fold ids: ``fold_ids(len(y), folds, seed)``)."""
    if len(y) < 3:   # each outer training split needs 2 items for its 2 inner folds
        raise ValueError(f"out-of-fold scores need at least 3 questions, got {len(y)}")
    k = min(folds, len(y))
    fid = fold_ids(len(y), k, seed)
    out = np.zeros(len(y))
    for f in range(k):
        tr, te = np.flatnonzero(fid != f), np.flatnonzero(fid == f)
        _, out[te], _ = fit_predict_cv(dense, hashed, y, tr, te, seed + f, l2_grid=L2, inner=2)
    return out


def ladder_records(data_dir: Path, ladder: str, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Replay records of one ladder: questions all its models answered, in question_id order (the first
    ``limit`` of them if given), each with three stages scored out-of-fold."""
    models = LADDERS[ladder]
    per = [load(data_dir, m) for m in models]
    base = per[0]
    # A cascade needs one gold letter per question; the files disagree on a few (gemini's carries 30
    # corrected answers): those are dropped rather than graded against a letter one stage never saw.
    qids = sorted(q for q in set.intersection(*(set(p) for p in per))
                  if len({p[q]["answer"] for p in per}) == 1)[:limit]
    prompts, metas, n_opts = [], [], []
    for q in qids:
        opts = options_of(base[q])
        n_opts.append(len(opts))
        prompts.append(base[q]["question"] + "\n" + "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(opts)))
        metas.append([f"category={base[q]['category']}"])
    p_dense = np.array([prompt_stats(p) for p in prompts])
    p_hash = [hashed_tokens(p, m) for p, m in zip(prompts, metas, strict=True)]
    gold = [base[q]["answer"] for q in qids]
    stages: list[list[dict]] = [[] for _ in qids]
    for k, (model, rows) in enumerate(zip(models, per, strict=True)):
        texts = [answer_text(rows[q]) for q in qids]
        resp = [extract(t) for t in texts]
        y = np.array([r is not None and r == g for r, g in zip(resp, gold, strict=True)])
        r_dense = np.array([text_stats(t, n) for t, n in zip(texts, n_opts, strict=True)])
        r_hash = [hashed_tokens(t[-TAIL:], m) for t, m in zip(texts, metas, strict=True)]
        conf = oof(r_dense, r_hash, y, seed + 10 * k)
        ex = oof(p_dense, p_hash, y, seed + 10 * k + 5)   # other folds than the verifier's: no shared luck
        for i in range(len(qids)):
            stages[i].append({"model": model, "cost": COSTS[k], "correct": bool(y[i]),
                              "confidence": float(conf[i]), "ex_ante": float(ex[i]), "response": resp[i] or ""})
    return [{"id": f"mmlupro/{q}", "prompt": prompts[i], "meta": metas[i], "stages": stages[i]}
            for i, q in enumerate(qids)]


def summary(records: Sequence[dict]) -> list[dict]:
    """Per stage: accuracy, share with a stated answer, AUROC of confidence and of ex_ante."""
    out = []
    for k in range(len(records[0]["stages"])):
        st = [r["stages"][k] for r in records]
        y = np.array([s["correct"] for s in st], dtype=float)
        out.append({"model": st[0]["model"], "accuracy": float(y.mean()),
                    "answered": float(np.mean([s["response"] != "" for s in st])),
                    "auroc_confidence": stats.auroc(y, np.array([s["confidence"] for s in st])),
                    "auroc_ex_ante": stats.auroc(y, np.array([s["ex_ante"] for s in st]))})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.offline.mmlupro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help=f"folder of the MMLU-Pro zips (default {DEFAULT_DIR})")
    ap.add_argument("--out", default="artifacts/mmlupro", help="folder for <ladder>.jsonl")
    ap.add_argument("--ladder", choices=sorted(LADDERS), action="append", help="one ladder (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions by question_id")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    ladders = a.ladder or list(LADDERS)
    d = find_dir(a.data, ladders)
    if d is None:
        print(WHERE, file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ladders:
        t0 = time.perf_counter()
        recs = ladder_records(d, name, a.limit, a.seed)
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        print(f"{out / (name + '.jsonl')}: {len(recs)} questions, {time.perf_counter() - t0:.0f} s")
        for s in summary(recs):
            au = {key: "n/a" if s[key] is None else f"{s[key]:.3f}" for key in ("auroc_confidence", "auroc_ex_ante")}
            print(f"  {s['model']}: accuracy {s['accuracy']:.3f}, answered {s['answered']:.2f}, "
                  f"AUROC verifier {au['auroc_confidence']}, ex-ante {au['auroc_ex_ante']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
