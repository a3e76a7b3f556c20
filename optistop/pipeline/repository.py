"""Build a complete Triton model repository for any cascade spec (bring your own cascade).

$ optistop repo --spec my_cascade.toml --out my_repo                 # CPU: stage engines over HF checkpoints
$ optistop repo --spec my_cascade.toml --out my_repo --predictor DIR # + cascade and a calibrated predictor

Stages are rendered by optistop.serving.render (one template for every profile) and get the project's
stage model.py. The cascade model and the quality_predictor model join them only with a calibrated
predictor (model.onnx + model.json + policy.json from ``optistop calibrate``): a cascade without a
predictor fitted to its own stages would be calibrated to someone else's models, so until then the
repository serves the stages alone, which is what ``optistop collect`` needs. The GPU profiles build
their stages with build/engines.sh; ``install_serving_models`` adds the cascade and predictor there too.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from optistop import ROOT
from optistop.serving.render import CASCADE_MODEL, RESOLVED_SPEC, render_all, spec_toml
from optistop.spec import CascadeSpec, SpecError, load_spec

TEMPLATES = ROOT / "model_repository"          # the project's model.py files and hand-written configs
PREDICTOR_FILES = ("model.onnx", "model.json", "policy.json")


def _copy_model_py(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.resolve(), dst)  # resolve: medium/large link to the small stage's model.py


def build_stages(spec: CascadeSpec, out: Path) -> list[str]:
    """CPU stage engines: config.pbtxt rendered from the spec, the project's stage model.py."""
    notes = []
    for r in render_all(spec, profile="cpu", repo=out):
        r.path.parent.mkdir(parents=True, exist_ok=True)
        r.path.write_text(r.text, encoding="utf-8")
        _copy_model_py(TEMPLATES / "stage_small" / "1" / "model.py", r.path.parent / "1" / "model.py")
        notes.append(f"stage {r.stage.name}: {r.path.parent} -> {r.stage.checkpoint}")
    return notes


def install_serving_models(spec: CascadeSpec, out: Path, predictor_dir: Path) -> list[str]:
    """The cascade (pointed at a resolved copy of ``spec``) and the predictor from ``predictor_dir``."""
    missing = [f for f in PREDICTOR_FILES if not (predictor_dir / f).is_file()]
    if missing:
        raise SpecError(f"{predictor_dir}: lacks {', '.join(missing)}; run `optistop calibrate` first")
    pred = out / spec.predictor_model
    (pred / "1").mkdir(parents=True, exist_ok=True)
    cfg = (TEMPLATES / "quality_predictor" / "config.pbtxt").read_text(encoding="utf-8")
    (pred / "config.pbtxt").write_text(cfg.replace('name: "quality_predictor"', f'name: "{spec.predictor_model}"'),
                                       encoding="utf-8")
    _copy_model_py(TEMPLATES / "quality_predictor" / "1" / "model.py", pred / "1" / "model.py")
    for f in PREDICTOR_FILES:
        if (predictor_dir / f).resolve() != (pred / "1" / f).resolve():
            shutil.copyfile(predictor_dir / f, pred / "1" / f)
    casc = out / CASCADE_MODEL
    (casc / "1").mkdir(parents=True, exist_ok=True)
    _copy_model_py(TEMPLATES / CASCADE_MODEL / "1" / "model.py", casc / "1" / "model.py")
    text = (TEMPLATES / CASCADE_MODEL / "config.pbtxt").read_text(encoding="utf-8")
    pattern = r'(key:\s*"cascade_spec"\s*value:\s*\{\s*string_value:\s*")[^"]*(")'
    text, n = re.subn(pattern, rf"\g<1>{RESOLVED_SPEC}\g<2>", text)
    if n != 1:
        raise SpecError(f"{TEMPLATES / CASCADE_MODEL}/config.pbtxt: expected one 'cascade_spec' parameter, found {n}")
    (casc / "config.pbtxt").write_text(text, encoding="utf-8")
    (casc / RESOLVED_SPEC).write_text(spec_toml(spec), encoding="utf-8")
    return [f"predictor: {pred}", f"cascade: {casc} (spec {casc / RESOLVED_SPEC})"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop repo", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, required=True, help="cascade spec TOML (stages = HF checkpoints)")
    ap.add_argument("--out", type=Path, required=True, help="model repository to write")
    ap.add_argument("--predictor", type=Path, default=None,
                    help="a calibrated predictor dir (model.onnx, model.json, policy.json) to serve the cascade")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        notes = build_stages(spec, args.out.absolute())
        if args.predictor:
            notes += install_serving_models(spec, args.out.absolute(), args.predictor)
    except (SpecError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(notes))
    nxt = "serve it" if args.predictor else "serve the stages and collect"
    print(f"wrote {args.out}; next: optistop serve --repository {args.out}   ({nxt})")
    return 0
