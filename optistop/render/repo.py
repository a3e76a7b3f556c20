"""Render the stage engines' config.pbtxt from a cascade spec: one config builder, every profile.

$ python -m optistop.render --spec cascade.toml --repo model_repository             # CPU (committed)
$ python -m optistop.render --check                                                # committed == rendered?
$ python -m optistop.render --profile trtllm --spec build/qwen2.5-trtllm.toml \\
      --engines-dir engines --out engines/model_repository                                 # GPU stages
$ python -m optistop.render --profile llmapi --spec build/qwen2.5-llmapi.toml \\
      --out llmapi_repository                                                              # GPU, PyTorch

Profile ``cpu`` renders the embedded stand-ins (Python backend; their model.py reads ``checkpoint_dir``).
Profile ``trtllm`` renders TensorRT-LLM's C++ ``tensorrtllm`` backend configs for engines that
build/engines.sh builds (``--plan`` prints its per-stage build plan). Both take their inputs and outputs
from ``optistop.tensors.STAGE``; only the backend, batching knobs and ``parameters`` differ. Each is built as
Triton's ModelConfig message and written with protobuf text_format (optistop.render.pbtxt).
Profile ``llmapi`` renders the same stages for TensorRT-LLM's PyTorch backend (HF checkpoints, no
engines; optistop.render.llmapi).
GPU repositories hold the stage models only: the cascade and its predictor join them when
``optistop calibrate --spec <profile> --out <repository>`` has fitted a calibration for that spec (the
cascade refuses a predictor calibrated for other stages or another tokenizer, and one failed model stops
tritonserver at start). ``--streaming`` adds each GPU stage's decoupled ``<model>_stream`` variant, which
cascade_stream calls; it loads the model a second time on the same GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optistop.compat import tomllib
from optistop.render import pbtxt
from optistop.serving.streaming import stream_model
from optistop.spec import DEFAULT_SPEC, CascadeSpec, SpecError, Stage, check_keys, load_spec
from optistop.tensors import STAGE, STAGE_STREAM, Contract

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

REPO_ROOT = DEFAULT_SPEC.parent
PROFILES = ("cpu", "trtllm", "llmapi")
CASCADE_MODEL = "cascade"
RESOLVED_SPEC = "cascade_spec.toml"     # written into <out>/cascade/ by --with-models
PLAN_COLUMNS = ("name", "model", "hf_dir", "hf_repo", "tp", "gpus", "ckpt_dir", "engine_dir", "dtype",
                "weight_only", "max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")

@dataclass(frozen=True)
class BuildSettings:
    """Engine build + tensorrt_llm runtime knobs of one stage (the GPU profile's [trtllm] table)."""

    hf_repo: str = ""                           # Hugging Face repo id to download from (informative)
    dtype: str = "bfloat16"
    weight_only: str = ""                       # "", "int8" or "int4" (convert_checkpoint.py)
    max_batch_size: int = 64                    # engine: requests in flight
    max_input_len: int = 3072
    max_seq_len: int = 4096                     # prompt + generated tokens
    max_num_tokens: int = 8192                  # tokens per iteration
    triton_max_batch_size: int = 64
    max_queue_delay_microseconds: int = 0       # in-flight batching batches on its own
    kv_cache_free_gpu_mem_fraction: float = 0.9
    max_tokens_in_paged_kv_cache: int = 0       # 0: unset, the fraction decides
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
    check_keys(table, BuildSettings, where)
    values: dict[str, Any] = {}
    for key, value in table.items():
        want = type(getattr(base, key))
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise SpecError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise SpecError(f"{where}.{key}: must be one of {_CHOICES[key]}, got {value!r}")
        values[key] = value
    s = dataclasses.replace(base, **values)
    if not 0 < s.kv_cache_free_gpu_mem_fraction < 1:
        raise SpecError(f"{where}.kv_cache_free_gpu_mem_fraction: must be in (0, 1)")
    if not 0 < s.max_input_len < s.max_seq_len:
        raise SpecError(f"{where}.max_seq_len: must exceed max_input_len={s.max_input_len}")
    return s


def load_trtllm_settings(path: Path) -> TrtllmSettings:
    """Parse the GPU profile's ``[trtllm]`` table (defaults) and ``[trtllm.stages.<name>]`` overrides."""
    path = Path(path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    table = dict(data.get("trtllm") or {})
    where = f"{path.name}: trtllm"
    if not table:
        raise SpecError(f"{where}: missing table (the GPU profile's engine build settings)")
    per_stage = table.pop("stages", {})
    worker = table.pop("executor_worker_path", TrtllmSettings.executor_worker_path)
    defaults = _build_settings(table, BuildSettings(), where)
    names = [str(s.get("name")) for s in data.get("stages", [])]
    stages = {}
    for name, sub in per_stage.items():
        if name not in names:
            raise SpecError(f"{where}.stages.{name}: no such stage; stages are {', '.join(names)}")
        stages[name] = _build_settings(sub, defaults, f"{where}.stages.{name}")
    settings = TrtllmSettings(defaults, stages, worker)
    # The cascade admits prompt + max_tokens <= max_context_tokens (so a prompt of up to context - 1
    # tokens): every engine must accept that.
    context = data.get("cascade", {}).get("max_context_tokens")
    for name in names if isinstance(context, int) else []:
        b = settings.for_stage(name)
        if b.max_seq_len < context or b.max_input_len < context - 1:
            raise SpecError(f"{where}: stage {name}: max_input_len={b.max_input_len}, max_seq_len={b.max_seq_len} "
                            f"must be >= cascade.max_context_tokens={context} (- 1 for the input)")
    return settings


@dataclass(frozen=True)
class Rendered:
    stage: Stage
    path: Path          # <repo>/<triton_model>/config.pbtxt
    text: str


def render_header(source: str, profile: str) -> str:
    return f"# Rendered by `python -m optistop.render.repo` from {source} (profile {profile}); do not edit by hand.\n"


def stage_config(name: str, backend: str, max_batch_size: int, contract: Contract, *, decoupled: bool | None,
                 queue_delay_us: int, instances: int, params: Mapping[str, str], trtllm: bool = False) -> ModelConfig:
    """The one stage config (every profile): ``contract``'s tensors, dynamic batching, one CPU instance
    group, string ``params``. Everything profile-specific arrives as a value. ``decoupled`` None leaves
    the transaction policy out (Triton's default, not decoupled)."""
    cfg = pbtxt.new(name, backend, max_batch_size)
    if decoupled is not None:
        pbtxt.set_decoupled(cfg, decoupled)
    pbtxt.add_contract(cfg, contract, trtllm=trtllm)
    cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    cfg.dynamic_batching.SetInParent()      # present even at 0 delay: dynamic batching on
    pbtxt.set_instances(cfg, instances)
    pbtxt.set_parameters(cfg, params)
    return cfg


def spec_label(spec: CascadeSpec) -> str:
    """The spec's path as written in headers: relative to the repository root when inside it."""
    src = spec.source or DEFAULT_SPEC
    try:
        return src.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(src)


def engine_dir(engines_dir: Path, stage: Stage) -> Path:
    return engines_dir / f"{stage.name}-tp{stage.tp_size}"


def stage_parameters(stage: Stage, profile: str, repo: Path, engines_dir: Path | None,
                     s: BuildSettings | None, worker: str = "") -> dict[str, str]:
    if profile == "cpu":
        rel = os.path.relpath(stage.checkpoint, (repo / stage.triton_model).resolve())
        return {"checkpoint_dir": Path(rel).as_posix(), "torch_threads": str(stage.torch_threads)}
    assert engines_dir is not None and s is not None
    params = {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(engine_dir(engines_dir, stage)),
        "gpu_device_ids": ",".join(str(g) for g in stage.gpu_ids),
        "normalize_log_probs": "false",       # else greedy decoding returns log-probs of 0
        "exclude_input_in_output": "true",    # the cascade wants the generated tokens only
        "kv_cache_free_gpu_mem_fraction": f"{s.kv_cache_free_gpu_mem_fraction:g}",
        "batch_scheduler_policy": s.batch_scheduler_policy,
        "enable_chunked_context": str(s.enable_chunked_context).lower(),
        "enable_kv_cache_reuse": str(s.enable_kv_cache_reuse).lower(),
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "executor_worker_path": worker,       # orchestrator mode spawns this per TP rank
        # The backend reads these three without a default (getGuidedDecodingConfigFromParams) and fails
        # to load when they are absent; empty backend/info path = no guided decoding.
        "tokenizer_dir": str(stage.checkpoint),
        "guided_decoding_backend": "",
        "xgrammar_tokenizer_info_path": "",
    }
    if s.max_tokens_in_paged_kv_cache:
        params["max_tokens_in_paged_kv_cache"] = str(s.max_tokens_in_paged_kv_cache)
    return params


def render_stage(spec: CascadeSpec, stage: Stage, *, profile: str = "cpu", repo: Path,
                 engines_dir: Path | None = None, trt: TrtllmSettings | None = None,
                 contract: Contract = STAGE, stream: bool = False) -> Rendered:
    """Render one stage's config.pbtxt: the only function that writes stage configs, for both profiles.

    ``stream``: the decoupled streaming variant ``<triton_model>_stream`` (see optistop.serving.streaming),
    same checkpoint or engine, contract STAGE_STREAM (tensorrt_llm's ``streaming`` input)."""
    if profile not in PROFILES:
        raise SpecError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    trtllm = profile == "trtllm"
    if trtllm and (engines_dir is None or trt is None):
        raise SpecError("profile trtllm needs an engines dir and the spec's [trtllm] table")
    s = trt.for_stage(stage.name) if trtllm and trt else None
    name = stream_model(stage.triton_model) if stream else stage.triton_model
    params = stage_parameters(stage, profile, repo, engines_dir, s, trt.executor_worker_path if trt else "")
    cfg = stage_config(
        name, "tensorrtllm" if trtllm else "python", s.triton_max_batch_size if s else 8,
        STAGE_STREAM if stream else contract,
        # the cascade BLS calls stages with exec(decoupled=False); the callee must agree
        decoupled=True if stream else (False if trtllm else None),
        queue_delay_us=s.max_queue_delay_microseconds if s else 2000,
        instances=1 if trtllm else stage.instances,   # the C++ backend batches in flight in one instance
        params=params, trtllm=trtllm)
    text = pbtxt.dumps(cfg, header=render_header(spec_label(spec), profile))
    return Rendered(stage, repo / name / "config.pbtxt", text)


def cpu_only_keys(spec: CascadeSpec, profile: str) -> None:
    """Refuse the embedded engine's knobs (``instances``, ``torch_threads``) where a GPU profile would
    silently drop them: there the engine's own settings ([trtllm] / [llmapi]) size it."""
    if profile == "cpu":
        return
    for i, s in enumerate(spec.stages):
        if s.instances != 1 or s.torch_threads != 1:
            raise SpecError(f"stages[{i}].instances / torch_threads: only the cpu profile uses them "
                            f"(got {s.instances} / {s.torch_threads}); profile {profile} sizes its engines "
                            f"in its own table")


def render_all(spec: CascadeSpec, *, profile: str, repo: Path, engines_dir: Path | None = None,
               trt: TrtllmSettings | None = None, only: Sequence[str] = (), streaming: bool = False) -> list[Rendered]:
    for name in only:
        spec.stage_index(name)  # raises SpecError naming the valid stages
    cpu_only_keys(spec, profile)
    out = [render_stage(spec, s, profile=profile, repo=repo, engines_dir=engines_dir, trt=trt)
           for s in spec.stages if not only or s.name in only]
    if profile == "cpu" or streaming:  # the embedded server always serves each stage's streaming variant
        out += [render_stage(spec, s, profile=profile, repo=repo, engines_dir=engines_dir, trt=trt, stream=True)
                for s in spec.stages if not only or s.name in only]
    return out


def rebase_checkpoints(spec: CascadeSpec, model_dir: Path) -> CascadeSpec:
    """The spec with every HF directory (stage checkpoints, tokenizer) moved under ``model_dir``."""
    model_dir = model_dir.absolute()
    stages = tuple(dataclasses.replace(s, checkpoint=model_dir / s.checkpoint.name) for s in spec.stages)
    return dataclasses.replace(spec, stages=stages, tokenizer=model_dir / spec.tokenizer.name)


def build_plan(spec: CascadeSpec, trt: TrtllmSettings, engines_dir: Path, checkpoints_dir: Path,
               only: Sequence[str] = ()) -> list[str]:
    """Tab-separated PLAN_COLUMNS, one line per stage ("-" for empty): what engines.sh builds."""
    for name in only:
        spec.stage_index(name)  # raises SpecError naming the valid stages
    lines = []
    for stage in spec.stages:
        if only and stage.name not in only:
            continue
        s = trt.for_stage(stage.name)
        row = (stage.name, stage.triton_model, stage.checkpoint, s.hf_repo, stage.tp_size,
               ",".join(str(g) for g in stage.gpu_ids), checkpoints_dir / f"{stage.name}-tp{stage.tp_size}",
               engine_dir(engines_dir, stage), s.dtype, s.weight_only, s.max_batch_size, s.max_input_len,
               s.max_seq_len, s.max_num_tokens)
        lines.append("\t".join(str(v) if str(v) else "-" for v in row))
    return lines


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def spec_toml(spec: CascadeSpec) -> str:
    """The spec as TOML with absolute paths; ``load_spec`` of the text gives back an equal spec."""
    out = [f"# Resolved by `python -m optistop.render.repo` from {spec_label(spec)}; do not edit by hand.",
           "[cascade]"]
    out += [f"{f.name} = {_toml_value(getattr(spec, f.name))}" for f in dataclasses.fields(spec)
            if f.name not in ("stages", "source", "supervisor") and getattr(spec, f.name) is not None]
    for stage in spec.stages:
        out += ["", "[[stages]]"] + [f"{f.name} = {_toml_value(getattr(stage, f.name))}"
                                     for f in dataclasses.fields(stage)]
    out += ["", "[supervisor]"] + [f"{f.name} = {_toml_value(getattr(spec.supervisor, f.name))}"
                                   for f in dataclasses.fields(spec.supervisor)]
    return "\n".join(out) + "\n"


def point_cascade_at(model_dir: Path, spec: CascadeSpec) -> str:
    """Write ``spec`` (resolved) into a copied cascade model and set its ``cascade_spec`` parameter to it."""
    cfg = model_dir / "config.pbtxt"
    try:
        pbtxt.edit(cfg, parameters={"cascade_spec": RESOLVED_SPEC}, require=["cascade_spec"])
    except pbtxt.ConfigError as exc:
        raise SpecError(str(exc)) from None
    (model_dir / RESOLVED_SPEC).write_text(spec_toml(spec), encoding="utf-8")
    return f"wrote {model_dir / RESOLVED_SPEC} (cascade_spec of {cfg})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.render.repo", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="cascade spec TOML")
    ap.add_argument("--profile", choices=PROFILES, default="cpu")
    ap.add_argument("--repo", "--out", dest="repo", type=Path, default=None,
                    help="model repository to write (cpu default: model_repository beside the spec)")
    ap.add_argument("--engines-dir", type=Path, help="trtllm: engines live in <dir>/<stage>-tp<N>")
    ap.add_argument("--checkpoints-dir", type=Path, help="trtllm --plan: converted checkpoints' root "
                    "(default: <engines-dir>/trtllm_checkpoints)")
    ap.add_argument("--model-dir", type=Path, help="trtllm: the HF checkpoints' parent dir (overrides spec)")
    ap.add_argument("--with-models", type=Path, metavar="SRC_REPO", help=argparse.SUPPRESS)
    ap.add_argument("--streaming", action="store_true", help="GPU profiles: also render each stage's "
                    "decoupled _stream variant (a second copy of the model on the stage's GPUs)")
    ap.add_argument("--stage", action="append", default=[], help="only this stage (repeatable)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the configs, write nothing")
    mode.add_argument("--check", action="store_true", help="exit 1 if a written config differs")
    mode.add_argument("--plan", action="store_true", help="trtllm: print the engine build plan (TSV)")
    args = ap.parse_args(argv)
    try:
        if args.with_models:
            raise SpecError("--with-models is gone: a GPU repository gets its cascade and predictor from "
                            "`optistop calibrate --spec <profile> --out <repository>` (a calibration for this spec)")
        if args.streaming and args.profile == "cpu":
            raise SpecError("--streaming goes with a GPU profile; the cpu profile always renders the variants")
        if args.profile == "llmapi":
            return _main_llmapi(args)
        trtllm = args.profile == "trtllm"
        spec = load_spec(args.spec, check_paths=False)  # rendering needs no weights
        if trtllm != (args.engines_dir is not None):
            raise SpecError("--engines-dir goes with --profile trtllm, and only with it")
        if not trtllm and (args.plan or args.model_dir):
            raise SpecError("--plan and --model-dir need --profile trtllm")
        trt = load_trtllm_settings(args.spec) if trtllm else None
        if args.model_dir:
            spec = rebase_checkpoints(spec, args.model_dir)
        engines = args.engines_dir.absolute() if args.engines_dir else None
        if args.plan:
            ckpts = (args.checkpoints_dir or engines / "trtllm_checkpoints").absolute()  # type: ignore[operator]
            print("\n".join(build_plan(spec, trt, engines, ckpts, args.stage)))  # type: ignore[arg-type]
            return 0
        repo = args.repo or (engines / "model_repository" if engines else REPO_ROOT / "model_repository")
        rendered = render_all(spec, profile=args.profile, repo=repo.absolute() if trtllm else repo,
                              engines_dir=engines, trt=trt, only=args.stage, streaming=args.streaming)
        stale = []
        for r in rendered:
            if args.dry_run:
                print(f"--- {r.path}\n{r.text}", end="")
            elif args.check:
                if not r.path.exists() or r.path.read_text(encoding="utf-8") != r.text:
                    stale.append(str(r.path))
            else:
                r.path.parent.mkdir(parents=True, exist_ok=True)
                r.path.write_text(r.text, encoding="utf-8")
                if trtllm:
                    (r.path.parent / "1").mkdir(exist_ok=True)   # Triton needs a version dir
                print(f"wrote {r.path}")
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if stale:
        print(f"error: stale or hand-edited: {', '.join(stale)}; run python -m optistop.render.repo",
              file=sys.stderr)
        return 1
    return 0


def _main_llmapi(args: argparse.Namespace) -> int:
    """Profile llmapi: config.pbtxt + 1/model.yaml per stage (SpecError goes to main's handler)."""
    from optistop.render import llmapi as L

    if args.engines_dir or args.plan:
        raise SpecError("profile llmapi builds no engines: --engines-dir and --plan do not apply")
    if args.repo is None:
        raise SpecError("profile llmapi needs --out DIR (the model repository to write)")
    spec = load_spec(args.spec, check_paths=False)
    cpu_only_keys(spec, "llmapi")
    settings = L.load_llmapi_settings(args.spec, spec)
    if args.model_dir:
        spec = rebase_checkpoints(spec, args.model_dir)
    for name in args.stage:
        spec.stage_index(name)
    repo = args.repo.absolute()
    files: dict[Path, str] = {}
    for stage in spec.stages:
        if not args.stage or stage.name in args.stage:
            for stream in (False, True) if args.streaming else (False,):
                files.update(L.stage_files(spec, stage, settings, spec_label(spec), repo, stream=stream))
    stale = []
    for path, text in files.items():
        if args.dry_run:
            print(f"--- {path}\n{text}", end="")
        elif args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"error: stale or hand-edited: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
