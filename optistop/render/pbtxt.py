"""Triton model configs as messages: Triton's own schema (``tritonclient.grpc.model_config_pb2.ModelConfig``)
read and written with protobuf ``text_format``. Every config.pbtxt the project writes goes through here,
so quoting, nesting and field names are the schema's: a value with quotes or newlines survives, a
misspelt field fails at render time (not when tritonserver loads the model), and an edit touches the
field it names, never whatever else a regex happens to match.

    cfg = pbtxt.load(path)                           # text_format.Parse into a ModelConfig
    pbtxt.set_parameter(cfg, "cascade_spec", "cascade_spec.toml")
    pbtxt.save(path, cfg, header=pbtxt.leading_comments(path))

Written files are ``text_format.MessageToString`` output: fields in the schema's order, parameters
sorted by key. Comments are not part of the message; ``header`` puts a comment block on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optistop.tensors import Contract, Tensor

if TYPE_CHECKING:   # importing tritonclient.grpc pulls in grpc (~0.15 s): only functions that need it pay
    from tritonclient.grpc.model_config_pb2 import ModelConfig


class ConfigError(ValueError):
    """A config.pbtxt that does not parse with Triton's schema, or lacks a field an edit needs."""


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def new(name: str, backend: str, max_batch_size: int) -> ModelConfig:
    return _pb().ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)


def parse(text: str, where: str = "config.pbtxt") -> ModelConfig:
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _pb().ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: not a Triton model config: {exc}") from None


def load(path: Path) -> ModelConfig:
    return parse(Path(path).read_text(encoding="utf-8"), str(path))


def dumps(cfg: ModelConfig, header: str = "") -> str:
    """The config as text_format (``dims: [-1, -1]`` on one line), ``header`` lines as ``#`` comments."""
    from google.protobuf import text_format

    head = "".join(line if line.startswith("#") else f"# {line}".rstrip() + "\n"
                   for line in header.splitlines(keepends=True))
    head += "" if not head or head.endswith("\n") else "\n"
    return head + text_format.MessageToString(cfg, use_short_repeated_primitives=True)


def save(path: Path, cfg: ModelConfig, header: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(cfg, header), encoding="utf-8")
    return path


def leading_comments(path: Path) -> str:
    """The comment block a config file starts with (what it says about itself), kept across an edit."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def edit(path: Path, *, name: str | None = None, parameters: Mapping[str, str] | None = None,
         require: Iterable[str] = ()) -> ModelConfig:
    """Load ``path``, rename it and set ``parameters`` (added where absent), write it back with its
    leading comments. ``require``: parameters that must already be there (an edit that would otherwise
    add a parameter nothing reads, e.g. a spec path on a config that has no ``cascade_spec``)."""
    cfg = load(path)
    missing = [k for k in require if k not in cfg.parameters]
    if missing:
        raise ConfigError(f"{path}: no {', '.join(repr(k) for k in missing)} parameter to set "
                          f"(parameters: {', '.join(sorted(cfg.parameters)) or 'none'})")
    if name is not None:
        cfg.name = name
    set_parameters(cfg, parameters or {})
    save(path, cfg, header=leading_comments(path))
    return cfg


def parameter(cfg: ModelConfig, key: str, default: str | None = None) -> str | None:
    return cfg.parameters[key].string_value if key in cfg.parameters else default


def parameters(cfg: ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def set_parameter(cfg: ModelConfig, key: str, value: str) -> None:
    if not isinstance(value, str):   # Triton's parameters are strings; str(True) would be "True", not "true"
        raise TypeError(f"parameter {key}: string value expected, got {value!r}")
    cfg.parameters[key].string_value = value


def set_parameters(cfg: ModelConfig, params: Mapping[str, str]) -> None:
    for key, value in params.items():
        set_parameter(cfg, key, value)


def set_instances(cfg: ModelConfig, count: int, kind: str = "KIND_CPU") -> None:
    """One instance group of ``count`` copies of the model (replacing any groups it had)."""
    group = _pb().ModelInstanceGroup
    del cfg.instance_group[:]
    cfg.instance_group.add(count=count, kind=group.Kind.Value(kind))


def set_decoupled(cfg: ModelConfig, decoupled: bool) -> None:
    """Declare the transaction policy (present even when ``False``: the config says so, not a default)."""
    cfg.model_transaction_policy.SetInParent()
    cfg.model_transaction_policy.decoupled = decoupled


def is_decoupled(cfg: ModelConfig) -> bool:
    return bool(cfg.model_transaction_policy.decoupled)


def data_type(dtype: str) -> int:
    """optistop.tensors dtype name (``BYTES`` for strings) -> the schema's DataType value."""
    return int(_pb().DataType.Value(f"TYPE_{'STRING' if dtype == 'BYTES' else dtype}"))


def add_tensor(cfg: ModelConfig, kind: str, t: Tensor, *, trtllm: bool = False) -> None:
    """Declare ``t`` as an ``input`` or ``output``. ``trtllm`` (inputs of TensorRT-LLM's C++ backend):
    a ``[1]`` input is reshaped to the batch dimension alone, a variable one is a ragged batch, as in
    TensorRT-LLM's own tensorrt_llm template."""
    if kind not in ("input", "output"):
        raise ValueError(f"tensor kind must be 'input' or 'output', got {kind!r}")
    msg = getattr(cfg, kind).add(name=t.name, data_type=data_type(t.dtype), dims=list(t.dims))
    if kind == "input":
        if trtllm and t.dims == (1,):
            msg.reshape.SetInParent()           # shape [ ]: input_lengths arrives as (batch,)
        if trtllm and -1 in t.dims:
            msg.allow_ragged_batch = True
        msg.optional = t.optional


def add_contract(cfg: ModelConfig, contract: Contract, *, trtllm: bool = False) -> None:
    """Every input and output of an optistop.tensors contract, in its order."""
    for t in contract.inputs:
        add_tensor(cfg, "input", t, trtllm=trtllm)
    for t in contract.outputs:
        add_tensor(cfg, "output", t)


def tensor_names(cfg: ModelConfig) -> set[str]:
    return {t.name for t in (*cfg.input, *cfg.output)}
