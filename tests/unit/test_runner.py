"""The stage runner against an independent computation: a plain forward pass over prompt + output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optistop.serving.runner import StageModel
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
    from optistop.serving.runner import Sampling

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
