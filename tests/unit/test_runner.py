"""The stage runner against an independent computation: a plain forward pass over prompt + output."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from optistop.engines.runner import StageModel
from optistop.tiny.tasks import generate_split


@pytest.fixture(scope="module")
def small(tiny_dir: Path) -> StageModel:
    return StageModel(tiny_dir / "small")


def test_logprobs_equal_manual_log_softmax(small: StageModel) -> None:
    prompts = [it.prompt for it in generate_split("test", 1)]
    gens = small.generate(prompts, max_new_tokens=16)
    for g in gens:
        ids = small.encode(g.prompt)
        gen = list(g.generated.token_ids)
        # One forward pass over prompt + generated tokens (+ end token when it stopped).
        full = ids + gen + ([] if g.generated.hit_max_tokens else [small.end_id])
        with torch.inference_mode():
            logits = small.model(input_ids=torch.tensor([full])).logits[0]
        logsm = torch.log_softmax(logits.float(), dim=-1)
        expected = [float(logsm[len(ids) - 1 + j, tok]) for j, tok in enumerate(gen)]
        assert g.generated.logprobs == pytest.approx(expected, abs=1e-4)
        # Greedy: every chosen token is the argmax of its position.
        for j, tok in enumerate(full[len(ids):]):
            assert int(logsm[len(ids) - 1 + j].argmax()) == tok
        assert g.generated.cum_logprob == pytest.approx(sum(expected), abs=1e-3)
        assert g.text == small.decode(gen)


def test_batched_equals_one_at_a_time(small: StageModel) -> None:
    prompts = [it.prompt for it in generate_split("val", 2)]
    batched = small.generate(prompts, 16)
    single = [small.generate([p], 16)[0] for p in prompts]
    assert [b.text for b in batched] == [s.text for s in single]
    for b, s in zip(batched, single):
        assert b.generated.logprobs == pytest.approx(s.generated.logprobs, abs=1e-4)


def test_max_tokens_and_context_limits(small: StageModel) -> None:
    g = small.generate(["S:98765432109="], max_new_tokens=2)[0]
    assert len(g.generated.token_ids) == 2 and g.generated.hit_max_tokens
    with pytest.raises(ValueError, match="exceeds the model context of 64 positions"):
        small.generate(["1" * 60 + "+1="], max_new_tokens=16)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        small.generate(["1+1="], max_new_tokens=0)


def test_sampling_is_seeded_per_row_and_reports_the_models_own_log_probs(small: StageModel) -> None:
    """Sampled rows draw from softmax(logits / T) with their own seeded generator: the same seed gives the
    same tokens whatever the batch mates; another seed or greedy differs somewhere; log-probs stay the
    model's (temperature 1), checked against one forward pass."""
    from optistop.engines.runner import Sampling

    prompts = [small.encode(it.prompt) for it in generate_split("test", 8)]
    hot = Sampling(temperature=1.5, seed=7)
    a = small.generate_ids(prompts, 12, sampling=[hot] * len(prompts))
    b = small.generate_ids(prompts[:1] + prompts, 12, sampling=[None] + [hot] * len(prompts))[1:]
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    greedy = small.generate_ids(prompts, 12)
    other = small.generate_ids(prompts, 12, sampling=[Sampling(temperature=1.5, seed=8)] * len(prompts))
    assert [g.token_ids for g in a] != [g.token_ids for g in greedy]
    assert [g.token_ids for g in a] != [g.token_ids for g in other]
    g, ids = a[0], prompts[0]
    full = list(ids) + list(g.token_ids)
    with torch.inference_mode():
        logsm = torch.log_softmax(small.model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    assert g.logprobs == pytest.approx([float(logsm[len(ids) - 1 + j, t]) for j, t in enumerate(g.token_ids)],
                                       abs=1e-4)
    # top_k 1 and a vanishing top_p leave only the argmax: greedy again
    narrow = [Sampling(temperature=1.5, top_k=1, seed=7)] * len(prompts) + \
        [Sampling(temperature=1.5, top_p=1e-6, seed=7)] * len(prompts)
    assert [x.token_ids for x in small.generate_ids(prompts * 2, 12, sampling=narrow)] == \
        [x.token_ids for x in greedy] * 2


class _Spy:
    """The model, recording the shape of each call's logits; ``honour_keep=False`` drops ``logits_to_keep``
    (every position projected onto the vocabulary: the runner before it kept the last position only)."""

    def __init__(self, model, honour_keep: bool) -> None:
        self.model, self.honour, self.shapes = model, honour_keep, []

    def __call__(self, *args, logits_to_keep: int = 0, **kw):
        out = self.model(*args, logits_to_keep=logits_to_keep if self.honour else 0, **kw)
        self.shapes.append(tuple(out.logits.shape))
        return out


def _parity(sm: StageModel, batch: list[list[int]], new: int) -> None:
    """generate_ids as it is against the same loop projecting every position: identical ids, log-probs
    equal up to float32 rounding (one row through the vocabulary matmul instead of T rows)."""
    real, vocab = sm.model, sm.model.config.vocab_size
    try:
        sm.model = before_spy = _Spy(real, honour_keep=False)
        before = sm.generate_ids(batch, new)
        sm.model = after_spy = _Spy(real, honour_keep=True)
        after = sm.generate_ids(batch, new)
    finally:
        sm.model = real
    assert before_spy.shapes[0] == (len(batch), max(map(len, batch)), vocab)
    assert after_spy.shapes[0] == (len(batch), 1, vocab)       # the prefill projected one position
    assert len(after_spy.shapes) == len(before_spy.shapes) >= 2
    assert {s[1] for s in after_spy.shapes} == {1}
    for b, a in zip(before, after, strict=True):
        assert a.token_ids == b.token_ids and a.hit_max_tokens == b.hit_max_tokens
        assert len(a.logprobs) == len(a.token_ids) > 0
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_prefill_keeps_the_last_logits_outputs_unchanged_tiny_and_chat(small: StageModel, tiny_dir: Path) -> None:
    _parity(small, [small.encode(it.prompt) for it in generate_split("test", 1)[:4]], 16)
    from optistop.serving.tokenizers import PromptEncoder
    from optistop.spec import load_spec
    from optistop.tiny.chat import generate_split as chat_split

    spec = load_spec(tiny_dir.parents[1] / "chat.toml")
    enc = PromptEncoder.for_spec(spec)
    chat = StageModel(spec.stages[1].checkpoint)
    _parity(chat, [list(enc.encode(text=it.prompt).ids) for it in chat_split("test", 1, seed=3)[:3]], 24)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> StageModel:
    from optistop.tiny.standin import TEST_SHAPE, build_standin

    return StageModel(build_standin(tmp_path_factory.mktemp("standin") / "m", layers=2, **TEST_SHAPE))


def test_large_vocabulary_standin(standin: StageModel, tiny_dir: Path) -> None:
    """A real vocabulary size (Qwen2.5's 151,936) with the chat tokenizer: log-probs over all of it, one
    per generated token, and the prefill projecting one position; built the same way twice, the same."""
    from optistop.tiny.standin import QWEN25_VOCAB, TEST_SHAPE, standin_config

    assert standin.model.config.vocab_size == QWEN25_VOCAB == 151_936
    assert standin.model.get_input_embeddings().weight.shape == (QWEN25_VOCAB, TEST_SHAPE["hidden_size"])
    ids = standin.encode("Write 4071 in words.")
    assert 0 < len(ids) and max(ids) < 459       # the chat tokenizer's ids: a prefix of the vocabulary
    _parity(standin, [ids, ids[:5]], 6)
    g = standin.generate_ids([ids], 6, end_id=-1)[0]
    assert len(g.token_ids) == len(g.logprobs) == 6 and g.hit_max_tokens
    assert all(-math.log(QWEN25_VOCAB) - 5 < lp <= 0 for lp in g.logprobs)   # untrained: near uniform
    cfg = standin_config(2, **TEST_SHAPE)
    assert (cfg.num_hidden_layers, cfg.tie_word_embeddings) == (2, True)


def test_standin_is_deterministic(standin: StageModel, tmp_path: Path) -> None:
    import torch

    from optistop.tiny.standin import TEST_SHAPE, build_standin

    again = StageModel(build_standin(tmp_path / "again", layers=2, **TEST_SHAPE))
    for a, b in zip(standin.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = StageModel(build_standin(tmp_path / "seed1", layers=2, seed=1, **TEST_SHAPE))
    assert not torch.equal(other.model.get_input_embeddings().weight, again.model.get_input_embeddings().weight)
