"""The tiny family: three Qwen2ForCausalLM models that stand in for Qwen2.5-7B / 32B / 72B on a CPU.

Shapes and step counts follow the measurements in DESIGN.md: depth, not width, is what learns carrying
in addition, so the large model is deeper, not wider. Training is deterministic: one torch thread,
seeded data stream, seeded init.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MAX_POSITIONS = 64  # longest sequence: <bos> S:<12 digits>= <12 digits> <eos> = 29 tokens


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters; saved next to the weights so a run can be reproduced."""

    steps: int
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Member:
    name: str
    shape: Shape
    recipe: Recipe


MEMBERS: dict[str, Member] = {
    "small": Member("small", Shape(64, 2, 4, 2, 192), Recipe(steps=600)),
    "medium": Member("medium", Shape(96, 3, 4, 2, 288), Recipe(steps=1500)),
    "large": Member("large", Shape(96, 6, 4, 2, 288), Recipe(steps=2500)),
}

# The TensorRT-LLM-compatible tiny family (models/tiny-trt): head size 64 (hidden 128, 2 heads), the
# smallest size TensorRT-LLM's attention kernels take, so build/gpu-check.sh and build/tiny-trtllm.toml
# build real engines on any single GPU from weights the project ships. Same tokenizer and task suite;
# trained briefly (a smoke-test family, not an accurate one): about 4 MB of float32 weights in all.
TRT_MEMBERS: dict[str, Member] = {
    "small": Member("small", Shape(128, 1, 2, 2, 256), Recipe(steps=150, batch_size=64)),
    "medium": Member("medium", Shape(128, 2, 2, 2, 256), Recipe(steps=150, batch_size=64)),
    "large": Member("large", Shape(128, 3, 2, 2, 256), Recipe(steps=150, batch_size=64)),
}
FAMILIES: dict[str, dict[str, Member]] = {"tiny": MEMBERS, "tiny-trt": TRT_MEMBERS}


def qwen2_config(shape: Shape, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.ffn,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
