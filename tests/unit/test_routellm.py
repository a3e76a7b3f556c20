"""RouteLLM converters on the real files (skipped, with where to get them, when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optistop.offline import routellm
from optistop.offline.operating import arrays_from_records

DATA = routellm.find_dir()
# Skipped only when the folder is truly absent (CI has it: ../shared/data beside the clone, found from
# the package's own location); a folder that is there but incomplete fails instead.
needs_data = pytest.mark.skipif(not routellm.DEFAULT_DIR.exists(), reason=routellm.WHERE)


def data_dir() -> Path:
    assert DATA is not None, f"{routellm.DEFAULT_DIR} exists but lacks files: {routellm.WHERE}"
    return DATA


@needs_data
def test_mmlu_records_match_the_readme() -> None:
    recs = routellm.mmlu_records(data_dir())
    assert len(recs) == 14042 - 5                          # contaminated prompts dropped
    data = arrays_from_records(recs, need_confidence=False)
    assert data.costs.tolist() == [1.0, 10.0]
    assert data.correct.mean(axis=0) == pytest.approx([0.681, 0.806], abs=1e-3)
    assert recs[0]["meta"][0].startswith("subject=")


@needs_data
def test_gsm8k_records_match_the_readme() -> None:
    recs = routellm.gsm8k_records(data_dir())
    assert len(recs) == 1319 - 12
    data = arrays_from_records(recs, need_confidence=False)
    assert data.correct.mean(axis=0) == pytest.approx([0.637, 0.858], abs=1e-3)
    assert all(isinstance(st["response"], str) for r in recs for st in r["stages"])
    contaminated = (data_dir() / "gsm8k_contaminated_prompts.jsonl").read_text().splitlines()
    drop = {json.loads(x)["eval_prompt"] for x in contaminated}
    assert not drop & {r["prompt"] for r in recs}


def test_missing_folder_says_where_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert routellm.find_dir(tmp_path) is None
    assert routellm.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lm-sys/RouteLLM" in err and err.count("\n") == 1


def test_converter_cli_on_a_small_folder(tmp_path: Path) -> None:
    d = tmp_path / "routellm"
    fake_folder(d)
    assert routellm.main(["--data", str(d), "--out", str(tmp_path / "o")]) == 0
    lines = (tmp_path / "o" / "gsm8k.jsonl").read_text().splitlines()
    assert len(lines) == 39                                  # one of 40 is contaminated


def fake_folder(d: Path, n_mmlu: int = 60, n_gsm: int = 40) -> Path:
    """A RouteLLM-shaped folder with made-up rows (used here and by tests/test_report.py)."""
    import csv
    import random

    rng = random.Random(0)
    (d / "mmlu_responses").mkdir(parents=True)
    w, s = routellm.WEAK, routellm.STRONG
    for subj in ("anatomy", "astronomy"):
        with open(d / "mmlu_responses" / f"mmlu_{subj}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["prompt", w, s])
            for i in range(n_mmlu // 2):
                hard = rng.random() < 0.5
                wr.writerow([f"{subj} question {i} {'hard' if hard else 'easy'}?\nA. a\nB. b\nAnswer:",
                             str(rng.random() < (0.3 if hard else 0.9)), str(rng.random() < 0.9)])
    (d / "mmlu_contaminated_prompts.jsonl").write_text(json.dumps({"eval_prompt": "nothing"}) + "\n")
    with open(d / "gsm8k_responses.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["prompt", w, s, w + "_response", s + "_response"])
        for i in range(n_gsm):
            ok = rng.random() < 0.6
            v = 2 + i if ok else 5 + i
            resp = f"2 + {i} = <<2+{i}={v}>>{v}\n#### {v}"
            wr.writerow([f"Tom has 2 apples and {i} pears. How many?", str(ok), str(rng.random() < 0.9),
                         resp, f"The answer is {2 + i}"])
    (d / "gsm8k_contaminated_prompts.jsonl").write_text(
        json.dumps({"eval_prompt": "Tom has 2 apples and 0 pears. How many?"}) + "\n")
    return d
