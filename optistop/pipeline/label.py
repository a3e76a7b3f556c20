"""Label collected answers: which stage's answer is acceptable for each prompt.

$ optistop label replay.jsonl --grader number --out labelled.jsonl
$ optistop label replay.jsonl --grader agree:choice --out labelled.jsonl     # no gold answers needed
$ optistop label replay.jsonl --grader mypkg.graders:is_right --out labelled.jsonl

Graders (``correct`` per stage; a stage that errored is never correct):
- ``exact``: the answer equals ``reference`` after trimming and collapsing whitespace.
- ``choice``: the last stated option letter A-J ("the answer is (C)", else the last standalone letter)
  equals ``reference``.
- ``number``: the final number of the answer (GSM8K's "#### 42", else the last number; commas and a
  trailing ".0" ignored) equals ``reference`` numerically.
- ``agree[:exact|choice|number]``: label-free: acceptable when it matches the LAST stage's answer under
  that normaliser (default exact). The last stage is acceptable by definition, so quality is measured
  relative to it, which is what the cascade's target (a share of the last stage's quality) means.
- ``module:function``: your own, called as ``function(response, reference, record) -> bool``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

GRADERS_HELP = "exact | choice | number | agree[:exact|choice|number] | module:function"
Normaliser = Callable[[str], str | None]

_CHOICE_STATED = re.compile(r"answer is:?\s*\(?([A-J])\)?", re.I)
_CHOICE_ANY = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")
_GSM_FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def norm_exact(text: str) -> str | None:
    t = " ".join(str(text).split())
    return t or None


def norm_choice(text: str) -> str | None:
    stated = _CHOICE_STATED.findall(text)
    if stated:
        return stated[-1].upper()
    letters = _CHOICE_ANY.findall(text)
    return letters[-1] if letters else None


def norm_number(text: str) -> str | None:
    m = _GSM_FINAL.findall(text) or _NUMBER.findall(text)
    if not m:
        return None
    raw = m[-1].replace(",", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return None
    return f"{value:.6g}" if value != int(value) else str(int(value))


NORMALISERS: dict[str, Normaliser] = {"exact": norm_exact, "choice": norm_choice, "number": norm_number}


def make_grader(name: str) -> Callable[[str, Any, dict[str, Any]], bool]:
    """A grader by name (see the module docstring); ValueError naming the valid ones."""
    if name in NORMALISERS:
        norm = NORMALISERS[name]

        def gold(response: str, reference: Any, record: dict[str, Any]) -> bool:
            if reference is None:
                raise ValueError(f"prompt {record.get('id')!r} has no 'reference'; grader {name!r} needs one "
                                 "(or use agree)")
            got = norm(response)
            return got is not None and got == norm(str(reference))
        return gold
    if name == "agree" or name.startswith("agree:"):
        norm = NORMALISERS.get(name.partition(":")[2] or "exact")
        if norm is None:
            raise ValueError(f"unknown normaliser in {name!r}; valid: agree, agree:exact, agree:choice, agree:number")

        def agree(response: str, reference: Any, record: dict[str, Any]) -> bool:
            last = record["stages"][-1]
            if "error" in last:
                return False
            got = norm(response)
            return got is not None and got == norm(last.get("response", ""))
        return agree
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"grader {name!r}: cannot import {fn} from {mod} ({exc})") from None
        return lambda response, reference, record: bool(func(response, reference, record))
    raise ValueError(f"unknown grader {name!r}; valid: {GRADERS_HELP}")


def make_labeler(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    grader = make_grader(name)

    def label(record: dict[str, Any]) -> dict[str, Any]:
        for st in record["stages"]:
            st["correct"] = "error" not in st and bool(grader(st.get("response", ""), record.get("reference"), record))
        record["grader"] = name
        return record
    return label


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop label", description=__doc__.split("\n")[0])
    ap.add_argument("replay", type=Path, help="collected JSONL (optistop collect)")
    ap.add_argument("--grader", required=True, help=GRADERS_HELP)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        label = make_labeler(args.grader)
        lines = args.replay.read_text(encoding="utf-8").splitlines()
        records = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append(label(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{args.replay}:{n}: not a collected record ({exc})") from None
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    n = len(records[0]["stages"]) if records else 0
    acc = [sum(r["stages"][k]["correct"] for r in records) / max(len(records), 1) for k in range(n)]
    print(f"labelled {len(records)} prompts with {args.grader}: accuracy per stage "
          + " / ".join(f"{a:.3f}" for a in acc))
    return 0
