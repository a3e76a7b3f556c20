"""Stage models for TensorRT-LLM's PyTorch backend in Triton: the project's LLM-API stage.

No engines: each stage directory gets a config.pbtxt with the project's stage contract
(``optistop.tensors.STAGE``, so bls.py calls it as it calls a TensorRT engine), ``1/model.yaml`` with the
``tensorrt_llm.LLM(**kwargs)`` arguments, and ``1/model.py``, the thin glue
optistop/engines/triton_models/llmapi_stage.py over optistop.engines.llmapi_stage (token ids in; output_ids,
sequence_length and per-token output_log_probs out). The stock tensorrtllm_backend ``llmapi`` model is not
used: it takes text, returns no per-token log-probs and places one instance on GPU 0.
Called through ``python -m optistop.render --profile llmapi``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optistop.compat import tomllib
from optistop.serving.streaming import stream_model
from optistop.spec import CascadeSpec, SpecError, Stage, check_keys
from optistop.tensors import STAGE, STAGE_STREAM

MODEL_PY = Path(__file__).resolve().parents[1] / "engines" / "triton_models" / "llmapi_stage.py"   # -> 1/model.py


@dataclass(frozen=True)
class LlmapiSettings:
    """The GPU profile's [llmapi] table: LLM() arguments shared by every stage."""

    backend: str = "pytorch"
    max_batch_size: int = 64                    # LLM(): requests in flight per stage
    max_seq_len: int = 5120
    max_num_tokens: int = 8192
    free_gpu_memory_fraction: float = 0.9       # kv_cache_config
    enable_block_reuse: bool = True             # kv_cache_config: shared prompt prefixes


def load_llmapi_settings(path: Path, spec: CascadeSpec) -> LlmapiSettings:
    table = dict(tomllib.loads(Path(path).read_text()).get("llmapi") or {})
    where = f"{Path(path).name}: llmapi"
    if not table:
        raise SpecError(f"{where}: missing table (the PyTorch-backend profile's LLM() settings)")
    base, values = LlmapiSettings(), {}
    check_keys(table, LlmapiSettings, where)
    for key, value in table.items():
        want = type(getattr(base, key))
        value = float(value) if want is float and type(value) is int else value
        if type(value) is not want:
            raise SpecError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
        values[key] = value
    s = dataclasses.replace(base, **values)
    if s.backend != "pytorch":
        raise SpecError(f"{where}.backend: must be 'pytorch' (the engine path is profile trtllm)")
    if not 0 < s.free_gpu_memory_fraction < 1:
        raise SpecError(f"{where}.free_gpu_memory_fraction: must be in (0, 1)")
    if s.max_seq_len < spec.max_context_tokens:
        raise SpecError(f"{where}.max_seq_len: {s.max_seq_len} is below cascade.max_context_tokens="
                        f"{spec.max_context_tokens}")
    return s


def model_yaml(stage: Stage, s: LlmapiSettings) -> dict[str, Any]:
    """The stage's 1/model.yaml as a dict (written as JSON, which YAML loaders read): LLM() arguments."""
    return {
        "model": str(stage.checkpoint),           # HF checkpoint directory: no conversion, no build
        "backend": s.backend,
        "tensor_parallel_size": stage.tp_size,
        "pipeline_parallel_size": 1,
        "max_batch_size": s.max_batch_size,
        "max_seq_len": s.max_seq_len,
        "max_num_tokens": s.max_num_tokens,
        "kv_cache_config": {"free_gpu_memory_fraction": s.free_gpu_memory_fraction,
                            "enable_block_reuse": s.enable_block_reuse},
    }


def stage_files(spec: CascadeSpec, stage: Stage, s: LlmapiSettings, label: str, repo: Path,
                stream: bool = False) -> dict[Path, str]:
    """{path: text} of one stage (``stream``: its decoupled ``<triton_model>_stream`` variant, a second
    LLM on the same GPUs): config.pbtxt, 1/model.yaml and 1/model.py."""
    from optistop.render.pbtxt import dumps
    from optistop.render.repo import render_header, stage_config

    name = stream_model(stage.triton_model) if stream else stage.triton_model
    cfg = stage_config(
        name, "python", s.max_batch_size, STAGE_STREAM if stream else STAGE,
        # a dynamic batch goes to the LLM at once, which batches in flight; the cascade calls with
        # exec(decoupled=False), so the plain stage is not decoupled
        decoupled=stream, queue_delay_us=1000,
        instances=1,   # one LLM per stage: it batches in flight across the stage's GPUs
        # CUDA_VISIBLE_DEVICES of this stage (llmapi_stage.set_visible_gpus, before tensorrt_llm is imported)
        params={"gpu_device_ids": ",".join(str(g) for g in stage.gpu_ids)})
    text = dumps(cfg, header=render_header(label, "llmapi"))
    d = repo / name
    return {d / "config.pbtxt": text,
            d / "1" / "model.yaml": json.dumps(model_yaml(stage, s), indent=2) + "\n",
            d / "1" / "model.py": MODEL_PY.read_text(encoding="utf-8")}
