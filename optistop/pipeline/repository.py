"""Build a complete Triton model repository for any cascade spec (bring your own cascade).

$ optistop repo --spec my_cascade.toml --out my_repo                 # CPU: stage engines over HF checkpoints
$ optistop repo --spec my_cascade.toml --out my_repo --predictor DIR # + cascade and a calibrated predictor

Stages are rendered by optistop.render.repo (one template for every profile) and get the project's
stage model.py. The cascade models (``cascade`` and the streaming ``cascade_stream``), the quality_predictor
model and each stage's streaming variant (``<stage>_stream``, the decoupled stage model.py) join them only
with a calibrated predictor (model.onnx + model.json + policy.json from ``optistop calibrate``): a cascade
without a predictor fitted to its own stages would be calibrated to someone else's models, so until then
the repository serves the stages alone, which is all ``optistop collect`` needs (a real checkpoint loaded
once per stage, not twice). The GPU profiles build their stages with build/engines.sh;
``install_serving_models`` adds the cascade and predictor there too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from optistop import ROOT
from optistop.render import pbtxt
from optistop.render.repo import CASCADE_MODEL, RESOLVED_SPEC, render_all, spec_toml
from optistop.serving.streaming import stream_model
from optistop.spec import CascadeSpec, SpecError, load_spec

TEMPLATES = ROOT / "model_repository"          # the project's model.py files and hand-written configs
PREDICTOR_FILES = ("model.onnx", "model.json", "policy.json")
STAGE_TEMPLATE, STREAM_STAGE_TEMPLATE = "stage_small", "stage_small_stream"   # model.py sources
STREAM_CASCADE_MODEL = "cascade_stream"


def _copy_model_py(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.resolve(), dst)  # resolve: medium/large link to the small stage's model.py


def build_stages(spec: CascadeSpec, out: Path, streaming: bool = False) -> list[str]:
    """CPU stage engines: config.pbtxt rendered from the spec, the project's stage model.py; with
    ``streaming``, each stage's decoupled ``<stage>_stream`` variant with the streaming model.py too."""
    notes = []
    for r in render_all(spec, profile="cpu", repo=out):
        stream = r.path.parent.name == stream_model(r.stage.triton_model)
        if stream and not streaming:
            continue
        r.path.parent.mkdir(parents=True, exist_ok=True)
        r.path.write_text(r.text, encoding="utf-8")
        template = STREAM_STAGE_TEMPLATE if stream else STAGE_TEMPLATE
        _copy_model_py(TEMPLATES / template / "1" / "model.py", r.path.parent / "1" / "model.py")
        notes.append(f"stage {r.stage.name}{' (streaming)' if stream else ''}: {r.path.parent} -> {r.stage.checkpoint}")
    return notes


def _install_cascade(spec: CascadeSpec, out: Path, name: str, spec_ref: str) -> Path:
    """Copy the project's ``name`` cascade model (config + model.py) and point its spec at ``spec_ref``."""
    casc = out / name
    (casc / "1").mkdir(parents=True, exist_ok=True)
    _copy_model_py(TEMPLATES / name / "1" / "model.py", casc / "1" / "model.py")
    cfg = pbtxt.load(TEMPLATES / name / "config.pbtxt")
    if "cascade_spec" not in cfg.parameters:
        raise SpecError(f"{TEMPLATES / name}/config.pbtxt: no 'cascade_spec' parameter to point at the spec")
    pbtxt.set_parameter(cfg, "cascade_spec", spec_ref)
    pbtxt.save(casc / "config.pbtxt", cfg, header=pbtxt.leading_comments(TEMPLATES / name / "config.pbtxt"))
    return casc


def install_serving_models(spec: CascadeSpec, out: Path, predictor_dir: Path) -> list[str]:
    """The cascade and the streaming cascade (both pointed at one resolved copy of ``spec``), the
    stages' streaming variants, and the predictor from ``predictor_dir``."""
    missing = [f for f in PREDICTOR_FILES if not (predictor_dir / f).is_file()]
    if missing:
        raise SpecError(f"{predictor_dir}: lacks {', '.join(missing)}; run `optistop calibrate` first")
    pred = out / spec.predictor_model
    (pred / "1").mkdir(parents=True, exist_ok=True)
    template = TEMPLATES / "quality_predictor" / "config.pbtxt"
    cfg = pbtxt.load(template)
    cfg.name = spec.predictor_model
    pbtxt.save(pred / "config.pbtxt", cfg, header=pbtxt.leading_comments(template))
    _copy_model_py(TEMPLATES / "quality_predictor" / "1" / "model.py", pred / "1" / "model.py")
    for f in PREDICTOR_FILES:
        if (predictor_dir / f).resolve() != (pred / "1" / f).resolve():
            shutil.copyfile(predictor_dir / f, pred / "1" / f)
    notes = [n for n in build_stages(spec, out, streaming=True) if "(streaming)" in n]
    casc = _install_cascade(spec, out, CASCADE_MODEL, RESOLVED_SPEC)
    (casc / RESOLVED_SPEC).write_text(spec_toml(spec), encoding="utf-8")
    # one resolved spec for both cascade models: the streaming one reads the cascade's copy
    stream = _install_cascade(spec, out, STREAM_CASCADE_MODEL, f"../{CASCADE_MODEL}/{RESOLVED_SPEC}")
    return notes + [f"predictor: {pred}", f"cascade: {casc} (spec {casc / RESOLVED_SPEC})",
                    f"streaming cascade: {stream} (same spec)"]


def repository_spec(repo: Path) -> Path:
    """The spec a repository's cascade model serves (its ``cascade_spec`` parameter, resolved): what
    clients of that repository (``optistop openai --repository``) must validate against."""
    cfg = repo / CASCADE_MODEL / "config.pbtxt"
    if not cfg.is_file():
        raise SpecError(f"{repo}: no {CASCADE_MODEL}/config.pbtxt; a repository from `optistop repo` serves "
                        f"the cascade only after `optistop calibrate` (or `optistop repo --predictor DIR`)")
    try:
        ref = pbtxt.parameter(pbtxt.load(cfg), "cascade_spec")
    except pbtxt.ConfigError as exc:
        raise SpecError(str(exc)) from None
    if ref is None:
        raise SpecError(f"{cfg}: no 'cascade_spec' parameter naming the spec the cascade serves")
    path = (cfg.parent / ref).resolve()
    if not path.is_file():
        raise SpecError(f"{cfg}: cascade_spec {ref!r} does not exist (resolved to {path})")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop repo", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, required=True, help="cascade spec TOML (stages = HF checkpoints)")
    ap.add_argument("--out", type=Path, required=True, help="model repository to write")
    ap.add_argument("--predictor", type=Path, default=None,
                    help="a calibrated predictor dir (model.onnx, model.json, policy.json) to serve the cascade")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        notes = build_stages(spec, args.out.absolute(), streaming=False)
        if args.predictor:
            notes += install_serving_models(spec, args.out.absolute(), args.predictor)
    except (SpecError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(notes))
    nxt = "serve it" if args.predictor else "serve the stages and collect"
    print(f"wrote {args.out}; next: optistop serve --repository {args.out}   ({nxt})")
    return 0
