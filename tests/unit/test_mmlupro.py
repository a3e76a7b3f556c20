"""MMLU-Pro ladders: answer extraction, records from a hand-made zip, out-of-fold honesty, the real files
(skipped, with where to get them, when absent; OPTISTOP_MMLUPRO_DIR points a worktree at them)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from optistop.offline import mmlupro
from optistop.offline.fit import fold_ids
from optistop.offline.operating import arrays_from_records

DATA = mmlupro.find_dir(os.environ.get("OPTISTOP_MMLUPRO_DIR"))
# Skipped only when the folder is truly absent (CI has it: ../shared/data beside the clone, found from
# the package's own location); a folder that is there but incomplete fails instead.
ABSENT = not Path(os.environ.get("OPTISTOP_MMLUPRO_DIR") or mmlupro.DEFAULT_DIR).exists()
needs_data = pytest.mark.skipif(ABSENT, reason=mmlupro.WHERE)
README_ACC = {"qwen": (0.264, 0.419, 0.492), "llama": (0.433, 0.626, 0.720)}   # the data README's table


@pytest.mark.parametrize(("text", "letter"), [
    ("Step 1 ... the answer is (B).", "B"),
    ("The answer is (A). Wait, recheck. The answer is (C).", "C"),        # the last one counts
    ("So the answer is **(D)**.", "D"),                                  # markdown bold
    ("The answer is (**E**).", "E"),
    ("the answer is: J. done", "J"),
    ("I think it is (B), no final statement", None),
    ("The answer is Apple.", None),                                      # a word, not a letter
    ("The answer is (K).", None),                                        # beyond A-J
    ("", None),
])
def test_extract(text: str, letter: str | None) -> None:
    assert mmlupro.extract(text) == letter


def _write_zip(d: Path, model: str, rows: list[dict]) -> None:
    with zipfile.ZipFile(mmlupro.zip_path(d, model), "w") as z:
        z.writestr(f"model_outputs_{model}_5shots.json", json.dumps(rows))


def _question(qid: int, gold: str) -> dict:
    return {"question_id": qid, "question": f"Question {qid}?", "options": ["w", "x", "y", "z"],
            "answer": gold, "answer_index": "ABCD".index(gold), "cot_content": "", "category": "math",
            "src": "ori_mmlu-x", "pred": "A"}


def _tiny(d: Path) -> Path:
    """The llama ladder on 4 questions (ids 7, 3, 5, 9; gold B, C, A, A) and id 11 that gemini lacks;
    id 13 whose gold letter differs in gemini's file; gemini answers in model_outputs."""
    texts = {  # model -> question_id -> answer text
        "Meta-Llama-3_1-8B-Instruct": {7: "The answer is (B).", 3: "Hmm, maybe (C)?", 5: "The answer is (D)."},
        "Meta-Llama-3_1-70B-Instruct": {7: "The answer is **(B)**.", 3: "The answer is (C).",
                                        5: "The answer is (B). Wait, the answer is (A)."},
        "gemini-1.5-pro-002": {7: "The answer is (B).", 3: "The answer is (C).", 5: "The answer is (A)."},
    }
    gold = {7: "B", 3: "C", 5: "A"}
    for model, by_q in texts.items():
        field = "model_outputs" if model.startswith("gemini") else "generated_text"
        extra = [_question(9, "A") | {field: "The answer is (A)."}]
        extra += [_question(11, "A") | {field: "The answer is (A)."}] if model.startswith("Meta") else []
        extra += [_question(13, "A" if model.startswith("Meta") else "B") | {field: "The answer is (A)."}]
        _write_zip(d, model, [_question(q, gold[q]) | {field: t} for q, t in by_q.items()] + extra)
    return d


def test_ladder_records_from_a_tiny_zip(tmp_path: Path) -> None:
    d = _tiny(tmp_path)
    assert mmlupro.find_dir(d, ["llama"]) == d and mmlupro.find_dir(d) is None    # qwen zips absent
    recs = mmlupro.ladder_records(d, "llama")
    assert [r["id"] for r in recs] == ["mmlupro/3", "mmlupro/5", "mmlupro/7", "mmlupro/9"]   # 11: no gemini,
    # 13: gold letters disagree
    assert recs[0]["prompt"] == "Question 3?\n(A) w\n(B) x\n(C) y\n(D) z" and recs[0]["meta"] == ["category=math"]
    got = [[(s["response"], s["correct"]) for s in r["stages"]] for r in recs]
    assert got == [[("", False), ("C", True), ("C", True)],
                   [("D", False), ("A", True), ("A", True)],
                   [("B", True), ("B", True), ("B", True)],
                   [("A", True), ("A", True), ("A", True)]]
    for r in recs:
        assert [s["model"] for s in r["stages"]] == list(mmlupro.LADDERS["llama"])
        assert [s["cost"] for s in r["stages"]] == [1.0, 4.5, 10.0]
        for s in r["stages"]:
            assert 0.0 <= s["confidence"] <= 1.0 and 0.0 <= s["ex_ante"] <= 1.0
    assert arrays_from_records(recs).conf.shape[1] == 3   # the replay reads them
    assert [r["id"] for r in mmlupro.ladder_records(d, "llama", limit=3)] == [r["id"] for r in recs[:3]]
    with pytest.raises(ValueError, match="at least 3"):
        mmlupro.ladder_records(d, "llama", limit=2)
    assert mmlupro.main(["--data", str(d), "--ladder", "llama", "--out", str(tmp_path / "o")]) == 0
    assert len((tmp_path / "o" / "llama.jsonl").read_text(encoding="utf-8").splitlines()) == 4


def test_missing_data_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mmlupro.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert mmlupro.WHERE in capsys.readouterr().err


def test_scores_are_out_of_fold() -> None:
    """Flipping one label changes the scores of other folds' items (their model trained on it) and never
    the scores of its own fold, itself included: no item's score saw its own label."""
    rng = np.random.default_rng(1)
    n, seed = 80, 3
    dense = rng.normal(size=(n, 3))
    hashed = [sorted(rng.choice(50, size=5, replace=False).tolist()) for _ in range(n)]
    y = dense[:, 0] + rng.normal(size=n) > 0
    p = mmlupro.oof(dense, hashed, y, seed)
    assert np.all((p >= 0) & (p <= 1))
    fid = fold_ids(n, mmlupro.FOLDS, seed)
    for i in (0, 17):
        y2 = y.copy()
        y2[i] = not y2[i]
        p2 = mmlupro.oof(dense, hashed, y2, seed)
        same = fid == fid[i]
        np.testing.assert_array_equal(p2[same], p[same])
        assert np.any(p2[~same] != p[~same])


@needs_data
@pytest.mark.parametrize("ladder", ["qwen", "llama"])
def test_accuracy_matches_the_readme(ladder: str) -> None:
    """All questions (extraction only, no fitting): the README's accuracy per stage."""
    assert DATA is not None, f"the MMLU-Pro folder exists but lacks files: {mmlupro.WHERE}"
    per = [mmlupro.load(DATA, m) for m in mmlupro.LADDERS[ladder]]
    for rows, want in zip(per, README_ACC[ladder], strict=True):
        acc = np.mean([mmlupro.extract(mmlupro.answer_text(r)) == r["answer"] for r in rows.values()])
        assert abs(acc - want) < 0.01


@needs_data
def test_real_ladder_first_600() -> None:
    """The first 600 by question_id are all one subject (business), so accuracy is checked loosely (0.1)."""
    assert DATA is not None, f"the MMLU-Pro folder exists but lacks files: {mmlupro.WHERE}"
    recs = mmlupro.ladder_records(DATA, "qwen", limit=600)
    assert len(recs) == 600
    s = mmlupro.summary(recs)
    for st, want in zip(s, README_ACC["qwen"], strict=True):
        assert abs(st["accuracy"] - want) < 0.1
    assert s[0]["auroc_confidence"] > 0.55
    # AUROC by its definition: the share of (correct, wrong) pairs ranked right, ties counting half
    y = np.array([r["stages"][0]["correct"] for r in recs], bool)
    conf = np.array([r["stages"][0]["confidence"] for r in recs])
    pos, neg = conf[y][:, None], conf[~y][None, :]
    pairs = (pos > neg).mean() + 0.5 * (pos == neg).mean()
    assert s[0]["auroc_confidence"] == pytest.approx(pairs, abs=1e-9)
