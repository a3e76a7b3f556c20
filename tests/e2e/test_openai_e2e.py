"""The OpenAI-compatible front end with the official ``openai`` client, over a real tritonserver: the
session ``api`` of tests/e2e/conftest.py (shared with test_openai_conformance_e2e.py) over the session
``fault_server`` (tests/conftest.py), where stage_large's streaming engine waits 50 ms per token (so that
tokens arriving one by one can be told from a buffered answer) and stage_medium, in both variants, fails
(so that "no living stage" has a request that meets it)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import httpx2 as httpx  # what the openai client itself uses
import pytest

openai = pytest.importorskip("openai")

from optistop import prometheus_text  # noqa: E402
from optistop.server.embedded import EmbeddedServer  # noqa: E402
from tests.e2e.conftest import OPENAI_TOKEN_DELAY_S  # noqa: E402

TOKEN_DELAY_S = OPENAI_TOKEN_DELAY_S
REVERSE = "R:abcdefghijkl="         # 12-letter reversal: every stage answers 'lkjihgfedcba'


def test_models_lists_the_cascade_and_each_stage(client) -> None:
    assert [m.id for m in client.models.list()] == ["cascade", "stage_small", "stage_medium", "stage_large"]


def test_completion_carries_the_cascade_metadata_and_usage(client) -> None:
    r = client.completions.create(model="cascade", prompt="R:hello=", max_tokens=16)
    meta = r.model_extra["cascade"]
    assert r.choices[0].text == "olleh" and r.choices[0].finish_reason == "stop"
    assert meta["stage"] == 0 and meta["stages_run"] == [0] and meta["cost"] == 1.0 and not meta["degraded"]
    assert len(meta["confidences"]) == 1 and 0.0 <= meta["confidences"][0] <= 1.0
    # 'R:hello=' is 8 characters + BOS with the character tokenizer; 'olleh' is 5
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (9, 5, 14)


def test_chat_with_lambda_and_policy_as_extra_body_fields(client) -> None:
    r = client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": "12+35="}],
                                       extra_body={"policy": "fixed:2", "lambda": 3.0})
    meta = r.model_extra["cascade"]
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == "47"
    assert meta["stage_model"] == "stage_large" and meta["stages_run"] == [2] and meta["cost"] == 10.0


def test_a_stage_served_as_its_own_model(client) -> None:
    r = client.completions.create(model="stage_small", prompt="R:abc=", max_tokens=8)
    assert r.choices[0].text == "cba" and r.model_extra["cascade"]["stages_run"] == [0]
    with pytest.raises(openai.BadRequestError, match="apply to model 'cascade' only"):
        client.completions.create(model="stage_small", prompt="R:abc=", extra_body={"lambda": 1.0})


def test_streaming_sends_tokens_as_the_stage_engine_generates_them(client) -> None:
    whole = client.completions.create(model="stage_large", prompt=REVERSE, max_tokens=16).choices[0].text
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model="stage_large", messages=[{"role": "user", "content": REVERSE}],
                                            max_tokens=16, stream=True, stream_options={"include_usage": True})
    arrivals, pieces, chunks = [], [], []
    for c in stream:
        chunks.append(c)
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.perf_counter() - t0)
            pieces.append(c.choices[0].delta.content)
    assert "".join(pieces) == whole == "lkjihgfedcba"
    assert len(pieces) == 12, pieces                      # one chunk per generated token
    # 12 tokens at 50 ms each: a buffered answer would arrive in one burst at the end
    assert arrivals[-1] - arrivals[0] >= 11 * TOKEN_DELAY_S * 0.8, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sorted(gaps)[len(gaps) // 2] >= TOKEN_DELAY_S * 0.6, gaps
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].model_extra["cascade"]["stages_run"] == [2]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_streaming_an_accepted_earlier_answer_sends_it_whole(client) -> None:
    chunks = list(client.completions.create(model="cascade", prompt="R:hello=", stream=True))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    final = chunks[-1]
    assert texts == ["olleh"] and final.choices[0].finish_reason == "stop"
    assert final.model_extra["cascade"]["stages_run"] == [0]


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"model": "gpt-4", "prompt": "1+1="}, 404, "model", "model_not_found"),
    ({"model": "cascade", "prompt": "1+1=", "lambda": -1}, 400, "lambda", None),
    ({"model": "cascade", "prompt": "1+1=", "policy": "bogus"}, 400, "policy", None),
    ({"model": "cascade", "prompt": "1+1=", "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": "cascade", "prompt": "1" * 60 + "=", "max_tokens": 16}, 400, "prompt", "context_length_exceeded"),
    ({"model": "cascade", "prompt": "1+1=", "lambda": -1, "stream": True}, 400, "lambda", None),
    ({"model": "stage_medium", "prompt": "12+35="}, 503, None, "service_unavailable"),
    ({"model": "stage_medium", "prompt": "12+35=", "stream": True}, 503, None, "service_unavailable"),
])
def test_errors_in_openais_format(api, body, status, param, code) -> None:
    r = httpx.post(f"{api[0]}/completions", json=body, timeout=30)
    err = r.json()["error"]
    assert r.status_code == status, r.text
    assert (err["param"], err["code"]) == (param, code) and err["message"] and "Traceback" not in err["message"]


def test_bad_json_and_the_openai_clients_exceptions(api, client) -> None:
    r = httpx.post(f"{api[0]}/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="models here: cascade"):
        client.completions.create(model="nope", prompt="1+1=")
    with pytest.raises(openai.BadRequestError, match="lambda"):
        client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": "1+1="}],
                                       extra_body={"lambda": -2})
    with pytest.raises(openai.InternalServerError, match="stage_medium"):   # 503: no stage to answer
        client.completions.create(model="stage_medium", prompt="12+35=")


def test_concurrent_requests_streamed_and_not(api) -> None:
    prompts = ["R:hello=", "12+35=", "S:93715=", "R:abcdef=", "7+8=", "4821+3777="] * 2

    async def one(c, i: int, p: str) -> str:
        kw = {"extra_body": {"policy": "fixed:2"}}
        if i % 2:
            s = await c.completions.create(model="cascade", prompt=p, stream=True, **kw)
            return "".join([ch.choices[0].text async for ch in s if ch.choices])
        return (await c.completions.create(model="cascade", prompt=p, **kw)).choices[0].text

    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=api[0], api_key="unused", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*(one(c, i, p) for i, p in enumerate(prompts)))
        finally:
            await c.close()

    t0 = time.perf_counter()
    got = asyncio.run(main())
    sync = openai.OpenAI(base_url=api[0], api_key="unused", max_retries=0)
    want = [sync.completions.create(model="cascade", prompt=p, extra_body={"policy": "fixed:2"}).choices[0].text
            for p in prompts]
    assert got == want and all(got), (got, want, time.perf_counter() - t0)


def test_a_client_that_disconnects_cancels_the_cascade_request(api) -> None:
    url, srv = api
    before = _cancelled(srv)
    with httpx.stream("POST", f"{url}/completions", timeout=30,
                      json={"model": "stage_large", "prompt": "R:abcdefghijklmnopqrstuvwx=", "max_tokens": 32,
                            "stream": True}) as r:
        for line in r.iter_lines():
            if '"text": "' in line and '"text": ""' not in line:
                break   # the first token: hang up while the engine has 23 tokens (1.2 s) to go
    deadline = time.monotonic() + 10
    while _cancelled(srv) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    # the cascade saw the cancellation (Triton flagged its request) and ended it without a result
    assert _cancelled(srv) == before + 1


def _cancelled(srv: EmbeddedServer) -> float:
    with urllib.request.urlopen(f"http://{srv.cfg.host}:{srv.cfg.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    name = "optistop_cascade_errors_total"
    return prometheus_text.value(prometheus_text.samples(text, name), name, code="CANCELLED")


def test_cancelling_a_stage_stream_stops_its_decoding(api) -> None:
    """A gRPC stream client of stage_large_stream that cancels stops the engine at the next token."""
    import numpy as np
    import tritonclient.grpc.aio as grpc_aio

    from optistop.serving.tokenizers import load_tokenizer
    from optistop.spec import load_spec

    srv = api[1]
    ids = np.array([load_tokenizer(load_spec().tokenizer)("R:abcdefghijklmnopqrstuvwx=").input_ids], dtype=np.int32)
    values = {"input_ids": ids, "input_lengths": np.array([[ids.shape[1]]], np.int32),
              "request_output_len": np.array([[32]], np.int32), "streaming": np.array([[True]])}

    async def main() -> int:
        client = grpc_aio.InferenceServerClient(srv.cfg.grpc_url)
        inputs = []
        for name, arr in values.items():
            inputs.append(grpc_aio.InferInput(name, list(arr.shape), "BOOL" if arr.dtype == bool else "INT32"))
            inputs[-1].set_data_from_numpy(arr)

        async def requests():
            yield {"model_name": "stage_large_stream", "inputs": inputs}

        it, got = client.stream_infer(requests()), 0
        async for _result, error in it:
            assert error is None, error
            got += 1
            if got == 2:
                it.cancel()
                break
        await asyncio.sleep(1.0)   # 24 tokens at 50 ms would take 1.2 s to finish
        await client.close()
        return got

    assert asyncio.run(main()) == 2
    log = Path(srv.log_path).read_text(errors="replace")
    assert "stage_large_stream: request cancelled; decoding stopped" in log
