"""The cascade spec: one TOML file, loaded into frozen dataclasses and validated.

$ python -m optistop.spec cascade.toml        # validate and print the spec

Paths in the file are relative to the file's own directory. Every validation error is one line that
names the offending field, e.g. ``cascade.toml: stages[1].cost: costs must strictly increase ...``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optistop import ROOT
from optistop.files import read_document

DEFAULT_SPEC = ROOT / "cascade.toml"


class SpecError(ValueError):
    """A cascade spec that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Stage:
    name: str                 # short name used in outputs and policies ("small")
    triton_model: str         # the stage engine's model name in the Triton repository
    checkpoint: Path          # HF directory (embedded) or HF checkpoint to convert (GPU profile)
    cost: float               # nominal cost paid when this stage runs
    stands_in_for: str = ""   # production model this stage represents
    tp_size: int = 1          # tensor-parallel degree (GPU profile)
    gpu_ids: tuple[int, ...] = (0,)
    timeout_s: float = 30.0   # a stage call slower than timeout_for(max_tokens) counts as failed
    url: str = ""             # "host:port" of a Triton gRPC endpoint serving it; "" = same server (BLS)
    # added per requested token: a 1,024-token answer of a 72B takes minutes; the default fits a real
    # 0.5B checkpoint decoding a batch of 8 on one CPU thread, 0.68 s a step (README, bring your own)
    timeout_per_token_s: float = 1.0
    instances: int = 1        # embedded (cpu profile): instance_group count, each a copy of the model
    torch_threads: int = 1    # embedded: torch threads per instance (instances x threads <= CPU cores)

    def timeout_for(self, max_tokens: int) -> float:
        """Seconds a call asking for ``max_tokens`` new tokens may take (queueing + prefill + decode)."""
        return self.timeout_s + self.timeout_per_token_s * max_tokens


@dataclass(frozen=True)
class SupervisorSpec:
    """``[supervisor]``: how ``optistop serve`` tells a dead or wedged backend from a slow one
    (optistop/server/liveness.py). Seconds throughout; ``optistop serve`` flags override each."""

    scan_s: float = 0.5           # /proc scan for backend processes that are gone
    probe_s: float = 2.0          # readiness probe + statistics period; /healthz is stale after 3 missed
    slow_s: float = 5.0           # a probe waiting this long while the model progresses is logged "slow"
    wedge_s: float = 60.0         # no progress this long with work in flight: wedged (killed, reloaded)
    wedge_factor: float = 4.0     # ... or this many times the longest batch the model was seen to take
    reload_timeout_s: float = 120.0


SUPERVISOR_KEYS = tuple(SupervisorSpec.__dataclass_fields__)


def parse_supervisor(table: dict[str, Any], where: str = "supervisor") -> SupervisorSpec:
    """Validate a ``[supervisor]`` table (or the flags of ``optistop serve``, as the same dict)."""
    unknown = sorted(set(table) - set(SUPERVISOR_KEYS))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key; valid keys are {', '.join(SUPERVISOR_KEYS)}")
    values: dict[str, float] = {}
    for key in SUPERVISOR_KEYS:
        if key in table:
            v = float(_get(table, key, (int, float), where))
            if not math.isfinite(v) or v <= 0:
                raise SpecError(f"{where}.{key}: must be a finite number > 0, got {table[key]!r}")
            values[key] = v
    spec = SupervisorSpec(**values)
    if spec.wedge_factor < 1:
        raise SpecError(f"{where}.wedge_factor: must be >= 1 (a multiple of the longest batch seen), "
                        f"got {spec.wedge_factor!r}")
    if spec.wedge_s < 2 * spec.probe_s:
        raise SpecError(f"{where}.wedge_s: must be at least 2 x probe_s = {2 * spec.probe_s:g} (two statistics "
                        f"readings in a window), got {spec.wedge_s:g}")
    return spec


@dataclass(frozen=True)
class CascadeSpec:
    name: str
    tokenizer: Path
    stages: tuple[Stage, ...]
    predictor_model: str = "quality_predictor"
    predictor_url: str = ""       # "host:port" of the Triton gRPC endpoint serving it; "" = same server
    default_lambda: float | None = None   # None: the policy artifact's calibrated operating point
    default_policy: str | None = None     # None: the policy artifact's operating policy
    predictor_timeout_s: float = 5.0      # deadline of one quality-predictor call (BLS or remote)
    max_tokens_default: int = 16
    max_tokens_cap: int = 32
    max_context_tokens: int = 64  # prompt tokens + max_tokens must fit the smallest stage's context
    chat_template: bool = False   # apply the tokenizer's chat template to raw text (instruct families)
    system_prompt: str = ""       # with chat_template: a system turn before the user's, if not empty
    # End tokens besides the tokenizer's eos (end_id), sent to the engines as one-token stop words
    # (stop_words_list): Qwen2.5-Instruct ends at <|im_end|> (eos) or <|endoftext|> (151643).
    stop_token_ids: tuple[int, ...] = ()
    # Highest sampling temperature a request may ask for (0: greedy only). The predictor and the stopping
    # rule were calibrated on greedy answers; up to 0.5 the cascade stays within ~2 points of its greedy
    # accuracy, at 0.7 it loses 12 (README "OpenAI-compatible API", make bench-sampling)
    max_temperature: float = 0.5
    # Knowing the quality delivered (optistop.audit; README "Knowing the quality you deliver"): the share of
    # requests audited off the critical path, where their records go, and what an alarm does.
    audit_rate: float = 0.02
    audit_keep_prompts: bool = False   # the prompt text in each audit record (else its SHA-256 only)
    audit_log: Path | None = None      # JSONL, rotated by size; None: audit.jsonl beside the spec file
    audit_log_max_mb: float = 64.0
    audit_window: int = 200            # audits the estimate and the alarm look at
    audit_min: int = 10                # audits before the fallback window alarm may fire (no drift_baselines)
    audit_tolerance: float | None = None          # None: the policy artifact's criterion t_lcb
    audit_reference_quality: float | None = None  # q_ref of the label-free bound; None: the artifact's
    audit_grader: str = "none"         # "module:function(prompt, answer) -> bool": graded estimate
    on_drift: str = "none"             # "safer": step to the next safer certified operating point
    policy_watch_s: float = 2.0        # seconds between checks of policy.json for a new version; 0: never
    supervisor: SupervisorSpec = SupervisorSpec()
    source: Path | None = field(default=None, compare=False)

    @property
    def costs(self) -> tuple[float, ...]:
        return tuple(s.cost for s in self.stages)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def remote(self) -> bool:
        """True when any stage or the predictor is served by another Triton server (optistop.serving.remote)."""
        return bool(self.predictor_url) or any(s.url for s in self.stages)

    def stage_index(self, name: str) -> int:
        if name not in self.stage_names:
            raise SpecError(f"unknown stage {name!r}; stages are {', '.join(self.stage_names)}")
        return self.stage_names.index(name)


# Top-level tables read by other loaders of the same file (optistop.render.repo, render_llmapi).
OTHER_TABLES = ("trtllm", "llmapi")
NOT_KEYS = ("stages", "source", "supervisor")   # CascadeSpec fields that are not keys of [cascade]


def check_keys(table: dict[str, Any], known: Any, where: str) -> None:
    """Refuse a key that nothing reads (``timout_s = 0.5`` would otherwise keep the default silently).
    ``known``: a dataclass (its fields are the keys, so a new field is a new key) or names."""
    names = [f.name for f in dataclasses.fields(known) if f.name not in NOT_KEYS] \
        if dataclasses.is_dataclass(known) else list(known)
    for key in table:
        if key not in names:
            raise SpecError(f"{where}.{key}: unknown key; known keys are {', '.join(names)}")


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise SpecError(f"{where}.{key}: missing (required)")
        return default
    value = table[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise SpecError(f"{where}.{key}: expected {kind}, got {value!r}")
    if not isinstance(value, kind):
        raise SpecError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _url(table: dict[str, Any], key: str, where: str) -> str:
    """A gRPC endpoint as ``host:port`` (no scheme: tritonclient's gRPC client takes it as it is)."""
    url = _get(table, key, str, where, "")
    if url and not re.fullmatch(r"[A-Za-z0-9_.\-]+:[0-9]{1,5}|\[[0-9A-Fa-f:]+\]:[0-9]{1,5}", url):
        raise SpecError(f"{where}.{key}: expected host:port of a Triton gRPC endpoint "
                        f"(e.g. \"stage-small:8001\"), got {url!r}")
    return url


def _path(base: Path, raw: str, where: str, check: bool) -> Path:
    p = (base / raw).resolve()
    if check and not p.exists():
        raise SpecError(f"{where}: {raw!r} does not exist (resolved to {p})")
    return p


def parse_spec(data: dict[str, Any], base: Path, check_paths: bool = True,
               source: Path | None = None) -> CascadeSpec:
    """Validate a parsed TOML document. ``check_paths=False`` skips existence checks (GPU profiles)."""
    top = _get(data, "cascade", dict, "cascade")
    raw_stages = _get(data, "stages", list, "stages")
    tables = ("cascade", "stages", "supervisor", *OTHER_TABLES)
    unknown = [k for k in data if k not in tables]
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown table; known tables are {', '.join(tables)}")
    check_keys(top, CascadeSpec, "cascade")
    if not raw_stages:
        raise SpecError("stages: at least one stage is required")
    stages: list[Stage] = []
    for i, raw in enumerate(raw_stages):
        w = f"stages[{i}]"
        if not isinstance(raw, dict):
            raise SpecError(f"{w}: expected a table ([[stages]]), got {raw!r}")
        check_keys(raw, Stage, w)
        cost = float(_get(raw, "cost", (int, float), w))
        if not math.isfinite(cost) or cost <= 0:
            raise SpecError(f"{w}.cost: must be a finite number > 0, got {cost!r}")
        if stages and cost <= stages[-1].cost:
            raise SpecError(f"{w}.cost: costs must strictly increase along the cascade, "
                            f"got {cost} after {stages[-1].cost}")
        gpu_ids = tuple(_get(raw, "gpu_ids", list, w, [0]))
        tp = int(_get(raw, "tp_size", int, w, 1))
        if tp < 1 or len(gpu_ids) != tp:
            raise SpecError(f"{w}.gpu_ids: needs exactly tp_size={tp} GPU ids, got {list(gpu_ids)}")
        timeout = float(_get(raw, "timeout_s", (int, float), w, 30.0))
        if not math.isfinite(timeout) or timeout <= 0:
            raise SpecError(f"{w}.timeout_s: must be a finite number of seconds > 0, got {timeout!r}")
        per_token = float(_get(raw, "timeout_per_token_s", (int, float), w, Stage.timeout_per_token_s))
        if not math.isfinite(per_token) or per_token < 0:
            raise SpecError(f"{w}.timeout_per_token_s: must be a finite number of seconds >= 0, got {per_token!r}")
        url = _url(raw, "url", w)
        instances = _get(raw, "instances", int, w, 1)
        threads = _get(raw, "torch_threads", int, w, 1)
        if not (1 <= instances <= 64 and 1 <= threads <= 256):
            raise SpecError(f"{w}.instances / torch_threads: must be integers >= 1 (instances <= 64, threads "
                            f"<= 256), got {instances} / {threads}")
        stages.append(Stage(
            name=_get(raw, "name", str, w),
            triton_model=_get(raw, "triton_model", str, w),
            # a remote stage's weights live with the server that serves it, not here
            checkpoint=_path(base, _get(raw, "checkpoint", str, w), f"{w}.checkpoint", check_paths and not url),
            cost=cost,
            stands_in_for=_get(raw, "stands_in_for", str, w, ""),
            tp_size=tp,
            gpu_ids=gpu_ids,
            timeout_s=timeout,
            timeout_per_token_s=per_token,
            url=url,
            instances=instances,
            torch_threads=threads,
        ))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise SpecError(f"stages[].name: names must be unique, got {names}")
    models = [s.triton_model for s in stages]
    if len(set(models)) != len(models):
        raise SpecError(f"stages[].triton_model: model names must be unique, got {models}")
    raw_lam = _get(top, "default_lambda", (int, float), "cascade", None)
    lam = None if raw_lam is None else float(raw_lam)
    if lam is not None and (not math.isfinite(lam) or lam < 0):
        raise SpecError(f"cascade.default_lambda: must be finite and >= 0, got {lam!r}")
    predictor_timeout = float(_get(top, "predictor_timeout_s", (int, float), "cascade", 5.0))
    if not math.isfinite(predictor_timeout) or predictor_timeout <= 0:
        raise SpecError(f"cascade.predictor_timeout_s: must be a finite number of seconds > 0, "
                        f"got {predictor_timeout!r}")
    default_max = int(_get(top, "max_tokens_default", int, "cascade", 16))
    cap = int(_get(top, "max_tokens_cap", int, "cascade", 32))
    if not 1 <= default_max <= cap:
        raise SpecError(f"cascade.max_tokens_default: must be in 1..max_tokens_cap={cap}, got {default_max}")
    context = int(_get(top, "max_context_tokens", int, "cascade", 64))
    if context <= cap:
        raise SpecError(f"cascade.max_context_tokens: must exceed max_tokens_cap={cap}, got {context}")
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise SpecError(f"supervisor: expected a table ([supervisor] with {', '.join(SUPERVISOR_KEYS)}), got {sup!r}")
    stop_ids = _get(top, "stop_token_ids", list, "cascade", [])
    if not all(type(t) is int and t >= 0 for t in stop_ids):
        raise SpecError(f"cascade.stop_token_ids: must be a list of token ids (integers >= 0), got {stop_ids!r}")
    max_t = float(_get(top, "max_temperature", (int, float), "cascade", 0.5))
    if not 0.0 <= max_t <= 2.0:
        raise SpecError(f"cascade.max_temperature: must be in 0..2 (OpenAI's range; 0 allows greedy only), "
                        f"got {max_t!r}")
    audit = _audit_fields(top, base)
    return CascadeSpec(
        **audit,
        name=_get(top, "name", str, "cascade"),
        tokenizer=_path(base, _get(top, "tokenizer", str, "cascade"), "cascade.tokenizer", check_paths),
        stages=tuple(stages),
        predictor_model=_get(top, "predictor_model", str, "cascade", "quality_predictor"),
        predictor_url=_url(top, "predictor_url", "cascade"),
        default_lambda=lam,
        default_policy=_get(top, "default_policy", str, "cascade", None),
        predictor_timeout_s=predictor_timeout,
        max_tokens_default=default_max,
        max_tokens_cap=cap,
        max_context_tokens=context,
        chat_template=bool(_get(top, "chat_template", bool, "cascade", False)),
        system_prompt=_get(top, "system_prompt", str, "cascade", ""),
        stop_token_ids=tuple(stop_ids),
        max_temperature=max_t,
        supervisor=parse_supervisor(sup),
        source=source,
    )


def _audit_fields(top: dict[str, Any], base: Path) -> dict[str, Any]:
    from optistop.audit import DRIFT_ACTIONS, check_grader

    def number(key: str, default: float | None, lo: float, hi: float, what: str) -> float | None:
        raw = _get(top, key, (int, float), "cascade", default)
        if raw is None:
            return None
        v = float(raw)
        if not (math.isfinite(v) and lo <= v <= hi):
            raise SpecError(f"cascade.{key}: must be {what}, got {raw!r}")
        return v

    def choice(key: str, valid: tuple[str, ...]) -> str:
        v = _get(top, key, str, "cascade", valid[0])
        if v not in valid:
            raise SpecError(f"cascade.{key}: {v!r} is not one of {', '.join(valid)}")
        return v

    def count(key: str, default: int) -> int:
        v = int(_get(top, key, int, "cascade", default))
        if v < 1:
            raise SpecError(f"cascade.{key}: must be an integer >= 1, got {v}")
        return v

    def grader() -> str:
        try:
            return check_grader(_get(top, "audit_grader", str, "cascade", "none"))
        except ValueError as exc:
            raise SpecError(f"cascade.audit_grader: {exc}") from None

    raw_log = _get(top, "audit_log", str, "cascade", "")
    return {
        "audit_rate": number("audit_rate", 0.02, 0.0, 1.0, "a share of requests in [0, 1]"),
        "audit_keep_prompts": bool(_get(top, "audit_keep_prompts", bool, "cascade", False)),
        "audit_log": (base / raw_log).resolve() if raw_log else None,
        "audit_log_max_mb": number("audit_log_max_mb", 64.0, 0.001, 1e6, "a size in MB > 0"),
        "audit_window": count("audit_window", 200),
        "audit_min": count("audit_min", 10),
        "audit_tolerance": number("audit_tolerance", None, 0.0, 1.0, "a quality share in [0, 1]"),
        "audit_reference_quality": number("audit_reference_quality", None, 0.01, 1.0,
                                          "the reference stage's accuracy in (0, 1]"),
        "audit_grader": grader(),
        "on_drift": choice("on_drift", DRIFT_ACTIONS),
        "policy_watch_s": number("policy_watch_s", 2.0, 0.0, 86400.0, "seconds >= 0 (0: never)"),
    }


def tokenizer_sha256(tokenizer_dir: Path) -> str:
    """Identity of a family's tokenizer (its tokenizer.json bytes): what a calibrated predictor and policy
    are tied to, so one family's calibration cannot be served under another's spec."""
    import hashlib

    return hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()


def load_spec(path: str | Path = DEFAULT_SPEC, check_paths: bool = True) -> CascadeSpec:
    """Load and validate a spec file; errors are ``SpecError`` prefixed with the file name."""
    path = Path(path)
    data = read_document(path, SpecError, missing="cascade spec file not found", toml=True)
    try:
        return parse_spec(data, path.resolve().parent, check_paths, source=path.resolve())
    except SpecError as exc:
        raise SpecError(f"{path.name}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="optistop spec", description="Validate and print a cascade spec.")
    ap.add_argument("spec", nargs="?", type=Path, default=DEFAULT_SPEC, help="the spec file (default cascade.toml)")
    try:
        spec = load_spec(ap.parse_args(argv).spec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i, s in enumerate(spec.stages):
        print(f"stage {i}: {s.name:8s} model={s.triton_model:14s} cost={s.cost:<5g} tp={s.tp_size} "
              f"gpus={list(s.gpu_ids)} checkpoint={s.checkpoint}" + (f" url={s.url}" if s.url else ""))
    op = "the policy artifact's operating point"
    print(f"policy={spec.default_policy or op} lambda={spec.default_lambda or op} predictor={spec.predictor_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
