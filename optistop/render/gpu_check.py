"""The checks of build/gpu-check.sh on a running server; each exits non-zero with one line per failure.

$ python -m optistop.render.gpu_check --cut build/qwen2.5-trtllm.toml --out one-stage.toml
$ python -m optistop.render.gpu_check --spec one-stage.toml --stages --url 127.0.0.1:8000     # log-prob self-test
$ python -m optistop.render.gpu_check --spec one-stage.toml --prompts prompts.jsonl --n 48     # prints the grader
$ python -m optistop.render.gpu_check --spec one-stage.toml --cascade fixed:0 optimal router --url 127.0.0.1:8000

``--stages`` sends every stage of the spec one chat request (``messages``, templated as the cascade templates
them) in the stage contract (both GPU profiles serve it) and checks that output_log_probs are there and not
all zero and that the answer stopped at an end token before its budget. ``--cascade`` sends the cascade
one ``messages`` request per policy. Stdlib HTTP only (KServe v2 JSON), so it runs in the image as is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

from optistop import tensors as T
from optistop.spec import CascadeSpec, load_spec

QUESTION = "What is 17 * 23? Answer with the number only."
MAX_TOKENS = 64
POLICIES = ("fixed:0", "optimal", "router")


def one_stage_profile(text: str, base: Path, model_dir: Path | None = None) -> str:
    """A GPU profile's TOML cut to its first stage, with ``../`` paths made absolute from ``base``
    (``../checkpoints/<name>`` under ``model_dir`` when given, as engines.sh --model-dir does)."""
    head, *stages = re.split(r"(?m)^\[\[stages\]\]\n", text)
    if not stages:
        raise ValueError("the profile has no [[stages]]")
    first = re.split(r"(?m)^\[", stages[0], maxsplit=1)[0]
    after = re.split(r"(?m)^(?=\[)", stages[-1], maxsplit=1)
    tables = after[1] if len(after) > 1 else ""
    name = re.search(r'(?m)^name = "([^"]+)"', first).group(1)  # type: ignore[union-attr]
    # per-stage overrides of the other stages go: their stages are gone
    tables = re.sub(rf"(?ms)^\[\w+\.stages\.(?!{re.escape(name)}\]).*?(?=^\[|\Z)", "", tables)
    out = head + "[[stages]]\n" + first + tables
    if model_dir is not None:
        out = re.sub(r'"\.\./checkpoints/', f'"{model_dir.resolve()}/', out)
    return re.sub(r'"\.\./', f'"{base.resolve()}/../', out)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"error": exc.read().decode(errors="replace")}


def check_stage(url: str, model: str, ids: list[int], end_id: int, stop_ids: tuple[int, ...],
                max_tokens: int) -> list[str]:
    def inp(name: str, dtype: str, shape: list[int], data: list) -> dict:
        return {"name": name, "datatype": dtype, "shape": shape, "data": data}

    inputs = [inp(T.INPUT_IDS, "INT32", [1, len(ids)], ids), inp(T.INPUT_LENGTHS, "INT32", [1, 1], [len(ids)]),
              inp(T.REQUEST_OUTPUT_LEN, "INT32", [1, 1], [max_tokens]), inp(T.END_ID, "INT32", [1, 1], [end_id]),
              inp(T.PAD_ID, "INT32", [1, 1], [end_id]), inp(T.RETURN_LOG_PROBS, "BOOL", [1, 1], [True]),
              inp(T.RUNTIME_TOP_K, "INT32", [1, 1], [1])]
    if stop_ids:
        words = T.stop_words_list([[t] for t in stop_ids])
        inputs.append(inp(T.STOP_WORDS_LIST, "INT32", [1, *words.shape], words.reshape(-1).tolist()))
    r = _post(f"http://{url}/v2/models/{model}/infer", {"inputs": inputs})
    if "error" in r:
        return [f"stage {model}: {r['error']}"]
    out = {o["name"]: o["data"] for o in r.get("outputs", [])}
    n = int(out.get(T.SEQUENCE_LENGTH, [0])[0])
    lps = out.get(T.OUTPUT_LOG_PROBS, [])
    problems = []
    if len(lps) != n:
        problems.append(f"stage {model}: {len(lps)} output_log_probs for sequence_length {n}")
    if not lps or not any(lps):
        problems.append(f"stage {model}: output_log_probs {'missing' if not lps else 'all zero'} for {n} tokens")
    if not 0 < n < max_tokens:
        problems.append(f"stage {model}: {n} tokens for a {max_tokens}-token budget: it did not stop at an end token")
    return problems


def probe(spec: CascadeSpec) -> list[dict[str, str]]:
    """The chat request both checks send: a question for an instruct family (chat_template), else one of
    the tiny task suite's prompts, which the tiny families were trained on."""
    if spec.chat_template:
        return [{"role": "user", "content": QUESTION}]
    from optistop.tiny.tasks import generate_split

    return [{"role": "user", "content": generate_split("val", 1, families=("add",), levels=(1,))[0].prompt}]


def check_stages(url: str, spec: CascadeSpec) -> list[str]:
    """Every stage, one chat request encoded as the cascade encodes it."""
    from optistop.serving.tokenizers import PromptEncoder

    enc = PromptEncoder.for_spec(spec)
    ids = list(enc.encode(messages=probe(spec)).ids)
    budget = min(MAX_TOKENS, spec.max_context_tokens - len(ids))
    problems = []
    for stage in spec.stages:
        problems += check_stage(url, stage.triton_model, ids, enc.end_id, spec.stop_token_ids or
                                tuple(enc.end_ids[1:]), budget)
    return problems


def check_cascade(url: str, spec: CascadeSpec, policy: str, max_tokens: int) -> list[str]:
    r = _post(f"http://{url}/v2/models/cascade/generate",
              {"messages": json.dumps(probe(spec)), "max_tokens": max_tokens, "policy": policy})
    if "error" in r:
        return [f"cascade ({policy}): {r['error']}"]
    text = str(r.get("text_output", ""))
    problems = [] if text.strip() else [f"cascade ({policy}): empty text_output"]
    if "<|im_end|>" in text or "<|endoftext|>" in text:
        problems.append(f"cascade ({policy}): the answer carries an end token: {text!r}")
    if r.get("degraded") in (True, "true", 1):
        problems.append(f"cascade ({policy}): degraded answer: {r.get('degraded_reason')}")
    print(f"cascade ({policy}) answered {text!r} from {r.get('stage_model')} at cost {r.get('cost')}")
    return problems


def write_prompts(spec: CascadeSpec, out: Path, n: int) -> str:
    """Collection prompts (``optistop collect``'s input) with references; returns the grader that fits them.

    A chat family (chat_template): ``n`` addition questions, grader ``number``. Otherwise the tiny task
    suite's own prompts, which the tiny families were trained on, every (family, level) cell alike (``n``
    rounded up to a multiple of 12), grader ``exact``."""
    from optistop.tiny.tasks import generate_split

    lines = []
    if spec.chat_template:
        for it in generate_split("val", max(1, -(-n // 4)), seed=7, families=("add",))[:n]:
            a, b = (int(x) for x in re.findall(r"\d+", it.prompt)[:2])
            lines.append({"id": it.id, "messages": [{"role": "user", "content": f"What is {a} + {b}? "
                                                     "Answer with the number only."}], "reference": str(a + b)})
        grader = "number"
    else:
        lines = [{"id": it.id, "prompt": it.prompt, "reference": it.answer}
                 for it in generate_split("val", max(1, -(-n // 12)), seed=7)]
        grader = "exact"
    out.write_text("".join(json.dumps(rec) + "\n" for rec in lines), encoding="utf-8")
    return grader


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.render.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, help="the profile the server runs")
    ap.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP host:port")
    ap.add_argument("--cut", type=Path, metavar="PROFILE", help="write PROFILE cut to its first stage to --out")
    ap.add_argument("--prompts", type=Path, metavar="OUT", help="write --n collection prompts (JSONL) to OUT")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--stages", action="store_true", help="log-prob self-test of every stage")
    ap.add_argument("--cascade", nargs="+", metavar="POLICY",
                    help=f"one cascade request per policy, e.g. {' '.join(POLICIES)}")
    ap.add_argument("--model-dir", type=Path, help="--cut: the HF checkpoints' parent dir")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cut:
        if not args.out:
            ap.error("--cut needs --out")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(one_stage_profile(args.cut.read_text(), args.cut.parent, args.model_dir))
        return 0
    if not args.spec:
        ap.error("--spec is required")
    if not (args.prompts or args.stages or args.cascade):
        ap.error("give --prompts, --stages or --cascade")
    spec = load_spec(args.spec, check_paths=False)
    if args.prompts:
        print(write_prompts(spec, args.prompts, args.n))     # the grader: gpu-check.sh passes it to collect
    problems: list[str] = []
    if args.stages:
        problems += check_stages(args.url, spec)
    for policy in args.cascade or ():
        problems += check_cascade(args.url, spec, policy, min(MAX_TOKENS, spec.max_tokens_cap))
    for p in problems:
        print(f"gpu-check: FAIL: {p}", file=sys.stderr)
    if not problems and (args.stages or args.cascade):
        print(f"gpu-check: OK: {'stages' if args.stages else 'cascade'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
