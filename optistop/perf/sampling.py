"""What sampling does to the cascade: quality and cost at a temperature against greedy, on held-out prompts.

$ python -m optistop.perf.sampling --per-cell 30 --temperature 0.7      (make bench-sampling)

The quality predictor and the stopping rule were calibrated on greedy answers. This runs the served cascade
loop (optistop.cascade.run_cascade with the repository's predictor, policy artifact and spec) in this
process over the tiny family's held-out test split, once greedy and once sampled (top_p 1, one seed per
prompt, the same seed for every stage, as the server does), and prints per run: accuracy, mean cost, the
stage mix, and per stage the accuracy of its own answers, the predictor's mean confidence on them (a
calibrated predictor has the two equal) and the accuracy of the answers the rule accepted there. Every
stage answers every prompt first (batched, the CPU engine's own sampler); the loop then replays those
answers, which is exact: a stage's answer does not depend on which stages ran before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optistop import ROOT
from optistop.cascade import CascadeRequest, StageOutput, run_cascade
from optistop.tiny.tasks import generate_split, grade


def stage_answers(svc: Any, prompts: list[tuple[int, ...]], temperature: float, batch: int
                  ) -> list[list[StageOutput]]:
    """answers[stage][prompt] of every stage engine, greedy (temperature 0) or sampled, seed = prompt index."""
    from optistop.engines.runner import Sampling, StageModel

    out = []
    for stage in svc.spec.stages:
        model = StageModel(stage.checkpoint)
        answers: list[StageOutput] = []
        for start in range(0, len(prompts), batch):
            rows = [list(p) for p in prompts[start:start + batch]]
            sampling = [Sampling(temperature, 0, 1.0, start + i) if temperature > 0 else None for i in range(len(rows))]
            gens = model.generate_ids(rows, svc.spec.max_tokens_default, end_id=svc.end_id,
                                      stop_words=tuple((t,) for t in svc.spec.stop_token_ids), sampling=sampling)
            answers += [StageOutput(g.token_ids, g.logprobs, g.hit_max_tokens) for g in gens]
        out.append(answers)
    return out


def run(svc: Any, score: Any, items: list[Any], ids: list[tuple[int, ...]], answers: list[list[StageOutput]],
        lam: float | None = None) -> dict[str, Any]:
    class Replay:
        def __init__(self, i: int) -> None:
            self.i = i

        async def generate(self, stage: int, input_ids: Sequence[int], max_tokens: int) -> StageOutput:
            return answers[stage][self.i]

        async def score(self, features: Sequence[Sequence[float]]) -> list[float]:
            return score(features)

    async def loop() -> list[Any]:
        rule, lam_ = svc.policies.make(None, lam)
        return [await run_cascade(CascadeRequest(it.prompt, ids[i], svc.spec.max_tokens_default, lam_, rule),
                                  svc.spec, Replay(i), svc.decode) for i, it in enumerate(items)]

    results = asyncio.run(loop())
    n, k = len(items), len(svc.spec.stages)
    correct = [grade(it.prompt, r.text) for it, r in zip(items, results)]
    per_stage = []
    for s in range(k):
        own = [grade(it.prompt, svc.decode(answers[s][i].token_ids)) for i, it in enumerate(items)]
        confs = [r.confidences[r.stages_run.index(s)] for r in results if s in r.stages_run]
        ran = [i for i, r in enumerate(results) if s in r.stages_run]
        accepted = [correct[i] for i, r in enumerate(results) if r.stage == s]
        acc_conf = [r.confidences[r.stages_run.index(s)] for r in results if r.stage == s]
        per_stage.append({
            "stage": svc.spec.stages[s].name, "accuracy_alone": round(sum(own) / n, 4),
            "ran": len(ran), "accuracy_where_ran": round(sum(own[i] for i in ran) / len(ran), 4) if ran else None,
            "mean_confidence_where_ran": round(sum(confs) / len(confs), 4) if confs else None,
            "answered": len(accepted),
            "accuracy_answered": round(sum(accepted) / len(accepted), 4) if accepted else None,
            "mean_confidence_answered": round(sum(acc_conf) / len(acc_conf), 4) if acc_conf else None,
        })
    return {"accuracy": round(sum(correct) / n, 4), "mean_cost": round(sum(r.cost for r in results) / n, 4),
            "stages": per_stage}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-cell", type=int, default=30, help="held-out prompts per (family, level) cell (12 cells)")
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.7])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lambda-scale", type=float, nargs="+", default=[1.0],
                    help="sampled runs also at these multiples of the operating lambda (a shifted operating point)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = ap.parse_args(argv)

    from optistop.serving.cascade_service import CascadeService
    from optistop.serving.predictor_runtime import QualityPredictor

    svc = CascadeService.from_spec_file(ROOT / "cascade.toml")
    svc.check_repository(ROOT / "model_repository")
    qp = QualityPredictor(ROOT / "model_repository" / svc.spec.predictor_model / "1" / "model.onnx", engine="auto")
    items = generate_split("test", args.per_cell, seed=26)
    ids = [svc.encoder.encode(text=it.prompt).ids for it in items]
    report: dict[str, Any] = {"prompts": len(items), "policy": svc.policies.default_policy,
                              "lambda": svc.policies.default_lambda}
    for t in [0.0, *args.temperature]:
        answers = stage_answers(svc, ids, t, args.batch)
        for scale in [1.0] if t == 0 else args.lambda_scale:
            lam = report["lambda"] * scale
            r = report[f"temperature {t:g}, lambda x{scale:g}"] = run(svc, qp.score_trusted, items, ids, answers, lam)
            print(f"temperature {t:g}: accuracy {r['accuracy']:.4f}, mean cost {r['mean_cost']:.3f} "
                  f"({len(items)} prompts, policy {report['policy']} at lambda {lam:g})")
            for s in r["stages"]:
                print(f"  {s['stage']:8s} alone {s['accuracy_alone']:.3f} | ran {s['ran']:4d}: accuracy "
                      f"{s['accuracy_where_ran']} vs mean confidence {s['mean_confidence_where_ran']} | answered "
                      f"{s['answered']:4d}: accuracy {s['accuracy_answered']} vs mean confidence "
                      f"{s['mean_confidence_answered']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
