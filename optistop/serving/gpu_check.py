"""The checks of build/gpu-check.sh: one request to the first stage and one to the cascade on a running
server; exits non-zero with one line per failed check.

$ python -m optistop.serving.gpu_check --spec one-stage.toml --kind trtllm --url 127.0.0.1:8000
$ python -m optistop.serving.gpu_check --cut build/qwen2.5-trtllm.toml --out one-stage.toml

Stdlib HTTP only (KServe v2 JSON), so it runs in the image without tritonclient.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

from optistop import tensors as T
from optistop.spec import load_spec

PROMPT = "<|im_start|>user\nWhat is 17 * 23? Answer with the number only.<|im_end|>\n<|im_start|>assistant\n"
MAX_TOKENS = 64


def one_stage_profile(text: str, base: Path) -> str:
    """A GPU profile's TOML cut to its first stage, with ``../`` paths made absolute from ``base``."""
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
    return re.sub(r'"\.\./', f'"{base.resolve()}/../', out)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"error": exc.read().decode(errors="replace")}


def check_trtllm_stage(url: str, model: str, ids: list[int], end_id: int, stop_ids: tuple[int, ...]) -> list[str]:
    def inp(name: str, dtype: str, shape: list[int], data: list) -> dict:
        return {"name": name, "datatype": dtype, "shape": shape, "data": data}

    inputs = [inp(T.INPUT_IDS, "INT32", [1, len(ids)], ids), inp(T.INPUT_LENGTHS, "INT32", [1, 1], [len(ids)]),
              inp(T.REQUEST_OUTPUT_LEN, "INT32", [1, 1], [MAX_TOKENS]), inp(T.END_ID, "INT32", [1, 1], [end_id]),
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
    lps = out.get(T.OUTPUT_LOG_PROBS, [])[:n]
    problems = []
    if not lps or not any(lps):
        problems.append(f"stage {model}: output_log_probs {'missing' if not lps else 'all zero'} for {n} tokens")
    if not 0 < n < MAX_TOKENS:
        problems.append(f"stage {model}: {n} tokens for a {MAX_TOKENS}-token budget: it did not stop at an end token")
    return problems


def check_cascade(url: str) -> list[str]:
    r = _post(f"http://{url}/v2/models/cascade/generate",
              {"text_input": PROMPT, "max_tokens": MAX_TOKENS, "policy": "fixed:0"})
    if "error" in r:
        return [f"cascade: {r['error']}"]
    text = str(r.get("text_output", ""))
    problems = [] if text.strip() else ["cascade: empty text_output"]
    if "<|im_end|>" in text or "<|endoftext|>" in text:
        problems.append(f"cascade: the answer carries an end token: {text!r}")
    if r.get("degraded") in (True, "true", 1):
        problems.append(f"cascade: degraded answer: {r.get('degraded_reason')}")
    print(f"cascade answered {text!r} from {r.get('stage_model')}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optistop.serving.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, help="the one-stage profile the server runs")
    ap.add_argument("--kind", choices=("trtllm", "llmapi"), default="trtllm")
    ap.add_argument("--url", default="127.0.0.1:8000")
    ap.add_argument("--cut", type=Path, metavar="PROFILE", help="write PROFILE cut to its first stage to --out")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cut:
        if not args.out:
            ap.error("--cut needs --out")
        args.out.write_text(one_stage_profile(args.cut.read_text(), args.cut.parent))
        return 0
    if not args.spec:
        ap.error("--spec is required")
    from transformers import AutoTokenizer

    spec = load_spec(args.spec, check_paths=False)
    tok = AutoTokenizer.from_pretrained(str(spec.tokenizer))
    stage = spec.stages[0].triton_model
    if args.kind == "trtllm":
        problems = check_trtllm_stage(args.url, stage, tok(PROMPT).input_ids, int(tok.eos_token_id),
                                      spec.stop_token_ids)
    else:   # the llmapi model returns no per-token log-probs (README, "Which image serves which profile")
        problems = [f"stage {stage}: the llmapi model returns no per-token log-probs; cascade adapter not written"]
    problems += check_cascade(args.url)
    for p in problems:
        print(f"gpu-check: FAIL: {p}", file=sys.stderr)
    if not problems:
        print("gpu-check: OK: non-zero log-probs, stopped at an end token, cascade answered")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
