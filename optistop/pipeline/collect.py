"""Collect every stage's answer to your prompts through the served repository (bring your own cascade).

$ optistop collect --prompts prompts.jsonl --url 127.0.0.1:8001 --spec my_cascade.toml --out replay.jsonl
$ optistop collect ... --grader number            # label while collecting (else: optistop label)

Every prompt goes to every stage model of the spec with tritonclient's asyncio gRPC client, with the
stage tensor contract the cascade itself uses (optistop.serving.bls.stage_request), so the same command
collects from the embedded CPU family and from TensorRT-LLM engines on GPUs. The prompt is encoded the
way the cascade encodes it (the family's chat template when the spec or the prompt asks for it).

Input, one JSON object per line: {"id", "prompt" | "messages", "reference"?}.
Output, one line per prompt (the replay schema, optistop.offline.replay):
    {"id", "prompt": the user's text, "messages"?, "reference"?, "stages": [{"model", "cost", "response",
     "token_ids", "logprobs", "hit_max_tokens", "latency_ms", "error"?}, ... in spec order]}
Bounded concurrency (--concurrency prompts in flight; by default two per instance of the stage with the
fewest), a progress bar, resume (appends; ids already in the output are skipped, except records with a
stage error, which are collected again unless --no-retry-errors), and a per-prompt error is recorded in
that stage's entry, never fatal. Each stage call may take the stage's ``timeout_for(max_tokens)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optistop.offline.operating import ReplayInputError
from optistop.offline.replay_files import read_records
from optistop.serving.bls import STAGE_OUTPUTS, parse_stage_outputs, stage_request
from optistop.serving.tokenizers import PromptEncoder, parse_messages
from optistop.spec import DEFAULT_SPEC, CascadeSpec, SpecError, load_spec


class PromptFileError(ValueError):
    """A prompts file that cannot be read; the message names the line and the field."""


def read_prompts(path: Path) -> list[dict[str, Any]]:
    out, seen = [], set()
    try:
        records, lines = read_records(path)   # JSON objects with their line numbers (the replay's reader)
    except ReplayInputError as exc:
        raise PromptFileError(str(exc)) from None
    for rec, n in zip(records, lines, strict=True):
        if "id" not in rec:
            raise PromptFileError(f"{path}:{n}: field 'id' is missing")
        if ("prompt" in rec) == ("messages" in rec):
            raise PromptFileError(f"{path}:{n}: give exactly one of 'prompt' (text) and 'messages' (chat)")
        if "prompt" in rec and not (isinstance(rec["prompt"], str) and rec["prompt"].strip()):
            raise PromptFileError(f"{path}:{n}: field 'prompt' must be a non-empty string")
        if "messages" in rec:
            try:
                parse_messages(json.dumps(rec["messages"]))
            except ValueError as exc:
                raise PromptFileError(f"{path}:{n}: field 'messages' {exc}") from None
        key = str(rec["id"])
        if key in seen:
            raise PromptFileError(f"{path}:{n}: id {key!r} appears twice")
        seen.add(key)
        out.append(rec)
    if not out:
        raise PromptFileError(f"{path}: no prompts")
    return out


def done_ids(path: Path, retry_errors: bool = False) -> set[str]:
    """Ids already in an output file (resume); a torn last line from an interrupted run is ignored.

    ``retry_errors``: a record with a stage error is not done: its line is dropped from the file (rewritten
    whole through a temporary file, so an interruption leaves the old file or the new one) and the prompt
    is collected again, since ``calibrate`` refuses records with errors."""
    if not path.exists():
        return set()
    ids, keep, dropped = set(), [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            key = str(rec["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if retry_errors and any("error" in st for st in rec.get("stages", []) if isinstance(st, dict)):
            dropped += 1
            continue
        ids.add(key)
        keep.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        tmp.replace(path)
        print(f"{dropped} records in {path} had stage errors: collecting them again", file=sys.stderr)
    return ids


def default_concurrency(spec: CascadeSpec) -> int:
    """Prompts in flight by default: two per instance of the stage with the fewest (one batch running,
    one queued behind it), so no call waits behind more than one batch of work: with 8 in flight against
    one instance of a real model on a CPU, most calls outlived their timeout."""
    return 2 * min(s.instances for s in spec.stages)


class Collector:
    def __init__(self, spec: CascadeSpec, encoder: PromptEncoder, url: str, max_tokens: int,
                 timeout_s: float | None = None) -> None:
        self.spec, self.encoder, self.url, self.max_tokens = spec, encoder, url, max_tokens
        self.timeout_s = timeout_s
        self.client: Any = None

    async def __aenter__(self) -> Collector:
        import tritonclient.grpc.aio as grpcclient

        self.mod = grpcclient
        self.client = grpcclient.InferenceServerClient(self.url)  # one channel for every call
        missing = [s.triton_model for s in self.spec.stages
                   if not await self.client.is_model_ready(s.triton_model)]
        if missing:
            await self.client.close()
            raise SpecError(f"stage model(s) {', '.join(missing)} not ready at {self.url}; serve the "
                            f"repository built for this spec (optistop repo / optistop serve)")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def _stage(self, k: int, ids: tuple[int, ...]) -> dict[str, Any]:
        stage = self.spec.stages[k]
        entry: dict[str, Any] = {"model": stage.name, "cost": stage.cost}
        inputs = []
        stops = self.spec.stop_token_ids or self.encoder.end_ids[1:]
        for name, arr in stage_request(ids, self.max_tokens, self.encoder.end_id, self.encoder.pad_id,
                                       stops).items():
            dtype = "BOOL" if arr.dtype == bool else "INT32"
            inp = self.mod.InferInput(name, list(arr.shape), dtype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [self.mod.InferRequestedOutput(n) for n in STAGE_OUTPUTS]
        t0 = time.perf_counter()
        try:
            res = await self.client.infer(stage.triton_model, inputs, outputs=outputs,
                                          client_timeout=self.timeout_s or stage.timeout_for(self.max_tokens))
            out = parse_stage_outputs({n: res.as_numpy(n) for n in STAGE_OUTPUTS}, self.max_tokens,
                                      self.encoder.end_id, stops)
        except Exception as exc:  # recorded for this prompt and stage; the collection goes on
            msg = exc.message() if hasattr(exc, "message") else str(exc)
            return entry | {"error": f"{type(exc).__name__}: {msg}"[:500]}
        return entry | {
            "response": self.encoder.decode(out.token_ids), "token_ids": list(out.token_ids),
            "logprobs": [round(x, 6) for x in out.logprobs], "hit_max_tokens": out.hit_max_tokens,
            "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)}

    async def one(self, rec: dict[str, Any]) -> dict[str, Any]:
        prompt = (self.encoder.encode(messages=rec["messages"]) if "messages" in rec
                  else self.encoder.encode(text=rec["prompt"]))
        stages = [await self._stage(k, prompt.ids) for k in range(len(self.spec.stages))]
        out = {"id": str(rec["id"]), "prompt": prompt.user_text}
        out |= {k: rec[k] for k in ("messages", "reference") if k in rec}
        return out | {"stages": stages}


async def collect(prompts: Iterable[dict[str, Any]], collector: Collector, out: Path, concurrency: int,
                  label: Any = None) -> dict[str, int]:
    """Run every prompt through every stage; append each finished record to ``out`` as it completes."""
    from tqdm import tqdm

    todo = list(prompts)
    sem = asyncio.Semaphore(concurrency)
    counts = {"prompts": len(todo), "stage_errors": 0}

    async def run(rec: dict[str, Any]) -> dict[str, Any]:
        async with sem:
            return await collector.one(rec)

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh, tqdm(total=len(todo), desc="collect", unit="prompt",
                                                        file=sys.stderr) as bar:
        for fut in asyncio.as_completed([run(r) for r in todo]):
            rec = await fut
            if label is not None:
                rec = label(rec)
            counts["stage_errors"] += sum("error" in st for st in rec["stages"])
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()  # an interrupted run resumes from what is on disk
            bar.update(1)
    return counts


def main(argv: list[str] | None = None) -> int:
    from optistop.pipeline.label import GRADERS_HELP, make_labeler

    ap = argparse.ArgumentParser(prog="optistop collect", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=Path, required=True, help="JSONL: {id, prompt | messages, reference?}")
    ap.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC host:port")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the served cascade's spec")
    ap.add_argument("--out", type=Path, required=True, help="replay JSONL to append to")
    ap.add_argument("--max-tokens", type=int, default=None, help="default: the spec's max_tokens_default")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="prompts in flight (default: 2 per instance of the stage with the fewest instances)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per stage call (default: the stage's timeout_s + timeout_per_token_s x max tokens)")
    ap.add_argument("--retry-errors", action=argparse.BooleanOptionalAction, default=True,
                    help="on resume, collect again the records with a stage error (default; --no-retry-errors "
                         "keeps them as done)")
    ap.add_argument("--grader", default=None, help=f"label while collecting: {GRADERS_HELP}")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        max_tokens = args.max_tokens or spec.max_tokens_default
        concurrency = args.concurrency if args.concurrency is not None else default_concurrency(spec)
        if not 1 <= max_tokens <= spec.max_tokens_cap or concurrency < 1:
            raise SpecError(f"--max-tokens must be in 1..{spec.max_tokens_cap} and --concurrency >= 1")
        prompts = read_prompts(args.prompts)
        labeler = make_labeler(args.grader) if args.grader else None
        skip = done_ids(args.out, args.retry_errors)
        todo = [p for p in prompts if str(p["id"]) not in skip]
        print(f"{len(prompts)} prompts, {len(prompts) - len(todo)} already in {args.out}, {len(todo)} to "
              f"collect from {len(spec.stages)} stages at {args.url}, {concurrency} in flight", file=sys.stderr)

        async def go() -> dict[str, int]:
            async with Collector(spec, PromptEncoder.for_spec(spec), args.url, max_tokens, args.timeout) as c:
                return await collect(todo, c, args.out, concurrency, labeler)

        counts = asyncio.run(go())
    except (SpecError, PromptFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {counts['prompts']} records to {args.out} ({counts['stage_errors']} stage errors recorded)")
    return 0
