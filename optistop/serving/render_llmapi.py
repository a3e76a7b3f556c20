"""Stage configs for TensorRT-LLM's PyTorch backend in Triton: the tensorrtllm_backend `llmapi` model.

No engines: each stage directory gets a config.pbtxt with the llmapi model's tensors
(``optistop.tensors.LLMAPI_STAGE``) and a ``1/model.yaml`` whose keys the llmapi model.py reads:
``triton_config`` (``decoupled``, ``max_batch_size``, ``cancellation_check_period_ms``) for itself, every
other key passed to ``tensorrt_llm.LLM(**kwargs)`` (NVIDIA/TensorRT-LLM
triton_backend/all_models/llmapi/tensorrt_llm/1/{model.py,model.yaml}). The model code itself
(1/model.py, 1/helpers.py) is not ours: build/launch.sh copies it from the image's /app/all_models/llmapi.
Called through ``python -m optistop.serving.render --profile llmapi``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optistop.compat import tomllib
from optistop.spec import CascadeSpec, SpecError, Stage, check_keys
from optistop.tensors import LLMAPI_STAGE

MODEL_CODE = ("model.py", "helpers.py")      # what launch.sh copies from the image into 1/
LLMAPI_TEMPLATE_DIR = "/app/all_models/llmapi/tensorrt_llm/1"


@dataclass(frozen=True)
class LlmapiSettings:
    """The GPU profile's [llmapi] table: LLM() arguments shared by every stage."""

    backend: str = "pytorch"
    max_batch_size: int = 64                    # LLM(): requests in flight per stage
    max_seq_len: int = 5120
    max_num_tokens: int = 8192
    free_gpu_memory_fraction: float = 0.9       # kv_cache_config
    enable_block_reuse: bool = True             # kv_cache_config: shared prompt prefixes
    cancellation_check_period_ms: int = 100


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
    """The stage's 1/model.yaml as a dict (written as JSON, which YAML loaders read)."""
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
        # read by model.py itself; must agree with config.pbtxt because launch.sh disables auto-complete
        "triton_config": {"max_batch_size": 0, "decoupled": False,
                          "cancellation_check_period_ms": s.cancellation_check_period_ms},
    }


def config_pbtxt(spec_label: str, stage: Stage, tensor: Any, parameters: str) -> str:
    """config.pbtxt of one llmapi stage; ``tensor`` and ``parameters`` are render.py's writers."""
    return (f"# Rendered by `python -m optistop.serving.render` from {spec_label} (profile llmapi); "
            "do not edit by hand.\n"
            f'name: "{stage.triton_model}"\nbackend: "python"\n'
            "# the llmapi model does not batch (its model.yaml triton_config); the LLM API batches in flight\n"
            "max_batch_size: 0\nmodel_transaction_policy {\n  decoupled: false\n}\n"
            "input [\n" + ",\n".join(tensor(t, False) for t in LLMAPI_STAGE.inputs) + "\n]\n"
            "output [\n" + ",\n".join(tensor(t, False) for t in LLMAPI_STAGE.outputs) + "\n]\n"
            "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n" + parameters + "\n")


def stage_files(spec: CascadeSpec, stage: Stage, s: LlmapiSettings, label: str, tensor: Any,
                parameters: Any, repo: Path) -> dict[Path, str]:
    """{path: text} of one stage: config.pbtxt and 1/model.yaml."""
    # gpu_device_ids: the placement key docs/llmapi.md documents for this model (one set per instance)
    params = parameters({"gpu_device_ids": ",".join(str(g) for g in stage.gpu_ids)})
    d = repo / stage.triton_model
    return {d / "config.pbtxt": config_pbtxt(label, stage, tensor, params),
            d / "1" / "model.yaml": json.dumps(model_yaml(stage, s), indent=2) + "\n"}
