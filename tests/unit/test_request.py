"""The prompt byte cap follows the spec's context, so a GPU profile's long prompts are not cut at 4 KiB."""

from __future__ import annotations

import numpy as np
import pytest

from optistop.serving.request import RequestError, max_prompt_bytes, parse_request
from optistop.serving.tokenizers import Prompt
from optistop.spec import DEFAULT_SPEC, load_spec
from tests.unit.test_policy import synthetic_book

QWEN = DEFAULT_SPEC.parent / "build" / "qwen2.5-trtllm.toml"


def words(text: str | None = None, messages: list | None = None) -> Prompt:
    """A stand-in tokenizer: about four bytes per token, like a BPE vocabulary on English."""
    assert text is not None
    return Prompt(tuple(range(len(text) // 4 + 1)), text, text)


BOOK = synthetic_book()


def request(prompt: str) -> dict[str, np.ndarray]:
    return {"text_input": np.array([[prompt.encode()]], dtype=object)}


def test_a_3000_token_prompt_fits_the_qwen_profile() -> None:
    spec = load_spec(QWEN, check_paths=False)
    prompt = "lorem ipsum " * 1000                        # 12,000 bytes, about 3,000 tokens of 4,096
    assert parse_request(request(prompt), spec, words, BOOK).input_ids
    assert max_prompt_bytes(spec) >= 4 * spec.max_context_tokens


def test_the_byte_cap_scales_with_the_context_and_is_checked_before_tokenizing() -> None:
    tiny = load_spec(check_paths=False)
    assert max_prompt_bytes(tiny) < max_prompt_bytes(load_spec(QWEN, check_paths=False))

    def never(text: str | None = None, messages: list | None = None) -> Prompt:
        raise AssertionError("tokenized a prompt over the byte cap")

    with pytest.raises(RequestError, match=rf"at most {max_prompt_bytes(tiny)} allowed \(64 tokens"):
        parse_request(request("1" * (max_prompt_bytes(tiny) + 1)), tiny, never, BOOK)


@pytest.mark.parametrize("busy", ["time.sleep(60)",
                                  # holds the GIL in C for minutes (catastrophic backtracking), as a stub
                                  # waiting in C++ on a dead server's response does: the thread cannot run
                                  "import re; re.match(r'(a+)+$', 'a' * 40 + 'b')"])
def test_a_backend_process_ends_when_its_server_dies(busy: str) -> None:
    """exit_with_parent: kill -9 of the parent (tritonserver) ends the child (a backend stub) within a
    few poll periods, though the child itself is asleep or holds the GIL; while the parent lives the
    child stays."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from optistop.server.embedded import _alive

    # "armed" once the watchers run: killed before that (a slow import under load), the child would read
    # its new parent as the one to watch and the test would fail for a reason of its own
    child = ("from optistop.serving.triton_glue import exit_with_parent; import time; "
             f"exit_with_parent(0.05); print('armed', flush=True); {busy}")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
                               "print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "armed"
    running = lambda: _alive(pid)  # noqa: E731 - a zombie (exited, unreaped) does not count
    try:
        time.sleep(0.5)
        assert running(), "the child must live while its parent does"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(), "the child outlived its parent"
    finally:
        if running():
            os.kill(pid, signal.SIGKILL)
