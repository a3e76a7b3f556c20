"""models/tiny-trt: the TensorRT-LLM-compatible smoke-test family (head size 64) that build/tiny-trtllm.toml
and build/gpu-check.sh build engines from. Its config must suit TensorRT-LLM's attention kernels, its files
must be the ones the manifest hashes, and it must load and generate with transformers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from optistop.spec import load_spec
from optistop.tiny.members import TRT_MEMBERS

ROOT = Path(__file__).resolve().parents[2]
FAMILY = ROOT / "models" / "tiny-trt"
MEMBERS = ("small", "medium", "large")


@pytest.mark.parametrize("member", MEMBERS)
def test_config_has_head_size_64_and_matches_its_recipe(member: str) -> None:
    cfg = json.loads((FAMILY / member / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]) == 64
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    shape = TRT_MEMBERS[member].shape
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == \
           (shape.hidden, shape.layers, shape.ffn)


def test_files_are_the_manifest_and_small_and_share_the_tiny_tokenizer() -> None:
    man = json.loads((FAMILY / "manifest.json").read_text())
    assert "optistop.tiny.train --family tiny-trt" in man["command"]
    total = 0
    for member in MEMBERS:
        for name, digest in man["members"][member]["sha256"].items():
            data = (FAMILY / member / name).read_bytes()
            total += len(data)
            assert hashlib.sha256(data).hexdigest() == digest, f"{member}/{name}"
        tok = json.loads((FAMILY / member / "tokenizer.json").read_text())["model"]["vocab"]
        assert tok == json.loads((ROOT / "models" / "tiny" / "small" / "tokenizer.json").read_text())["model"]["vocab"]
    assert total < 5 * 1024 * 1024


def test_loads_with_transformers_and_generates() -> None:
    from optistop.engines.runner import StageModel

    spec = load_spec(ROOT / "build" / "tiny-trtllm.toml", check_paths=True)
    assert [s.checkpoint for s in spec.stages] == [(FAMILY / m).resolve() for m in MEMBERS]
    model = StageModel(FAMILY / "small", threads=1)
    ids = model.tokenizer("A:12+7=").input_ids
    g, = model.generate_ids([list(ids)], 8, end_id=model.end_id)
    assert 1 <= len(g.token_ids) <= 8 and len(g.logprobs) == len(g.token_ids)
    assert all(lp <= 0 for lp in g.logprobs) and any(lp < 0 for lp in g.logprobs)
