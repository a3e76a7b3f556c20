"""Bad input to the cascade over a real server: a per-request INVALID_ARG error naming the input and the
valid values, no traceback, and a concurrent good request still succeeds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from optistop.client.cascade import ask, build_inputs, make_client

GOOD = "12+35="

CASES = [
    # (id, inputs kwargs, substrings the message must contain)
    ("empty prompt", dict(prompt=""), ["text_input", "empty"]),
    ("blank prompt", dict(prompt="   "), ["text_input", "empty"]),
    ("too long", dict(prompt="1" * 60 + "+1="), ["text_input", "tokens", "context of 64"]),
    ("not utf-8", dict(prompt=b"\xff\xfe12+3="), ["text_input", "UTF-8"]),
    ("max_tokens 0", dict(prompt=GOOD, max_tokens=0), ["max_tokens", "1..32"]),
    ("max_tokens big", dict(prompt=GOOD, max_tokens=33), ["max_tokens", "1..32"]),
    ("lambda negative", dict(prompt=GOOD, lam=-1.0), ["lambda", ">= 0"]),
    ("lambda nan", dict(prompt=GOOD, lam=float("nan")), ["lambda", "finite"]),
    ("lambda inf", dict(prompt=GOOD, lam=float("inf")), ["lambda", "finite"]),
    ("unknown policy", dict(prompt=GOOD, policy="greedy"), ["policy", "optimal", "paper", "fixed:0..2"]),
    ("fixed out of range", dict(prompt=GOOD, policy="fixed:3"), ["policy", "fixed:3", "0..2"]),
    ("messages not a list", dict(prompt=[]), ["messages", "non-empty JSON list"]),
    ("messages bad role", dict(prompt=[{"role": "robot", "content": "1+1="}]), ["messages", "role", "user"]),
    ("messages end with assistant", dict(prompt=[{"role": "user", "content": "1+1="},
                                                 {"role": "assistant", "content": "2"}]), ["messages", "last"]),
]


def _infer_raw(url: str, **kw):
    client = make_client(url, "grpc")
    return client.infer("cascade", build_inputs("grpc", **kw))


@pytest.mark.parametrize(("case", "kw", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_alone_with_a_clear_message(server, case: str, kw: dict, needles: list[str]) -> None:
    url = server.cfg.grpc_url
    with ThreadPoolExecutor(max_workers=2) as pool:
        bad = pool.submit(_infer_raw, url, **kw)
        good = pool.submit(ask, make_client(url, "grpc"), "grpc", GOOD)
        with pytest.raises(InferenceServerException) as info:
            bad.result()
        assert good.result().text  # the concurrent good request was served
    err = info.value
    assert err.status() == "StatusCode.INVALID_ARGUMENT", err
    for needle in needles:
        assert needle in err.message(), (needle, err.message())
    assert "Traceback" not in err.message()


def test_missing_text_input_is_rejected_naming_it(server) -> None:
    client = make_client(server.cfg.grpc_url, "grpc")
    inp = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[4]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("cascade", [inp])
    assert "text_input" in info.value.message() and "messages" in info.value.message()
    assert ask(client, "grpc", GOOD).text  # and the server goes on


def test_messages_that_are_not_json_are_rejected(server) -> None:
    client = make_client(server.cfg.grpc_url, "grpc")
    inp = grpcclient.InferInput("messages", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"[{role: user}"]], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        client.infer("cascade", [inp])
    assert "messages" in info.value.message() and "not valid JSON" in info.value.message()


def test_bad_and_good_requests_in_one_batch(server) -> None:
    """Many concurrent requests land in the same dynamic batch; only the bad ones fail."""
    url = server.cfg.grpc_url
    kws = [dict(prompt=GOOD), dict(prompt=""), dict(prompt="9+9="), dict(prompt=GOOD, policy="x")] * 4
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(_infer_raw, url, **kw) for kw in kws]
    for kw, fut in zip(kws, futures):
        bad = kw["prompt"] == "" or "policy" in kw
        if bad:
            with pytest.raises(InferenceServerException):
                fut.result()
        else:
            assert fut.result().as_numpy("text_output").reshape(-1)[0]


def test_client_piped_into_head_stops_quietly(server, tmp_path) -> None:
    """`optistop-client --file F | head -1`: the reader closes the pipe after one line; the client stops
    without a traceback (it printed BrokenPipeError's before), with the shell's SIGPIPE status."""
    import subprocess
    import sys
    from pathlib import Path

    f = tmp_path / "prompts.txt"
    f.write_text("".join(f"{i}+{i}=\n" for i in range(300)))   # ~300 lines of output: more than a pipe holds
    client = Path(sys.executable).with_name("optistop-client")
    p = subprocess.run(f"'{client}' --url {server.cfg.grpc_url} --file {f} | head -1; "
                       f"echo \"status ${{PIPESTATUS[0]}}\" >&2", shell=True, executable="/bin/bash",
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.startswith("0+0= -> ")
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.stderr.strip().endswith("status 141"), p.stderr
