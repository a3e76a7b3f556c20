"""Calibrate a cascade to your models and traffic: predictor + stopping rule, exported into a repository.

$ optistop calibrate labelled.jsonl --spec my_cascade.toml --target 0.95 --out my_repo
$ optistop serve --repository my_repo                      # then the cascade serves the calibrated rule
$ optistop calibrate --from-audit audit.jsonl --policy my_repo/quality_predictor/1/policy.json   # from traffic
  (optistop.pipeline.recalibrate: refit on audited traffic, write policy.json version N+1, hot-swapped)

Steps (each an existing, tested piece):
1. Splits by prompt hash when the records carry none: ``--test-share`` of the prompts are ``test``, the
   rest ``val`` (the predictor fits on 2/3 of val and calibrates per stage on the other 1/3).
2. Features -> MLP-32 (output-aware for answers, prompt-only for the ex-ante estimates) -> per-stage
   calibration (optistop.predictor.train), ONNX export with parity checks and its sidecar, which records
   stages, costs, feature version and the data hash (optistop.predictor.export).
3. The policy artifact (optistop.offline.operating.build_artifact) fitted on the prompts the predictor
   did not learn from (its calibration and test roles), with the operating point chosen so the target
   holds with a stated confidence; its cross-fitted quality and cost are printed beside it.
4. The cascade and predictor models are installed into the repository next to the stage engines
   (optistop.pipeline.repository), pointed at a resolved copy of the spec.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from optistop.offline import policy_fit as F
from optistop.offline import replay, replay_files
from optistop.offline.operating import ReplayInputError, arrays_from_records, build_artifact
from optistop.pipeline.repository import install_serving_models
from optistop.policy_artifact import FILE_NAME as POLICY_FILE
from optistop.predictor.model import data_sha256, prompt_bucket
from optistop.spec import CascadeSpec, SpecError, load_spec, tokenizer_sha256


def read_labelled(path: Path) -> list[dict[str, Any]]:
    records, lines = replay_files.read_records(path)
    for rec, ln in zip(records, lines, strict=True):
        for k, st in enumerate(rec.get("stages", [])):
            if "error" in st:
                raise ReplayInputError(f"{path}:{ln}: stages[{k}] has a collection error ({st['error'][:80]}); "
                                       f"recollect it or drop the line")
            for key in ("response", "correct"):
                if key not in st:
                    raise ReplayInputError(f"{path}:{ln}: stages[{k}].{key}: missing (label with `optistop label`)")
    return records


def assign_splits(records: list[dict[str, Any]], test_share: float, seed: int) -> None:
    for r in records:
        if "split" not in r:
            r["split"] = "test" if prompt_bucket(str(r["prompt"]), f"split/{seed}") < test_share else "val"


def calibrate(records: list[dict[str, Any]], spec_path: Path, out: Path, target: float, seed: int = 0,
              test_share: float = 0.2, install: bool = True, replay_out: Path | None = None,
              max_epochs: int = 50, confidence: float = 0.9, reference: str = "best") -> dict[str, Any]:
    from optistop.predictor import export, train

    spec = load_spec(spec_path)
    crit = F.Criterion.at(target, confidence, reference)     # refused here, before minutes of training
    names = [st["model"] for st in records[0]["stages"]]
    costs = [float(st["cost"]) for st in records[0]["stages"]]
    if names != list(spec.stage_names) or costs != list(spec.costs):
        raise SpecError(f"the records are for stages {names} with costs {costs}, the spec {spec_path} has "
                        f"{list(spec.stage_names)} with costs {list(spec.costs)}; collect with this spec")
    assign_splits(records, test_share, seed)
    version_dir = out / spec.predictor_model / "1"
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data.jsonl", Path(tmp) / "run"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        rc = train.main(["--data", str(data), "--out", str(run), "--seed", str(seed), "--arch", "mlp32",
                         "--mode", "output_aware", "--mode", "prompt_only", "--max-epochs", str(max_epochs)])
        replay_path = replay_out or Path(tmp) / "replay.jsonl"
        if rc == 0:
            rc = export.main(["--run", str(run), "--data", str(data), "--out", str(version_dir),
                              "--replay", str(replay_path)])
        if rc != 0:
            raise SpecError("predictor training or export failed (see the messages above); nothing installed")
        scored = [json.loads(line) for line in replay_path.read_text(encoding="utf-8").splitlines() if line]
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    res = fit_policy(scored, records, spec, version_dir, crit, seed)
    notes = install_serving_models(spec, out, version_dir) if install else []
    return {**res, "notes": notes, "acceptance": report["acceptance"],
            "too_few_examples": report["training"]["too_few_examples"]}


def fit_policy(scored: list[dict[str, Any]], records: list[dict[str, Any]], spec: CascadeSpec, version_dir: Path,
               crit: F.Criterion, seed: int) -> dict[str, Any]:
    """Step 3 alone: policy.json in ``version_dir`` fitted on the scored replay's held-out prompts (those the
    predictor did not learn from), beside the predictor that scored them."""
    names = list(spec.stage_names)
    held = [r for r in scored if r.get("predictor_role") in ("calibration", "test")]
    if not held:
        raise SpecError("the scored replay has no prompt with predictor_role calibration or test: give the "
                        "file calibrate wrote with --replay-out")
    a = arrays_from_records(held)
    crit = replay.resolve(a, crit, names)
    art, choice = build_artifact(a, names, crit, seed, data_sha256=data_sha256(records),
                                 predictor={"sidecar": "model.json"}, spec=spec.name, version=1,
                                 # q_ref of the audits' bound: the reference stage's (best may not be last)
                                 reference_accuracy=float(a.correct[:, int(crit.reference)].mean()),
                                 tokenizer_sha256=tokenizer_sha256(spec.tokenizer))
    from optistop.pipeline.recalibrate import agreement_baseline_of, drift_baselines_of, with_safer_points

    ref = int(crit.reference)
    art["agreement_baseline"] = agreement_baseline_of(a, choice["rule"], ref)   # the label-free alarm's reference
    art["drift_baselines"] = drift_baselines_of(a, choice["rule"], ref)         # the drift detectors' (optistop.drift)
    with_safer_points(art)   # what on_drift = "safer" steps through
    (version_dir / POLICY_FILE).write_text(json.dumps(art) + "\n", encoding="utf-8")
    cv = replay.summarise(a, replay.kfold(a, seed, crit, extras=False)["per"],
                          replay.hindsight(a, crit.target, ref=int(crit.reference)), crit=crit)
    return {"operating": art["operating"], "n_policy_prompts": len(held), "cross_fitted": cv["conditions"],
            "reference": names[int(crit.reference)], "confidence": crit.confidence,
            "version_dir": str(version_dir)}


def refit_policy(records: list[dict[str, Any]], scored_path: Path, spec_path: Path, out: Path, target: float,
                 seed: int = 0, confidence: float = 0.9, reference: str = "best",
                 test_share: float = 0.2) -> dict[str, Any]:
    """``--scored``: a new policy.json (other target, confidence or reference; a newer fitting procedure)
    without retraining the predictor: the scored replay of the calibrate run that exported it."""
    spec = load_spec(spec_path)
    crit = F.Criterion.at(target, confidence, reference)
    version_dir = out / spec.predictor_model / "1"
    if not (version_dir / "model.json").exists():
        raise SpecError(f"{version_dir}/model.json missing: --scored refits the policy beside an exported "
                        f"predictor; run calibrate without --scored first")
    scored = [json.loads(line) for line in scored_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assign_splits(records, test_share, seed)     # as calibrate did: the data hash covers the splits
    return {**fit_policy(scored, records, spec, version_dir, crit, seed), "notes": [],
            "acceptance": None, "too_few_examples": []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optistop calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("replay", type=Path, nargs="?", help="labelled JSONL (optistop collect + optistop label)")
    ap.add_argument("--spec", type=Path, help="the cascade spec the replay was collected with")
    ap.add_argument("--from-audit", type=Path, default=None, metavar="LOG",
                    help="instead: refit the policy on this audit log (optistop.pipeline.recalibrate)")
    ap.add_argument("--policy", type=Path, default=None, help="with --from-audit: the policy.json to replace")
    ap.add_argument("--prompts", type=Path, default=None,
                    help="with --from-audit: the original calibration set (scored replay JSONL) to fit with")
    ap.add_argument("--target", type=float, default=0.95, help="share of the reference stage's quality to keep")
    ap.add_argument("--confidence", type=float, default=0.9,
                    help="probability that the served quality reaches the tolerance (target - 0.5 points)")
    ap.add_argument("--reference", default="best",
                    help="best (the best stage on the calibration data), last, a stage index or a stage model name")
    ap.add_argument("--out", type=Path, help="model repository (optistop repo) to install into")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-share", type=float, default=0.2)
    ap.add_argument("--max-epochs", type=int, default=None, help="predictor training epochs (default 50)")
    ap.add_argument("--replay-out", type=Path, default=None, help="also keep the scored replay file here")
    ap.add_argument("--no-install", action="store_true",
                    help="write the predictor and policy files only (the committed embedded repository)")
    ap.add_argument("--scored", type=Path, default=None, metavar="REPLAY_OUT",
                    help="refit the policy only, beside the predictor already in --out, on the scored replay "
                         "its calibrate run wrote with --replay-out (seconds, no training)")
    args = ap.parse_args(argv)
    if args.scored is not None:
        clash = [flag for flag, v in (("--from-audit", args.from_audit), ("--replay-out", args.replay_out),
                                      ("--max-epochs", args.max_epochs)) if v is not None]
        if clash:
            ap.error(f"--scored refits the policy alone (no predictor training); it does not take {', '.join(clash)}")
    if args.from_audit is not None:
        return _from_audit(ap, args)
    if args.replay is None or args.spec is None or args.out is None:
        ap.error("give REPLAY, --spec and --out (or --from-audit LOG --policy policy.json)")
    if args.policy or args.prompts:
        ap.error("--policy and --prompts go with --from-audit")
    try:
        if args.scored is not None:
            res = refit_policy(read_labelled(args.replay), args.scored, args.spec, args.out.absolute(),
                               args.target, args.seed, args.confidence, args.reference, args.test_share)
        else:
            res = calibrate(read_labelled(args.replay), args.spec, args.out.absolute(), args.target, args.seed,
                            args.test_share, not args.no_install, args.replay_out, args.max_epochs or 50,
                            args.confidence, args.reference)
    except (ReplayInputError, SpecError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = res["cross_fitted"]
    print("\n".join(res["notes"]))
    for line in res["too_few_examples"]:
        print(f"warning: {line}: its calibration and AUROC are not reliable; collect more prompts", file=sys.stderr)
    acc = res["acceptance"]
    if acc:
        gain = "-" if acc["auroc_gain"] is None else f"{acc['auroc_gain']:+.3f}"
        print(f"predictor acceptance (stage {acc['stage']}): {acc['verdict']} (AUROC gain over prompt-only {gain}, "
              f"target {acc['auroc_gain_target']:+.2f}; ECE {acc['ece_output_aware_calibrated']}, target "
              f"{acc['ece_target']})")
    print(f"operating point: {res['operating']['policy']} (lambda {res['operating'].get('lambda')}); on "
          f"{res['n_policy_prompts']} held-out prompts, cross-fitted: quality {c['quality_rel']:.3f} of "
          f"{res['reference']}'s (promise: >= {args.target - 0.005:.3f} with confidence "
          f"{res['confidence']:g}) at cost {c['cost']:.3f} (cheapest single stage meeting the target "
          f"{c['cheapest_single_stage']:g}, "
          f"router {c['router_cost']:.3f}); wrote {res['version_dir']}")
    return 0


def _from_audit(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from optistop.pipeline.recalibrate import recalibrate

    if args.policy is None:
        ap.error("--from-audit needs --policy PATH (the served policy.json to replace)")
    if args.replay is not None or args.out is not None or args.spec is not None:
        ap.error("--from-audit takes --policy, --prompts, --target and --seed, not REPLAY, --spec or --out")
    try:
        res = recalibrate(args.from_audit, args.policy, args.target, args.prompts, args.seed)
    except (ReplayInputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"recalibrated on {res['audits']} audits ({res['skipped']} skipped; {res['rows']} rows in all): "
          f"operating point {res['operating']['policy']} (lambda {res['operating'].get('lambda')}); wrote "
          f"{res['policy']} version {res['version']} (previous kept as {res['backup']})")
    return 0
