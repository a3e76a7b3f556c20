"""Every OpenAI parameter through the official ``openai`` client, streamed and not, against a real
tritonserver (the session's ``api`` server, tests/e2e/conftest.py): honoured ones do what OpenAI documents,
unsupported ones are a 400 naming the parameter. README "OpenAI-compatible API" has the table.

Expected answers are worked out from the task, not from the server: 'R:<letters>=' reverses the letters,
and the tiny family's tokenizer has one token per character.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest

from optistop.spec import load_spec

REVERSE = "R:abcdefghijkl="   # every stage answers 'lkjihgfedcba' (12 tokens)
ANSWER = "lkjihgfedcba"


def ask(client: Any, *, chat: bool, stream: bool, **kw: Any) -> dict[str, Any]:
    """One request; the reply as {text, finish_reason, completion_tokens, logprobs (list of floats or None),
    tokens, pieces (streamed text pieces)}, whichever way it travelled."""
    model = kw.pop("model", "stage_large")
    prompt = kw.pop("prompt", REVERSE)
    if chat:
        call = lambda **k: client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                          **k)
    else:
        call = lambda **k: client.completions.create(model=model, prompt=prompt, **k)
    if not stream:
        r = call(**kw)
        c = r.choices[0]
        return {"text": c.message.content if chat else c.text, "finish_reason": c.finish_reason,
                "completion_tokens": r.usage.completion_tokens, **_logprobs(c.logprobs, chat), "pieces": None}
    pieces, reason, lp, used = [], None, {"logprobs": None, "tokens": None}, None
    for ch in call(stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage is not None:
            used = ch.usage.completion_tokens
        if not ch.choices:
            continue
        c = ch.choices[0]
        piece = c.delta.content if chat else c.text
        if piece:
            pieces.append(piece)
        if c.finish_reason:
            reason, lp = c.finish_reason, _logprobs(c.logprobs, chat)
    return {"text": "".join(pieces), "finish_reason": reason, "completion_tokens": used, **lp, "pieces": pieces}


def _logprobs(lp: Any, chat: bool) -> dict[str, Any]:
    if lp is None:
        return {"logprobs": None, "tokens": None}
    if chat:
        assert all(e.top_logprobs == [] and e.bytes == list(e.token.encode()) for e in lp.content)
        return {"logprobs": [e.logprob for e in lp.content], "tokens": [e.token for e in lp.content]}
    return {"logprobs": lp.token_logprobs, "tokens": lp.tokens}


MODES = [pytest.param(chat, stream, id=f"{'chat' if chat else 'completions'}-{'stream' if stream else 'whole'}")
         for chat in (True, False) for stream in (False, True)]


@pytest.mark.parametrize(("chat", "stream"), MODES)
def test_stop_ends_the_answer_before_the_first_stop_sequence(client, chat: bool, stream: bool) -> None:
    r = ask(client, chat=chat, stream=stream, stop=["zz", "f", "d"])
    assert (r["text"], r["finish_reason"], r["completion_tokens"]) == (ANSWER[:ANSWER.index("f")], "stop", 6)
    r = ask(client, chat=chat, stream=stream, stop="gf")
    assert (r["text"], r["finish_reason"]) == ("lkjih", "stop")
    r = ask(client, chat=chat, stream=stream, stop=["lk"])       # at the very start: an empty answer
    assert (r["text"], r["finish_reason"], r["completion_tokens"]) == ("", "stop", 0)
    # 'gfx' never completes: the 'gf' a stream held back goes out once 'e' shows it is no stop word
    r = ask(client, chat=chat, stream=stream, stop=["gfx"], max_tokens=8)
    assert (r["text"], r["finish_reason"]) == (ANSWER[:8], "length")
    if stream:
        assert "".join(r["pieces"]) == ANSWER[:8] and not any(p.endswith("g") for p in r["pieces"][:-1])


def test_stop_holds_on_every_stage_of_the_cascade(client) -> None:
    for policy in ("fixed:0", "fixed:2", None):
        extra = {"extra_body": {"policy": policy}} if policy else {}
        r = ask(client, chat=False, stream=False, model="cascade", stop=["h"], **extra)
        assert r["text"] == "lkji" and r["finish_reason"] == "stop", policy


@pytest.mark.parametrize(("chat", "stream"), MODES)
def test_logprobs_are_the_answering_stages_one_per_completion_token(client, api, chat: bool, stream: bool) -> None:
    kw = {"logprobs": True, "top_logprobs": 0} if chat else {"logprobs": 0}
    r = ask(client, chat=chat, stream=stream, **kw)
    assert r["text"] == ANSWER and len(r["logprobs"]) == r["completion_tokens"] == 12
    assert "".join(r["tokens"]) == ANSWER
    # the same numbers straight from the stage engine (tritonclient, no cascade, no front end)
    assert r["logprobs"] == pytest.approx(_stage_log_probs(api[1], "stage_large", REVERSE, 16), abs=1e-5)
    cut = ask(client, chat=chat, stream=stream, stop="e", **kw)
    assert len(cut["logprobs"]) == cut["completion_tokens"] == len("lkjihgf")
    assert cut["logprobs"] == pytest.approx(r["logprobs"][:7], abs=1e-6)
    assert ask(client, chat=chat, stream=stream)["logprobs"] is None    # not asked for


def _stage_log_probs(srv: Any, model: str, prompt: str, max_tokens: int) -> list[float]:
    import tritonclient.grpc as grpc

    from optistop.serving.bls import stage_request
    from optistop.serving.tokenizers import PromptEncoder
    from optistop.spec import load_spec

    enc = PromptEncoder.for_spec(load_spec())
    arrays = stage_request(enc.encode(text=prompt).ids, max_tokens, enc.end_id, enc.pad_id)
    inputs = []
    for name, arr in arrays.items():
        inputs.append(grpc.InferInput(name, list(arr.shape), {"int32": "INT32", "bool": "BOOL"}[arr.dtype.name]))
        inputs[-1].set_data_from_numpy(arr)
    res = grpc.InferenceServerClient(srv.cfg.grpc_url).infer(model, inputs)
    n = int(res.as_numpy("sequence_length").reshape(-1)[0])
    return [float(x) for x in np.asarray(res.as_numpy("output_log_probs")).reshape(-1)[:n]]


T_MAX = load_spec(check_paths=False).max_temperature   # the highest the spec allows (cascade.max_temperature)
HARD = ["4821+3777=", "S:93715842=", "R:qwertyuiopasd=", "9034+8857=", "S:5550193=", "R:zxcvbnmlkj="]


def test_seed_reproduces_and_temperature_samples(client) -> None:
    def texts(**kw: Any) -> list[str]:
        return [client.completions.create(model="stage_small", prompt=p, max_tokens=16, **kw).choices[0].text
                for p in HARD]

    greedy = texts()
    assert texts(temperature=0) == greedy
    hot = texts(temperature=T_MAX, seed=11)
    assert texts(temperature=T_MAX, seed=11) == hot                      # the seed reproduces
    assert hot != greedy or texts(temperature=T_MAX, seed=12) != greedy  # and sampling differs somewhere
    # a vanishing top_p leaves only the most likely token: greedy whatever the temperature
    assert texts(temperature=T_MAX, top_p=1e-6, seed=11) == greedy
    # streaming samples the same tokens for the same seed (one engine, one generator per request)
    streamed = ["".join(c.choices[0].text for c in client.completions.create(
        model="stage_small", prompt=p, max_tokens=16, temperature=T_MAX, seed=11, stream=True) if c.choices)
        for p in HARD]
    assert streamed == hot


def test_a_list_of_prompts_gets_one_choice_each_in_order(client) -> None:
    prompts = [REVERSE, "12+35=", "R:hello=", "S:93715="]
    r = client.completions.create(model="cascade", prompt=prompts, max_tokens=16, logprobs=0)
    one = [client.completions.create(model="cascade", prompt=p, max_tokens=16) for p in prompts]
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [o.choices[0].text for o in one]
    assert (r.choices[0].text, r.choices[2].text) == (ANSWER, "olleh")
    assert r.usage.prompt_tokens == sum(o.usage.prompt_tokens for o in one)
    assert r.usage.completion_tokens == sum(len(c.logprobs.token_logprobs) for c in r.choices) \
        == sum(o.usage.completion_tokens for o in one)
    assert len(r.model_extra["cascade"]) == 4


REFUSED = [
    ({"n": 2}, "n", "must be 1"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "not supported"),
    ({"tool_choice": "auto"}, "tool_choice", "not supported"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "not supported"),
    ({"response_format": {"type": "json_object"}}, "response_format", "text"),
    ({"logit_bias": {"5": 10}}, "logit_bias", "not supported"),
    ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    ({"logprobs": True, "top_logprobs": 2}, "top_logprobs", "chosen token's log-prob only"),
    ({"temperature": 0.7}, "temperature", "cascade.max_temperature"),
    ({"temperature": 2.5}, "temperature", "valid range is 0.."),
    ({"top_p": 0}, "top_p", "valid range is (0, 1]"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("kw", "param", "says"), REFUSED, ids=[r[1] for r in REFUSED])
def test_unsupported_parameters_are_a_400_naming_them(client, kw: dict, param: str, says: str, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": "1+1="}],
                                       stream=stream, **kw)
    err = info.value
    assert err.status_code == 400 and err.param == param and says in err.message, err.message


@pytest.mark.parametrize(("kw", "param"), [({"logprobs": 2}, "logprobs"), ({"best_of": 2}, "best_of"),
                                           ({"suffix": "x"}, "suffix"), ({"prompt": [[1, 2]]}, "prompt"),
                                           ({"prompt": ["a=", "b="], "stream": True}, "stream")])
def test_completions_refusals(client, kw: dict, param: str) -> None:
    kw = {"prompt": "1+1=", **kw}
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="cascade", **kw)
    assert info.value.param == param


def test_unknown_fields_are_ignored_and_defaults_of_unsupported_ones_accepted(client) -> None:
    r = client.chat.completions.create(model="stage_large", messages=[{"role": "user", "content": REVERSE}],
                                       n=1, presence_penalty=0, frequency_penalty=0, logit_bias={}, user="u",
                                       response_format={"type": "text"}, extra_body={"no_such_field": True})
    assert r.choices[0].message.content == ANSWER
