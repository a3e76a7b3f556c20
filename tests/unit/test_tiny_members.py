"""The committed tiny family: hashes, the hierarchy it promises, and reproducible training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from optistop.tiny.members import MEMBERS
from optistop.tiny.tokenizer import build_tokenizer
from optistop.tiny.train import train_member


def test_committed_weights_match_manifest(tiny_dir: Path) -> None:
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    for name in MEMBERS:
        recorded = manifest["members"][name]["sha256"]
        assert set(recorded) >= {"model.safetensors", "config.json", "tokenizer.json"}
        for fname, digest in recorded.items():
            assert hashlib.sha256((tiny_dir / name / fname).read_bytes()).hexdigest() == digest, fname


def test_manifest_records_a_real_hierarchy(tiny_dir: Path) -> None:
    """Re-derives the acceptance conditions from the recorded per-model figures."""
    members = json.loads((tiny_dir / "manifest.json").read_text())["members"]
    names = list(MEMBERS)
    acc = [members[n]["accuracy"] for n in names]
    lat = [members[n]["latency_ms"] for n in names]
    assert acc[0] < acc[1] < acc[2]
    assert acc[0] >= 0.40
    assert lat[0] < lat[1] < lat[2]
    fams = members["small"]["accuracy_by_family"]
    hardest = min(fams, key=lambda f: sum(members[n]["accuracy_by_family"][f] for n in names))
    hard = [members[n]["accuracy_by_level"][hardest]["4"] for n in names]
    assert hard[1] - hard[0] >= 0.10 and hard[2] - hard[1] >= 0.10, (hardest, hard)
    params = [members[n]["params"] for n in names]
    assert params[0] < params[1] < params[2]


def test_short_training_run_is_bit_for_bit_reproducible(tmp_path: Path) -> None:
    tok = build_tokenizer()
    for run in ("a", "b"):
        train_member(MEMBERS["small"], tok, tmp_path / run, steps=3, log_every=0)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b
