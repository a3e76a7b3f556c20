"""Stage engines measured directly, and the cascade's throughput against the ideal they imply.

``make bench`` also runs perf_analyzer against each stage model (stage_small, stage_medium, stage_large)
at the ideal's concurrency (8), interleaved with the cascade and fixed-stage runs of the same repeat. Its
``--input-data`` holds the same held-out prompts as the cascade's, as the cascade sends them to a stage:
tokenised with the spec's tokenizer, the request built by optistop.serving.bls.stage_request (max_tokens,
end_id, pad_id, return_log_probs true, the family's other end tokens as stop words).

Ideal: the stages share the same CPUs, so a cascade request's stage time is the sum of the per-request
times of the stages it ran, and the cascade's best throughput is 1 / sum_k (ran_share_k / T_k), with
ran_share_k the share of cascade requests that ran stage k (its ``stages_run`` output) and T_k stage k's
throughput measured directly. The ratio cascade / ideal is taken within each repeat, then the median.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optistop.perf.results import CASCADE, Run, _median, _r

STAGE_PREFIX = "stage:"   # configuration name of a stage-direct run: stage:<k>
TARGET_RATIO = 0.8        # the target: cascade throughput >= 0.8 x ideal
DEFINITION = (
    "ideal = 1 / sum_k (ran_share_k / T_k): ran_share_k the share of cascade requests that ran stage k "
    "(stages_run), T_k stage k's throughput under perf_analyzer at the same concurrency on the same "
    "prompts; assumes the stages share the same CPUs, so a request's stage times add up. "
    "Ratio = cascade throughput / ideal within each repeat, then the median")


def stage_config(k: int) -> str:
    return f"{STAGE_PREFIX}{k}"


def stage_index(config: str) -> int | None:
    """k for ``stage:<k>``; None for any other configuration."""
    return int(config[len(STAGE_PREFIX):]) if config.startswith(STAGE_PREFIX) else None


def stage_input_data(prompt_ids: Sequence[Sequence[int]], max_tokens: int, end_id: int, pad_id: int,
                     stop_ids: Sequence[int] = ()) -> dict[str, Any]:
    """perf_analyzer --input-data for a stage model: per prompt, the tensors the cascade sends (without
    the batch dimension), each as content and shape."""
    from optistop.serving.bls import stage_request

    data = []
    for ids in prompt_ids:
        arrays = stage_request(ids, max_tokens, end_id, pad_id, stop_ids)
        data.append({name: {"content": a[0].reshape(-1).tolist(), "shape": list(a[0].shape)}
                     for name, a in arrays.items()})
    return {"data": data}


def stage_inputs(spec_path: Any, prompts: Sequence[str], max_tokens: int) -> dict[str, Any]:
    """stage_input_data for text prompts, tokenised by the cascade's own service for the spec at
    ``spec_path`` (its encoder, end and pad ids, stop tokens)."""
    from optistop.serving.cascade_service import CascadeService

    svc = CascadeService.from_spec_file(spec_path)
    return stage_input_data([svc.encoder.encode(text=p).ids for p in prompts], max_tokens, svc.end_id,
                            svc.pad_id, svc.spec.stop_token_ids)


def ideal_throughput(ran_share: Sequence[float], stage_throughput: Sequence[float]) -> float:
    """1 / sum_k (ran_share_k / T_k): requests per second if each request costs the sum of its stages'
    per-request times at their direct throughput."""
    if len(ran_share) != len(stage_throughput):
        raise ValueError(f"{len(ran_share)} stage shares for {len(stage_throughput)} stage throughputs")
    if any(s > 0 and t <= 0 for s, t in zip(ran_share, stage_throughput)):
        raise ValueError(f"a stage that ran has no throughput: {list(stage_throughput)}")
    load = sum(s / t for s, t in zip(ran_share, stage_throughput) if s > 0)
    if load <= 0:
        raise ValueError("no stage ran")
    return 1.0 / load


def throughput_vs_ideal(runs: Sequence[Run], n_stages: int, concurrency: int) -> dict[str, Any]:
    """The cascade at ``concurrency`` against the ideal of its stage mix, repeat by repeat; {} when a
    repeat lacks the cascade run or a stage-direct run."""
    by = {(r.config, r.rep): r for r in runs if r.concurrency == concurrency}
    rows = []
    for rep in sorted({rep for cfg, rep in by if cfg == CASCADE}):
        casc, stages = by[(CASCADE, rep)], [by.get((stage_config(k), rep)) for k in range(n_stages)]
        if not casc.requests or any(s is None for s in stages):
            continue
        share = [sum(k in q.stages_run for q in casc.requests) / len(casc.requests) for k in range(n_stages)]
        direct = [s.csv["throughput_infer_per_s"] for s in stages if s is not None]
        ideal = ideal_throughput(share, direct)
        rows.append({"cascade": casc.csv["throughput_infer_per_s"], "ideal": ideal, "share": share,
                     "direct": direct, "latency": [s.csv.get("latency_avg_ms") for s in stages if s is not None],
                     "requests": len(casc.requests)})
    if not rows:
        return {}
    total = sum(r["requests"] for r in rows)
    return {
        "concurrency": concurrency,
        "cascade_infer_per_s": _median([r["cascade"] for r in rows]),
        "ideal_infer_per_s": _median([r["ideal"] for r in rows]),
        "ratio": _median([r["cascade"] / r["ideal"] for r in rows]),
        "ratio_per_repeat": [_r(r["cascade"] / r["ideal"]) for r in rows],
        "stage_direct_infer_per_s": [_median([r["direct"][k] for r in rows]) for k in range(n_stages)],
        "stage_direct_latency_avg_ms": [_median([r["latency"][k] for r in rows]) for k in range(n_stages)],
        "ran_share": [_r(sum(r["share"][k] * r["requests"] for r in rows) / total) for k in range(n_stages)],
        "repeats": len(rows),
        "definition": DEFINITION,
    }
