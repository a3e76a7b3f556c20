"""RouteLLM's released per-prompt outcomes as replay records (two-stage weak -> strong cascade).

$ python -m optistop.offline.routellm [--data ../shared/data/routellm] --out artifacts/routellm   # writes 2 JSONL

weak = Mixtral-8x7B-Instruct (cost 1), strong = GPT-4-1106-preview (cost 10): the stated cost model,
about the ratio of their per-token prices when this data was made, rounded. Contaminated prompts (the
folder's *_contaminated_prompts.jsonl, field eval_prompt) are dropped. MMLU carries no responses, so its
predictor sees the prompt (and the subject, known at request time) only; GSM8K carries both answers, so
the weak stage's post-hoc confidence can read the weak answer.

Published reference points: the data README (oracle strong-call share for 95% of strong accuracy: MMLU
8.5%, GSM8K 17.8%) and the RouteLLM paper (Ong et al. 2024, arXiv 2406.18665, Tables 2 and 3): the best
routers need CPT(80%) = 70.3% (MMLU) and 63.3% (GSM8K) strong calls to recover 80% of the weak-strong gap.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from optistop import ROOT

DEFAULT_DIR = ROOT.parent / "shared" / "data" / "routellm"
WHERE = ("RouteLLM data not found: put the files of the routellm/evals/ folder of the public repository "
         "lm-sys/RouteLLM in ../shared/data/routellm (or pass --data)")
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
COSTS = (1.0, 10.0)
PUBLISHED = {  # RouteLLM paper, best router per set (augmented training data): share of strong calls
    "routellm_mmlu": {"cpt50": 0.3540, "cpt80": 0.7031, "source": "Ong et al. 2024, Table 2"},
    "routellm_gsm8k": {"cpt50": 0.3364, "cpt80": 0.6326, "source": "Ong et al. 2024, Table 3"},
}
ORACLE_README = {"routellm_mmlu": 0.085, "routellm_gsm8k": 0.178}


def find_dir(path: str | Path | None = None) -> Path | None:
    """The data folder (argument, else the default) if it holds the files, else None."""
    d = Path(path) if path else DEFAULT_DIR
    return d if (d / "gsm8k_responses.csv").is_file() and (d / "mmlu_responses").is_dir() else None


def _contaminated(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def _bool(v: str) -> bool:
    if v not in ("True", "False"):
        raise ValueError(f"expected True/False, got {v!r}")
    return v == "True"


def _stage(model: str, cost: float, correct: bool, response: str | None = None) -> dict:
    s = {"model": model, "cost": cost, "correct": correct}
    if response is not None:
        s["response"] = response
    return s


def mmlu_records(data_dir: Path) -> list[dict]:
    drop = _contaminated(data_dir / "mmlu_contaminated_prompts.jsonl")
    out = []
    for path in sorted((data_dir / "mmlu_responses").glob("mmlu_*.csv")):
        subject = path.stem[len("mmlu_"):]
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if row["prompt"] in drop:
                    continue
                out.append({"id": f"mmlu/{subject}/{i}", "prompt": row["prompt"], "meta": [f"subject={subject}"],
                            "stages": [_stage(WEAK, COSTS[0], _bool(row[WEAK])),
                                       _stage(STRONG, COSTS[1], _bool(row[STRONG]))]})
    return out


def gsm8k_records(data_dir: Path) -> list[dict]:
    drop = _contaminated(data_dir / "gsm8k_contaminated_prompts.jsonl")
    csv.field_size_limit(1 << 30)
    out = []
    with open(data_dir / "gsm8k_responses.csv", newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if row["prompt"] in drop:
                continue
            out.append({"id": f"gsm8k/{i}", "prompt": row["prompt"],
                        "stages": [_stage(WEAK, COSTS[0], _bool(row[WEAK]), row[WEAK + "_response"]),
                                   _stage(STRONG, COSTS[1], _bool(row[STRONG]), row[STRONG + "_response"])]})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.offline.routellm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help=f"RouteLLM evals folder (default {DEFAULT_DIR})")
    ap.add_argument("--out", default="artifacts/routellm", help="folder for mmlu.jsonl and gsm8k.jsonl")
    a = ap.parse_args(argv)
    d = find_dir(a.data)
    if d is None:
        print(WHERE, file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("mmlu", mmlu_records(d)), ("gsm8k", gsm8k_records(d))):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        print(f"{out / (name + '.jsonl')}: {len(recs)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
