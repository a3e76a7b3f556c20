"""The CPU stage engine behind model_repository/stage_*/1/model.py: the tensorrt_llm tensor contract
(optistop.tensors.STAGE) over ``optistop.engines.runner.StageModel``.

Semantics match TensorRT-LLM with ``exclude_input_in_output: true``: ``output_ids`` holds only the
generated tokens, ``sequence_length`` their count (the end token excluded), ``output_log_probs`` one
log-prob per generated token. Shapes carry Triton's batch dimension and one beam: (1, beams=1, T).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path

import numpy as np

from optistop import tensors as T
from optistop.engines.runner import Generated, Sampling, StageModel
from optistop.serving.request import RequestError

StopWords = tuple[tuple[int, ...], ...]
Member = tuple[int, list[int], int, Sampling | None]   # (batch index, ids, max new tokens, sampling)


class StageEngine:
    """Faults and a real model's latency for tests are injected by a test-only wrapper
    (tests/repos/paced_engine.py), never here."""

    def __init__(self, checkpoint_dir: str | Path, threads: int = 1) -> None:
        self.checkpoint = Path(checkpoint_dir)
        self.model = StageModel(checkpoint_dir, threads=threads)

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], model_dir: Path) -> StageEngine:
        """The engine a stage model's config names: ``checkpoint_dir`` (relative to the model's
        directory) and ``torch_threads`` (default 1)."""
        return cls((model_dir / params["checkpoint_dir"]).resolve(), threads=int(params.get("torch_threads", "1")))

    def parse(self, inputs: Mapping[str, np.ndarray | None]) -> tuple[list[int], int, int, StopWords]:
        """(input ids, max new tokens, end id, stop words) of one request, or RequestError naming it
        (its sampling: ``sampling``)."""
        tokens, out_len = parse_prompt(inputs, vocab_size=self.model.model.config.vocab_size,
                                       max_positions=self.model.max_positions,
                                       limit=f"context {self.model.max_positions}")
        end = _int(inputs, T.END_ID, default=self.model.end_id)
        try:
            stop_words = T.parse_stop_words_list(inputs.get(T.STOP_WORDS_LIST))
        except ValueError as exc:
            raise RequestError(f"input {exc}") from None
        return tokens, out_len, end, stop_words

    @staticmethod
    def sampling(inputs: Mapping[str, np.ndarray | None]) -> Sampling | None:
        """A request's sampling, or None for greedy. As TensorRT-LLM: greedy when runtime_top_k is 1, when
        temperature is 0, or when neither runtime_top_k nor runtime_top_p asks for sampling (its
        defaults: temperature 1, top_k 0, top_p 0, random_seed 0)."""
        temp = _float(inputs, T.TEMPERATURE, 1.0)
        top_k = _int(inputs, T.RUNTIME_TOP_K, default=0)
        top_p = _float(inputs, T.RUNTIME_TOP_P, 0.0)
        seed = _int(inputs, T.RANDOM_SEED, default=0)
        if not (temp >= 0 and top_k >= 0 and 0 <= top_p <= 1):
            raise RequestError(f"inputs '{T.TEMPERATURE}' {temp:g}, '{T.RUNTIME_TOP_K}' {top_k}, "
                               f"'{T.RUNTIME_TOP_P}' {top_p:g}: valid are temperature >= 0, top_k >= 0, top_p in 0..1")
        if top_k == 1 or temp == 0 or (top_k == 0 and top_p == 0):
            return None
        return Sampling(temp, top_k, top_p if top_p > 0 else 1.0, seed or 0)

    def _group(self, batch: Sequence[Mapping[str, np.ndarray | None]], skip: Container[int] = ()
               ) -> tuple[dict[tuple[int, StopWords], list[Member]], dict[int, RequestError]]:
        """The batch's valid requests grouped by (end id, stop words), the ones that decode together, as
        (index, ids, max new tokens, sampling); and each bad request's error by index. The plain and the
        streaming run group alike."""
        groups: dict[tuple[int, StopWords], list[Member]] = {}
        errors: dict[int, RequestError] = {}
        for i, inputs in enumerate(batch):
            if i in skip:
                continue
            try:
                ids, out_len, end, stop_words = self.parse(inputs)
                sampling = self.sampling(inputs)
            except RequestError as exc:
                errors[i] = exc
                continue
            groups.setdefault((end, stop_words), []).append((i, ids, out_len, sampling))
        return groups, errors

    def run(self, batch: Sequence[Mapping[str, np.ndarray | None]]) -> list[dict[str, np.ndarray] | RequestError]:
        """Serve a batch; a bad request fails alone. Requests sharing an end id decode together."""
        results: list[dict[str, np.ndarray] | RequestError] = [RequestError("unprocessed")] * len(batch)
        # a cancellation (TensorRT-LLM's `stop`): this engine finishes every batch before it takes the
        # next, so nothing of that request is still running; acknowledge it
        stopped = {i for i, inputs in enumerate(batch) if _int(inputs, T.STOP, default=0)}
        for i in stopped:
            results[i] = to_tensors(Generated((), (), False))
        groups, errors = self._group(batch, skip=stopped)
        for i, exc in errors.items():
            results[i] = exc
        for (end, stop_words), members in groups.items():
            longest = max(m[2] for m in members)
            gens = self.model.generate_ids([m[1] for m in members], longest, end_id=end, stop_words=stop_words,
                                           sampling=[m[3] for m in members])
            for (i, _, out_len, _), g in zip(members, gens):
                results[i] = to_tensors(_truncate(g, out_len))
        return results


    def run_streaming(self, batch: Sequence[Mapping[str, np.ndarray | None]],
                      emit: Callable[[int, dict[str, np.ndarray]], bool]) -> list[RequestError | None]:
        """Serve a batch token by token: ``emit(i, tensors)`` sends request i the token just chosen
        (the tensorrt_llm streaming shape, one token per response) and returns False when that request
        was cancelled, which stops its decoding. Returns per request None (done) or its RequestError;
        the caller sends each request's final flag."""
        results: list[RequestError | None] = [None] * len(batch)
        groups, errors = self._group(batch)
        for i, exc in errors.items():
            results[i] = exc
        for (end, stop_words), members in groups.items():
            sent = [0] * len(members)

            def on_token(row: int, token: int, logprob: float, members=members, sent=sent) -> bool:
                i, _, out_len, _ = members[row]
                if sent[row] >= out_len:   # decoded past its own budget (batched with a longer one)
                    return False
                sent[row] += 1
                return emit(i, to_tensors(Generated((token,), (logprob,), False)))

            self.model.generate_ids([m[1] for m in members], max(m[2] for m in members), end_id=end,
                                    stop_words=stop_words, on_token=on_token, sampling=[m[3] for m in members])
        return results


def _truncate(g: Generated, n: int) -> Generated:
    """Cut a sequence decoded past its own budget (batched with a longer one) back to ``n`` tokens.
    Reaching ``n`` tokens means no end token came within the budget: that is hitting max tokens."""
    if len(g.token_ids) >= n:
        return Generated(g.token_ids[:n], g.logprobs[:n], True)
    return g


def to_tensors(g: Generated) -> dict[str, np.ndarray]:
    n = len(g.token_ids)
    return {
        T.OUTPUT_IDS: np.asarray(g.token_ids, dtype=np.int32).reshape(1, 1, n),
        T.SEQUENCE_LENGTH: np.asarray([[n]], dtype=np.int32),
        T.CUM_LOG_PROBS: np.asarray([[g.cum_logprob]], dtype=np.float32),
        T.OUTPUT_LOG_PROBS: np.asarray(g.logprobs, dtype=np.float32).reshape(1, 1, n),
    }


def _one(inputs: Mapping[str, np.ndarray | None], name: str) -> np.generic | None:
    """An optional per-request scalar input's value (None when not sent), or RequestError naming it."""
    arr = inputs.get(name)
    if arr is None:
        return None
    arr = np.asarray(arr).reshape(-1)
    if arr.size != 1:
        raise RequestError(f"input '{name}' must hold one value per request, got {arr.size}")
    return arr[0]


def _float(inputs: Mapping[str, np.ndarray | None], name: str, default: float) -> float:
    value = _one(inputs, name)
    return default if value is None else float(value)


def parse_prompt(inputs: Mapping[str, np.ndarray | None], *, vocab_size: int, max_positions: int,
                 limit: str) -> tuple[list[int], int]:
    """(prompt token ids, max new tokens) of one stage-contract request, or RequestError naming the bad
    input and its valid range; shared by every stage engine so they check requests alike. ``limit``
    names the context bound in the message ("context 512", "max_seq_len 4096")."""
    ids = inputs.get(T.INPUT_IDS)
    if ids is None:
        raise RequestError(f"missing required input '{T.INPUT_IDS}' (INT32, shape [-1])")
    ids = np.asarray(ids).reshape(-1)
    n = _int(inputs, T.INPUT_LENGTHS, default=len(ids))
    assert n is not None
    if not 1 <= n <= len(ids):
        raise RequestError(f"input '{T.INPUT_LENGTHS}' is {n}; valid range is 1..{len(ids)} "
                           f"(the length of '{T.INPUT_IDS}')")
    tokens = [int(t) for t in ids[:n]]
    if min(tokens) < 0 or max(tokens) >= vocab_size:
        raise RequestError(f"input '{T.INPUT_IDS}' holds token ids outside 0..{vocab_size - 1}")
    out_len = _int(inputs, T.REQUEST_OUTPUT_LEN)
    if out_len is None:
        raise RequestError(f"missing required input '{T.REQUEST_OUTPUT_LEN}' (INT32, shape [1])")
    room = max_positions - n
    if not 1 <= out_len <= room:
        raise RequestError(f"input '{T.REQUEST_OUTPUT_LEN}' is {out_len}; with {n} input tokens the "
                           f"valid range is 1..{room} ({limit})")
    return tokens, out_len


def _int(inputs: Mapping[str, np.ndarray | None], name: str, default: int | None = None) -> int | None:
    value = _one(inputs, name)
    return default if value is None else int(value)
