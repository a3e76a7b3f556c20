"""Render the stage engines' config.pbtxt from a cascade spec: one template, one function, two profiles.

$ python -m optistop.render --spec cascade.toml --repo model_repository             # CPU (committed)
$ python -m optistop.render --profile trtllm --spec build/qwen2.5-trtllm.toml \\
      --engines-dir /engines --out /engines/model_repository                         # GPU (engines.sh)
$ python -m optistop.render --check                                                # committed == rendered?

Profile ``cpu`` renders the embedded stand-ins (Python backend, ``model.py`` reads ``checkpoint_dir``);
profile ``trtllm`` renders TensorRT-LLM's C++ ``tensorrtllm`` backend configs for engines built by
build/engines.sh. Both take their inputs/outputs from ``optistop.tensors.STAGE``; only the backend,
batching knobs and ``parameters`` differ. ``--plan`` prints the per-stage build plan that engines.sh runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from string import Template
from typing import Any

import tomllib

from optistop.config import DEFAULT_SPEC, CascadeSpec, SpecError, Stage, load_spec
from optistop.tensors import STAGE, Contract, Tensor

REPO_ROOT = DEFAULT_SPEC.parent
PROFILES = ("cpu", "trtllm")

# The one stage template. Everything profile-specific arrives as a value; nothing is pasted twice.
STAGE_TEMPLATE = Template("""\
# Rendered by `python -m optistop.render` from ${source} (profile ${profile}); do not edit by hand.
name: "${name}"
backend: "${backend}"
max_batch_size: ${max_batch_size}
${transaction_policy}\
input [
${inputs}
]
output [
${outputs}
]
dynamic_batching {
  max_queue_delay_microseconds: ${queue_delay_us}
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
${parameters}
""")


@dataclass(frozen=True)
class BuildSettings:
    """Engine build + tensorrt_llm runtime knobs of one stage (the GPU profile's [trtllm] table)."""

    hf_repo: str = ""                           # where to download the checkpoint from (informative)
    dtype: str = "bfloat16"
    weight_only: str = ""                       # "", "int8" or "int4" (convert_checkpoint.py)
    max_batch_size: int = 64                    # engine: requests in flight
    max_input_len: int = 3072
    max_seq_len: int = 4096                     # prompt + generated
    max_num_tokens: int = 8192                  # tokens per iteration
    triton_max_batch_size: int = 64
    max_queue_delay_microseconds: int = 0       # in-flight batching batches on its own
    kv_cache_free_gpu_mem_fraction: float = 0.9
    max_tokens_in_paged_kv_cache: int = 0       # 0: unset (fraction decides)
    batch_scheduler_policy: str = "guaranteed_no_evict"
    enable_chunked_context: bool = False
    enable_kv_cache_reuse: bool = False


@dataclass(frozen=True)
class TrtllmSettings:
    defaults: BuildSettings
    stages: dict[str, BuildSettings] = field(default_factory=dict)
    executor_worker_path: str = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"

    def for_stage(self, name: str) -> BuildSettings:
        return self.stages.get(name, self.defaults)


_CHOICES = {"dtype": ("bfloat16", "float16", "float32"), "weight_only": ("", "int8", "int4"),
            "batch_scheduler_policy": ("guaranteed_no_evict", "max_utilization")}


def _build_settings(table: dict[str, Any], base: BuildSettings, where: str) -> BuildSettings:
    known = {f.name: f for f in fields(BuildSettings)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise SpecError(f"{where}.{key}: unknown key; known keys are {', '.join(known)}")
        want = type(getattr(base, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not want:
            raise SpecError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise SpecError(f"{where}.{key}: must be one of {_CHOICES[key]}, got {value!r}")
        values[key] = value
    s = replace(base, **values)
    if not 0 < s.kv_cache_free_gpu_mem_fraction < 1:
        raise SpecError(f"{where}.kv_cache_free_gpu_mem_fraction: must be in (0, 1)")
    if not s.max_input_len < s.max_seq_len:
        raise SpecError(f"{where}.max_seq_len: must exceed max_input_len={s.max_input_len}")
    return s


def load_trtllm_settings(path: Path) -> TrtllmSettings:
    """Parse the GPU profile's ``[trtllm]`` table (defaults) and ``[trtllm.stages.<name>]`` overrides."""
    data = tomllib.loads(Path(path).read_text())
    table = dict(data.get("trtllm") or {})
    if not table:
        raise SpecError(f"{Path(path).name}: trtllm: missing table (the GPU profile's build settings)")
    per_stage = table.pop("stages", {})
    worker = table.pop("executor_worker_path", TrtllmSettings.executor_worker_path)
    where = f"{Path(path).name}: trtllm"
    defaults = _build_settings(table, BuildSettings(), where)
    stage_names = [s.get("name") for s in data.get("stages", [])]
    stages = {}
    for name, sub in per_stage.items():
        if name not in stage_names:
            known = ", ".join(map(str, stage_names))
            raise SpecError(f"{where}.stages.{name}: no such stage; stages are {known}")
        stages[name] = _build_settings(sub, defaults, f"{where}.stages.{name}")
    return TrtllmSettings(defaults, stages, worker)


@dataclass(frozen=True)
class Rendered:
    stage: Stage
    path: Path          # <repo>/<triton_model>/config.pbtxt
    text: str


def _tensor(t: Tensor, trtllm: bool) -> str:
    lines = [f'name: "{t.name}"', f"data_type: TYPE_{'STRING' if t.dtype == 'BYTES' else t.dtype}",
             f"dims: [ {', '.join(str(d) for d in t.dims)} ]"]
    if trtllm and t.dims == (1,):
        lines.append("reshape: { shape: [ ] }")     # the C++ backend reads scalars per request
    if trtllm and -1 in t.dims:
        lines.append("allow_ragged_batch: true")    # as TensorRT-LLM's own template
    if t.optional:
        lines.append("optional: true")
    return "  {\n" + "".join(f"    {line}\n" for line in lines) + "  }"


def _tensors(ts: Sequence[Tensor], trtllm: bool) -> str:
    return ",\n".join(_tensor(t, trtllm) for t in ts)


def _parameters(params: Mapping[str, str]) -> str:
    return "".join(f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
                   for k, v in params.items()).rstrip("\n")


def spec_label(spec: CascadeSpec) -> str:
    """The spec's path as written in headers: relative to the repository root when inside it."""
    src = spec.source or DEFAULT_SPEC
    try:
        return src.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(src)


def engine_dir(engines_dir: Path, stage: Stage) -> Path:
    return engines_dir / f"{stage.name}-tp{stage.tp_size}"


def stage_parameters(spec: CascadeSpec, stage: Stage, profile: str, repo: Path,
                     engines_dir: Path | None, trt: TrtllmSettings | None) -> dict[str, str]:
    if profile == "cpu":
        rel = os.path.relpath(stage.checkpoint, (repo / stage.triton_model).resolve())
        return {"checkpoint_dir": Path(rel).as_posix(), "torch_threads": "1"}
    assert engines_dir is not None and trt is not None
    s = trt.for_stage(stage.name)
    params = {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(engine_dir(engines_dir, stage)),
        "gpu_device_ids": ",".join(str(g) for g in stage.gpu_ids),
        "normalize_log_probs": "false",       # else greedy decoding returns log-probs of 0
        "exclude_input_in_output": "true",    # the cascade wants generated tokens only
        "kv_cache_free_gpu_mem_fraction": f"{s.kv_cache_free_gpu_mem_fraction:g}",
        "batch_scheduler_policy": s.batch_scheduler_policy,
        "enable_chunked_context": "true" if s.enable_chunked_context else "false",
        "enable_kv_cache_reuse": "true" if s.enable_kv_cache_reuse else "false",
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "executor_worker_path": trt.executor_worker_path,
    }
    if s.max_tokens_in_paged_kv_cache:
        params["max_tokens_in_paged_kv_cache"] = str(s.max_tokens_in_paged_kv_cache)
    return params


def render_stage(spec: CascadeSpec, stage: Stage, *, profile: str = "cpu", repo: Path,
                 engines_dir: Path | None = None, trt: TrtllmSettings | None = None,
                 contract: Contract = STAGE) -> Rendered:
    """Render one stage's config.pbtxt (the only function that writes stage configs, for both profiles)."""
    if profile not in PROFILES:
        raise SpecError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    trtllm = profile == "trtllm"
    if trtllm and (engines_dir is None or trt is None):
        raise SpecError("profile trtllm needs --engines-dir and a spec with a [trtllm] table")
    max_batch = trt.for_stage(stage.name).triton_max_batch_size if trt and trtllm else 8
    delay = trt.for_stage(stage.name).max_queue_delay_microseconds if trt and trtllm else 2000
    text = STAGE_TEMPLATE.substitute(
        source=spec_label(spec), profile=profile, name=stage.triton_model,
        backend="tensorrtllm" if trtllm else "python", max_batch_size=max_batch,
        # the cascade BLS calls stages with exec(decoupled=False); the callee must agree
        transaction_policy="model_transaction_policy {\n  decoupled: false\n}\n" if trtllm else "",
        inputs=_tensors(contract.inputs, trtllm), outputs=_tensors(contract.outputs, trtllm),
        queue_delay_us=delay,
        parameters=_parameters(stage_parameters(spec, stage, profile, repo, engines_dir, trt)),
    )
    return Rendered(stage, repo / stage.triton_model / "config.pbtxt", text)


def render_all(spec: CascadeSpec, *, profile: str, repo: Path, engines_dir: Path | None = None,
               trt: TrtllmSettings | None = None, only: Sequence[str] = ()) -> list[Rendered]:
    for name in only:
        spec.stage_index(name)  # raises SpecError naming the valid stages
    return [render_stage(spec, s, profile=profile, repo=repo, engines_dir=engines_dir, trt=trt)
            for s in spec.stages if not only or s.name in only]


def build_plan(spec: CascadeSpec, trt: TrtllmSettings, engines_dir: Path, checkpoints_dir: Path,
               only: Sequence[str] = ()) -> list[str]:
    """One shell-quoted ``key=value ...`` line per stage: everything engines.sh needs to build it."""
    lines = []
    for stage in spec.stages:
        if only and stage.name not in only:
            continue
        s = trt.for_stage(stage.name)
        fields = {
            "name": stage.name, "model": stage.triton_model, "hf_dir": str(stage.checkpoint),
            "hf_repo": s.hf_repo, "tp": str(stage.tp_size),
            "gpus": ",".join(str(g) for g in stage.gpu_ids),
            "ckpt_dir": str(checkpoints_dir / f"{stage.name}-tp{stage.tp_size}"),
            "engine_dir": str(engine_dir(engines_dir, stage)),
            "dtype": s.dtype, "weight_only": s.weight_only,
            "max_batch_size": str(s.max_batch_size), "max_input_len": str(s.max_input_len),
            "max_seq_len": str(s.max_seq_len), "max_num_tokens": str(s.max_num_tokens),
        }
        lines.append(" ".join(f"{k}={shlex.quote(v)}" for k, v in fields.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.render", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="cascade spec TOML")
    ap.add_argument("--profile", choices=PROFILES, default="cpu")
    ap.add_argument("--repo", "--out", dest="repo", type=Path, default=None,
                    help="model repository to write (default: model_repository beside the spec)")
    ap.add_argument("--engines-dir", type=Path, help="trtllm: engines live in <dir>/<stage>-tp<N>")
    ap.add_argument("--checkpoints-dir", type=Path, help="trtllm --plan: converted checkpoints' root")
    ap.add_argument("--stage", action="append", default=[], help="only this stage (repeatable)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the configs, write nothing")
    mode.add_argument("--check", action="store_true", help="exit 1 if a written config differs")
    mode.add_argument("--plan", action="store_true", help="trtllm: print the engine build plan")
    args = ap.parse_args(argv)
    try:
        trtllm = args.profile == "trtllm"
        spec = load_spec(args.spec, check_paths=False)  # rendering needs no weights
        trt = load_trtllm_settings(args.spec) if trtllm else None
        repo = args.repo or spec.source.parent / "model_repository"  # type: ignore[union-attr]
        engines = args.engines_dir.absolute() if args.engines_dir else None
        if trtllm and engines is None:
            raise SpecError("--profile trtllm needs --engines-dir")
        if args.plan:
            if not trtllm:
                raise SpecError("--plan needs --profile trtllm")
            ckpts = (args.checkpoints_dir or engines.parent / "checkpoints").absolute()  # type: ignore[union-attr]
            print("\n".join(build_plan(spec, trt, engines, ckpts, args.stage)))  # type: ignore[arg-type]
            return 0
        rendered = render_all(spec, profile=args.profile, repo=repo, engines_dir=engines, trt=trt,
                              only=args.stage)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = []
    for r in rendered:
        if args.dry_run:
            print(f"--- {r.path}\n{r.text}", end="")
        elif args.check:
            if not r.path.exists() or r.path.read_text() != r.text:
                stale.append(str(r.path))
        else:
            r.path.parent.mkdir(parents=True, exist_ok=True)
            r.path.write_text(r.text)
            print(f"wrote {r.path}")
    if stale:
        print(f"error: stale or hand-edited: {', '.join(stale)}; run python -m optistop.render",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
