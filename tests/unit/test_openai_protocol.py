"""optistop.frontend.protocol: OpenAI bodies -> cascade inputs, and every rejection in OpenAI's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optistop import tensors as T
from optistop.frontend import protocol as P
from optistop.serving.tokenizers import Prompt
from optistop.spec import load_spec
from tests.unit.test_policy import synthetic_book

SPEC = load_spec(check_paths=False)


def encode(text: str | None = None, messages: list | None = None) -> Prompt:
    """One token per character plus a BOS, like the tiny tokenizer (no chat template: the last user turn)."""
    text = text if messages is None else [m["content"] for m in messages if m["role"] == "user"][-1]
    return Prompt(tuple([1] + [ord(c) % 50 + 2 for c in text]), text, text)


BOOK = synthetic_book()


def call(body: dict, chat: bool = False) -> P.Call:
    return P.parse_call(body, SPEC, encode, BOOK, chat=chat)


def rejected(body: dict, chat: bool = False) -> P.ApiError:
    with pytest.raises(P.ApiError) as info:
        call(body, chat)
    return info.value


def test_a_stage_model_is_the_cascade_fixed_to_that_stage() -> None:
    c = call({"model": "stage_medium", "prompt": "12+35=", "max_tokens": 8})
    assert c.inputs[T.POLICY][0, 0] == b"fixed:1" and c.inputs[T.MAX_TOKENS].dtype == np.int32
    assert (c.max_tokens, c.prompt_tokens, c.stream) == (8, 7, False)


def test_lambda_policy_and_echo_become_cascade_inputs() -> None:
    c = call({"model": "cascade", "prompt": ["R:ab="], "lambda": 4, "policy": "paper", "echo": True})
    assert c.inputs[T.LAMBDA].dtype == np.float32 and c.inputs[T.LAMBDA][0, 0] == 4.0
    assert c.inputs[T.POLICY][0, 0] == b"paper" and not c.inputs[T.EXCLUDE_INPUT_IN_OUTPUT][0, 0]
    assert c.max_tokens == SPEC.max_tokens_default


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"model": "gpt-4", "prompt": "1+1="}, 404, "model", "model_not_found"),
    ({"model": "cascade", "prompt": 3}, 400, "prompt", None),
    ({"model": "cascade", "prompt": "1+1=", "n": 2}, 400, "n", "unsupported_parameter"),
    ({"model": "cascade", "prompt": "1+1=", "lambda": -1}, 400, "lambda", None),
    ({"model": "cascade", "prompt": "1+1=", "lambda": "high"}, 400, "lambda", None),
    ({"model": "cascade", "prompt": "1+1=", "lambda": True}, 400, "lambda", None),
    ({"model": "cascade", "prompt": "1+1=", "policy": "best"}, 400, "policy", None),
    ({"model": "cascade", "prompt": "1+1=", "max_tokens": 999}, 400, "max_tokens", None),
    ({"model": "cascade", "prompt": "   "}, 400, "prompt", None),
    ({"model": "cascade", "prompt": "9" * 60}, 400, "prompt", "context_length_exceeded"),
    ({"model": "stage_large", "prompt": "1+1=", "policy": "optimal"}, 400, "policy", None),
    ({"model": "cascade", "prompt": "1+1=", "stream": "yes"}, 400, "stream", None),
])
def test_rejections_name_the_field(body: dict, status: int, param: str, code: str | None) -> None:
    err = rejected(body)
    assert (err.status, err.param, err.code) == (status, param, code)
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_chat_messages_go_to_the_cascade_as_json() -> None:
    """The cascade applies the family's chat template itself, once: the front end forwards the messages."""
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="},
            {"role": "assistant", "content": "2"}, {"role": "user", "content": "R:abc="}]
    c = call({"model": "cascade", "messages": msgs}, chat=True)
    assert json.loads(c.inputs[T.MESSAGES][0, 0].decode()) == msgs and T.TEXT_INPUT not in c.inputs
    assert c.prompt_tokens == 1 + len("R:abc=")
    assert rejected({"model": "cascade", "messages": []}, chat=True).param == "messages"
    assert rejected({"model": "cascade", "messages": [{"role": "system", "content": "x"}]}, chat=True).param \
        == "messages"
    assert rejected({"model": "cascade", "messages": [{"role": "user", "content": "9" * 60}]},
                    chat=True).param == "messages"


def test_bad_json_is_a_400() -> None:
    for raw in (b"{", b"[1, 2]", b"\xff"):
        with pytest.raises(P.ApiError) as info:
            P.parse_body(raw)
        assert info.value.status == 400


def test_chunks_and_completion_have_openais_shape() -> None:
    c = call({"model": "cascade", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 2}, chat=True)
    first = P.chunk(c, "4", first=True)
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"] == {"role": "assistant",
                                                                                            "content": "4"}
    assert P.chunk(c, None, usage_=P.usage(c, 2))["choices"] == []
    body = P.completion(c, [P.Answer("42", "length", [7, 8], [-0.1, -0.2], {"stage": 0})], str)
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["total_tokens"] == c.prompt_tokens + 2
    assert body["choices"][0]["logprobs"] is None and body["cascade"] == {"stage": 0}
    assert P.sse(first).startswith(b"data: {") and json.loads(P.sse(first)[6:]) == first
    assert P.sse("[DONE]") == b"data: [DONE]\n\n"


def test_metadata_turns_nan_into_null() -> None:
    out = T.CASCADE.cast_outputs({
        T.TEXT_OUTPUT: [["x"]], T.STAGE_INDEX: [[2]], T.STAGE_MODEL: [["stage_large"]],
        T.CONFIDENCES: [[0.1, float("nan")]], T.THRESHOLDS: [[0.5, float("nan")]], T.COST: [[11.0]],
        T.STAGE_LATENCY_MS: [[3.0, 4.0]], T.STAGES_RUN: [[0, 2]], T.DEGRADED: [[True]],
        T.DEGRADED_REASON: [["predictor failed"]], T.CONTROLLER_MS: [[1.5]]})
    meta = P.metadata(out)
    assert meta["confidences"][1] is None and meta["stages_run"] == [0, 2] and meta["degraded"]
    assert json.dumps(meta)   # plain JSON, no NaN


def answer(text: str, ids: list[int], lps: list[float], reason: str = "stop") -> P.Answer:
    return P.Answer(text, reason, ids, lps, {"stage": 0})


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"), ({"best_of": 3}, "best_of"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"), ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"5": 10}}, "logit_bias"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"suffix": "x"}, "suffix"), ({"audio": {"voice": "x"}}, "audio"), ({"modalities": ["audio"]}, "modalities"),
])
def test_known_but_unsupported_parameters_are_refused_by_name(extra: dict, param: str) -> None:
    err = rejected({"model": "cascade", "prompt": "1+1=", **extra})
    assert (err.status, err.param, err.code) == (400, param, "unsupported_parameter")
    assert err.message.startswith(f"'{param}'") and "got" in err.message


@pytest.mark.parametrize("extra", [
    {"n": 1}, {"tools": []}, {"tool_choice": "none"}, {"response_format": {"type": "text"}}, {"logit_bias": {}},
    {"presence_penalty": 0}, {"frequency_penalty": 0.0}, {"top_logprobs": 0}, {"n": None},
    {"some_future_field": 1}, {"user": "u1"}])
def test_defaults_of_unsupported_parameters_and_unknown_fields_are_accepted(extra: dict) -> None:
    assert call({"model": "cascade", "prompt": "1+1=", **extra}).prompt == "1+1="


def test_stop_and_sampling_become_cascade_inputs_checked_by_the_cascade() -> None:
    c = call({"model": "cascade", "prompt": "1+1=", "stop": ["\n", "b"], "temperature": 0.5, "top_p": 0.9,
              "seed": -1})
    assert c.inputs[T.STOP_WORDS].tolist() == [[b"\n", b"b"]] and c.inputs[T.TEMPERATURE].dtype == np.float32
    assert c.inputs[T.RANDOM_SEED].dtype == np.uint64 and int(c.inputs[T.RANDOM_SEED][0, 0]) == 2**64 - 1
    assert call({"model": "cascade", "prompt": "1+1=", "stop": "x"}).inputs[T.STOP_WORDS].tolist() == [[b"x"]]
    assert T.STOP_WORDS not in call({"model": "cascade", "prompt": "1+1=", "stop": []}).inputs
    for extra, param in (({"stop": ["a"] * 5}, "stop"), ({"stop": [""]}, "stop"), ({"stop": 3}, "stop"),
                         ({"temperature": 2.5}, "temperature"), ({"temperature": -0.1}, "temperature"),
                         ({"temperature": SPEC.max_temperature + 0.01}, "temperature"),
                         ({"temperature": "hot"}, "temperature"), ({"top_p": 0}, "top_p"),
                         ({"top_p": 1.5}, "top_p"), ({"seed": 1.5}, "seed")):
        err = rejected({"model": "cascade", "prompt": "1+1=", **extra})
        assert (err.status, err.param) == (400, param), (extra, err.message)


def test_logprobs_in_openais_shape_per_endpoint() -> None:
    chat = call({"model": "cascade", "messages": [{"role": "user", "content": "R:ab="}], "logprobs": True,
                 "top_logprobs": 0}, chat=True)
    a = answer("ba", [5, 6], [-0.5, -0.25])
    body = P.completion(chat, [a], lambda t: "xy"[t - 5])
    content = body["choices"][0]["logprobs"]["content"]
    assert [(e["token"], e["logprob"], e["bytes"], e["top_logprobs"]) for e in content] == \
        [("x", -0.5, [120], []), ("y", -0.25, [121], [])]
    comp = call({"model": "cascade", "prompt": "R:ab=", "logprobs": 0})
    lp = P.completion(comp, [a], lambda t: ["b", "ca"][t - 5])["choices"][0]["logprobs"]
    assert lp == {"tokens": ["b", "ca"], "token_logprobs": [-0.5, -0.25], "top_logprobs": None, "text_offset": [0, 1]}
    assert rejected({"model": "cascade", "prompt": "1+1=", "logprobs": 2}).param == "logprobs"
    assert rejected({"model": "cascade", "prompt": "1+1=", "logprobs": 0, "echo": True}).param == "logprobs"
    assert rejected({"model": "cascade", "messages": [{"role": "user", "content": "1"}], "logprobs": 1},
                    chat=True).param == "logprobs"


def test_a_list_of_prompts_is_one_cascade_request_each_answered_in_order() -> None:
    c = call({"model": "cascade", "prompt": ["R:ab=", "1+1=", "R:abc="], "max_tokens": 4})
    assert [b.inputs[T.TEXT_INPUT][0, 0] for b in c.batch] == [b"R:ab=", b"1+1=", b"R:abc="]
    assert c.prompt_tokens == sum(1 + len(p) for p in ("R:ab=", "1+1=", "R:abc="))
    body = P.completion(c, [answer("ba", [1, 2], [0, 0]), answer("2", [3], [0]), answer("cba", [4, 5, 6], [0] * 3)],
                        str)
    assert [(ch["index"], ch["text"]) for ch in body["choices"]] == [(0, "ba"), (1, "2"), (2, "cba")]
    assert body["usage"]["completion_tokens"] == 6 and len(body["cascade"]) == 3
    assert call({"model": "cascade", "prompt": ["R:ab="]}).batch == []
    assert rejected({"model": "cascade", "prompt": ["a=", "b="], "stream": True}).param == "stream"
    assert rejected({"model": "cascade", "prompt": [1, 2, 3]}).param == "prompt"
    assert rejected({"model": "cascade", "prompt": ["a=", "   "]}).param == "prompt"


def test_the_cascade_request_carries_stop_ids_and_a_seed_for_every_stage() -> None:
    from optistop.cascade import GREEDY
    from optistop.serving.request import parse_request

    c = call({"model": "cascade", "prompt": "1+1=", "stop": ["ab", "c"], "temperature": SPEC.max_temperature})
    req = parse_request(c.inputs, SPEC, encode, BOOK, token_ids=lambda w: [ord(ch) for ch in w])
    assert req.stop == ("ab", "c") and req.options.stop_ids == ((97, 98), (99,))
    assert (req.options.temperature, req.options.top_p) == (pytest.approx(SPEC.max_temperature), 1.0)
    # no seed: a fresh one per request (repeated requests differ, as OpenAI's); a seed is kept
    assert len({parse_request(c.inputs, SPEC, encode, BOOK).options.seed for _ in range(4)}) == 4
    seeded = call({"model": "cascade", "prompt": "1+1=", "temperature": 0.2, "seed": 9})
    assert parse_request(seeded.inputs, SPEC, encode, BOOK).options.seed == 9
    assert parse_request(call({"model": "cascade", "prompt": "1+1="}).inputs, SPEC, encode, BOOK).options == GREEDY
