"""Feature extraction: hand-worked values for every slot group, bad inputs, determinism, one shared function."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optistop import features as F
from optistop.features import SLOT_INDEX as S
from optistop.tensors import N_FEATURES


def slot(v: np.ndarray, name: str) -> float:
    return float(v[S[name]])


def test_layout_is_documented_and_fixed() -> None:
    assert F.N_FEATURES == N_FEATURES == 64 == len(F.SLOT_NAMES) == len(F.SLOTS)
    assert F.SLOT_NAMES[:9] == ("p_chars", "p_words", "p_question_marks", "p_exclamation_marks",
                                "p_lexical_diversity", "stage_0", "stage_1", "stage_2", "stage_3")
    assert F.STAGE_SLOTS == (5, 6, 7, 8) and F.EX_ANTE_SLOT == 29
    assert F.OUTPUT_SLOTS == tuple(range(30, 62))
    assert all(desc for _, desc in F.SLOTS)
    assert isinstance(F.FEATURE_VERSION, int)


def test_paper_b2_slots_hand_worked() -> None:
    # "Go go stop?!": 12 chars, words ["Go", "go", "stop?!"], lower-cased unique {"go", "stop?!"}.
    v = F.ex_ante_features("Go go stop?!", stage=1, n_stages=3)
    assert v.dtype == np.float32 and v.shape == (64,)
    assert slot(v, "p_chars") == pytest.approx(12 / 100)
    assert slot(v, "p_words") == pytest.approx(3 / 20)
    assert slot(v, "p_question_marks") == pytest.approx(1 / 5)
    assert slot(v, "p_exclamation_marks") == pytest.approx(1 / 5)
    assert slot(v, "p_lexical_diversity") == pytest.approx(2 / 3)
    assert list(v[5:9]) == [0.0, 1.0, 0.0, 0.0]


def test_entropy_and_token_ratio_hand_worked() -> None:
    v = F.ex_ante_features("Go go stop?!", stage=0, n_stages=3)
    # characters: o x3, ' ' x2, and G g s t p ? ! once each (12 in all)
    h = 0.25 * 2 + (2 / 12) * math.log2(6) + 7 * (1 / 12) * math.log2(12)
    assert slot(v, "p_char_entropy") == pytest.approx(h / 5, abs=1e-6)
    assert slot(v, "p_word_entropy") == pytest.approx(math.log2(3) / 5, abs=1e-6)  # 3 distinct words
    assert slot(v, "p_token_length_ratio") == pytest.approx(5 / 12)  # Go, go, stop, ?, !


def test_prompt_complexity_hand_worked() -> None:
    v = F.ex_ante_features("Go go stop?!", stage=0, n_stages=3)
    expect = {"p_log_chars": math.log(13) / 8, "p_digit_frac": 0.0, "p_alpha_frac": 8 / 12,
              "p_space_frac": 2 / 12, "p_symbol_frac": 2 / 12, "p_upper_frac": 1 / 12, "p_nonascii_frac": 0.0,
              "p_longest_digit_run": 0.0, "p_longest_alpha_run": 0.4, "p_numbers": 0.0,
              "p_mean_word_len": (10 / 3) / 10, "p_distinct_char_frac": 9 / 12, "p_lines": 0.1,
              "p_max_char_share": 3 / 12}
    for name, value in expect.items():
        assert slot(v, name) == pytest.approx(value, abs=1e-6), name
    w = F.ex_ante_features("4821+377=", stage=0, n_stages=3)
    assert slot(w, "p_digit_frac") == pytest.approx(7 / 9)
    assert slot(w, "p_longest_digit_run") == pytest.approx(0.4)
    assert slot(w, "p_numbers") == pytest.approx(2 / 5)
    assert slot(w, "p_symbol_frac") == pytest.approx(2 / 9)


def test_stage_position_and_mode_slots() -> None:
    first = F.stage_features("1+1=", "2", [-0.1], False, 0, 3)
    last = F.ex_ante_features("1+1=", 2, 3)
    assert list(first[5:9]) == [1, 0, 0, 0] and list(last[5:9]) == [0, 0, 1, 0]
    assert (slot(first, "stage_frac"), slot(last, "stage_frac")) == (0.0, 1.0)
    assert slot(first, "n_stages") == slot(last, "n_stages") == 0.75
    assert (slot(first, "is_last_stage"), slot(last, "is_last_stage")) == (0.0, 1.0)
    assert (slot(first, "ex_ante"), slot(last, "ex_ante")) == (0.0, 1.0)
    single = F.ex_ante_features("x", 0, 1)
    assert slot(single, "stage_frac") == 0.0 and slot(single, "is_last_stage") == 1.0


def test_ex_ante_is_post_hoc_with_output_slots_zeroed() -> None:
    post = F.stage_features("R:abc=", "cba", [-0.2, -0.1, -0.01], True, 1, 3)
    ante = F.ex_ante_features("R:abc=", 1, 3)
    prompt = list(range(F.EX_ANTE_SLOT))
    np.testing.assert_array_equal(post[prompt], ante[prompt])
    assert not ante[list(F.OUTPUT_SLOTS)].any() and not ante[62:].any()
    assert post[list(F.OUTPUT_SLOTS)].any()


def test_logprob_slots_hand_worked() -> None:
    lp = [math.log(0.8), math.log(0.25)]
    v = F.stage_features("12+9=", "21 ", lp, False, 0, 3)
    mean = sum(lp) / 2
    expect = {
        "o_tokens": 2 / 32, "o_log_tokens": math.log(3) / 5, "o_hit_max_tokens": 0.0, "o_empty": 0.0,
        "o_no_logprobs": 0.0, "o_nan_logprob_frac": 0.0, "o_lp_mean": mean / 5, "o_lp_min": lp[1] / 5,
        "o_lp_max": lp[0] / 5, "o_lp_std": abs(lp[0] - lp[1]) / 2 / 5,
        "o_lp_q10": (lp[1] + 0.1 * (lp[0] - lp[1])) / 5, "o_lp_q50": mean / 5,
        "o_lp_q90": (lp[1] + 0.9 * (lp[0] - lp[1])) / 5, "o_lp_cum": math.log(0.2) / 20,
        "o_lp_first": lp[0] / 5, "o_lp_last": lp[1] / 5, "o_p_mean": 0.525, "o_p_min": 0.25, "o_p_seq": 0.2,
        "o_frac_p_below_half": 0.5, "o_frac_p_below_0.9": 1.0,
        "o_surprise_max": -math.log(-lp[1]) / 10, "o_surprise_mean": -math.log(-mean) / 10,
    }
    for name, value in expect.items():
        assert slot(v, name) == pytest.approx(value, abs=1e-6), name


def test_output_text_slots_hand_worked() -> None:
    v = F.stage_features("12+9=", "21 ", [-0.1, -0.1, -0.1], True, 0, 3)
    assert slot(v, "o_hit_max_tokens") == 1.0
    assert slot(v, "o_chars") == pytest.approx(3 / 32)
    assert slot(v, "o_length_ratio") == pytest.approx(2 / 5)       # "21" after strip, prompt of 5
    assert slot(v, "o_char_recall") == pytest.approx(2 / 3)        # '2', '1' in the prompt, ' ' not
    assert slot(v, "o_digit_frac") == pytest.approx(2 / 3)
    assert slot(v, "o_alpha_frac") == 0.0
    assert slot(v, "o_char_entropy") == pytest.approx(math.log2(3) / 5)
    assert slot(v, "o_repeat_bigram_frac") == 0.0
    loop = F.stage_features("R:ab=", "aaaa", [-0.1] * 4, True, 0, 3)
    assert slot(loop, "o_repeat_bigram_frac") == pytest.approx(2 / 3)  # aa, aa, aa: 1 distinct of 3


BAD_CASES = [
    ("", "", [], False),                                  # empty prompt and output
    ("1+1=", "", [], True),                               # empty output
    ("1+1=", "2", [float("nan")], False),                 # NaN log-prob
    ("1+1=", "2", [float("nan"), float("-inf"), float("inf"), -1e30], False),
    ("1+1=", "2", None, False),                           # no log-probs at all
    ("1+1=", "2", "not numbers", False),                  # garbage log-probs
    ("1+1=", "2", np.array([[-0.1, -0.2]], dtype=np.float32), False),   # (beams, tokens) array
    (b"\xff\xfe+\x80=".decode("utf-8", errors="replace"), "\ufffd", [-0.5], False),  # undecodable bytes
    (b"\xff\xfe raw bytes", b"\x80", [-0.5], False),      # bytes passed straight in
    ("\ud800 lone surrogate \U0001f600", "\udfff", [-0.5], False),
    ("?" * 100_000, "!" * 10_000, [-0.1] * 10_000, True),  # huge
]


@pytest.mark.parametrize("prompt,output,logprobs,hit", BAD_CASES)
def test_bad_inputs_give_defined_values(prompt, output, logprobs, hit) -> None:
    for stage in range(3):
        for v in (F.stage_features(prompt, output, logprobs, hit, stage, 3), F.ex_ante_features(prompt, stage, 3)):
            assert v.dtype == np.float32 and v.shape == (64,)
            assert np.all(np.isfinite(v)) and np.all(np.abs(v) <= F.CLIP)


def test_bad_logprobs_defaults() -> None:
    nan = F.stage_features("1+1=", "2", [float("nan")] * 2, False, 0, 3)
    assert slot(nan, "o_no_logprobs") == 1.0 and slot(nan, "o_nan_logprob_frac") == 1.0
    assert slot(nan, "o_tokens") == pytest.approx(2 / 32) and slot(nan, "o_lp_mean") == 0.0
    inf = F.stage_features("1+1=", "2", [float("-inf")], False, 0, 3)
    assert slot(inf, "o_lp_min") == pytest.approx(F.LOGPROB_FLOOR / 5)
    empty = F.stage_features("", "", [], False, 0, 3)
    assert slot(empty, "o_empty") == 1.0 and slot(empty, "o_no_logprobs") == 1.0
    assert slot(empty, "p_chars") == 0.0 and slot(empty, "p_lexical_diversity") == 0.0


@settings(max_examples=150, deadline=None)
@given(prompt=st.text(max_size=60), output=st.text(max_size=30),
       logprobs=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20), hit=st.booleans(),
       stage=st.integers(0, 3))
def test_never_nan_property(prompt, output, logprobs, hit, stage) -> None:
    v = F.stage_features(prompt, output, logprobs, hit, stage, 4)
    assert np.all(np.isfinite(v)) and np.all(np.abs(v) <= F.CLIP)


def test_stage_out_of_range_is_a_caller_error() -> None:
    for stage, n in ((3, 3), (-1, 3), (0, 0), (0, 5)):
        with pytest.raises(ValueError, match="stage"):
            F.ex_ante_features("x", stage, n)


def test_deterministic_bytes() -> None:
    args = ("S:93715=", "13579", [-0.3, -0.01, -0.2, -1e-4, -2.5], False, 1, 3)
    a, b = F.stage_features(*args), F.stage_features(*args)
    assert a.tobytes() == b.tobytes()
    F._prompt_rows.cache_clear()
    assert F.stage_features(*args).tobytes() == a.tobytes()
    assert F.stage_features(*args) is not F.stage_features(*args)  # callers may mutate their copy


def test_batch_helpers() -> None:
    x = np.stack([F.stage_features("1+1=", "2", [-0.1], False, 2, 3), F.ex_ante_features("1+1=", 0, 3),
                  np.zeros(64, dtype=np.float32)])
    assert list(F.stage_of(x)) == [2, 0, -1]
    assert list(F.is_ex_ante(x)) == [False, True, False]


def test_serving_and_training_use_the_same_feature_functions() -> None:
    import optistop.predictor.model as training
    import optistop.serving.predictor_runtime as serving

    assert training.stage_features is F.stage_features and training.ex_ante_features is F.ex_ante_features
    assert serving.FEATURE_VERSION is F.FEATURE_VERSION and serving.SLOT_NAMES is F.SLOT_NAMES
    rec = {"prompt": "12+9=", "stages": [{"response": "21", "logprobs": [-0.1, -0.2], "hit_max_tokens": False,
                                          "correct": True}]}
    np.testing.assert_array_equal(training.features_for(rec, 0, 1, "output_aware"),
                                  F.stage_features("12+9=", "21", [-0.1, -0.2], False, 0, 1))
    np.testing.assert_array_equal(training.features_for(rec, 0, 1, "prompt_only"),
                                  F.ex_ante_features("12+9=", 0, 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-20.0, 0.0, allow_nan=False), min_size=1, max_size=300))
def test_quantiles_are_numpys_bit_for_bit(xs: list[float]) -> None:
    """The served path's quantiles are np.quantile's (linear method) to the last bit, duplicates included."""
    a = np.asarray(xs + xs[: len(xs) // 3])
    expect = np.quantile(a, [0.1, 0.25, 0.5, 0.75, 0.9])
    got = np.asarray(F.quantiles_sorted(np.sort(a).tolist()))
    # + 0.0: -0.0 and 0.0 compare equal, so a sort and numpy's partition may order them differently
    assert (got + 0.0).tobytes() == (expect + 0.0).tobytes()


def test_ex_ante_all_is_every_stages_ex_ante_vector() -> None:
    """Row k: stage k's one-hot and position, the ex-ante flag, no output slots, and the same prompt slots
    as a post-hoc vector of that prompt (stage_features builds those on its own path)."""
    prompt = "What is 12+35?"
    for n in (1, 3, 4):
        rows = F.ex_ante_all(prompt, n)
        assert rows.shape == (n, N_FEATURES) and rows.dtype == np.float32
        for k in range(n):
            post = F.stage_features(prompt, "47", [-0.1], False, k, n)
            assert [int(rows[k, i]) for i in F.STAGE_SLOTS] == [int(i == k) for i in range(F.MAX_STAGES)]
            assert slot(rows[k], "ex_ante") == 1.0 and not rows[k, list(F.OUTPUT_SLOTS)].any()
            assert slot(rows[k], "p_chars") == pytest.approx(len(prompt) / 100)
            assert slot(rows[k], "is_last_stage") == float(k == n - 1)
            prompt_slots = [i for i in F.PROMPT_SLOTS if i != F.EX_ANTE_SLOT]
            assert rows[k, prompt_slots].tobytes() == post[prompt_slots].tobytes()
    with pytest.raises(ValueError, match="n_stages"):
        F.ex_ante_all("x", 5)


@pytest.mark.parametrize("prompt,output,logprobs,hit", BAD_CASES[:6] + [("12+35=", "47", [-0.2, -0.01], False)])
def test_served_rows_are_the_training_vectors(prompt, output, logprobs, hit) -> None:
    """The cascade builds its rows from ``prompt_rows`` once per request (uncached); training and replay call
    the array functions (a shared cache): a guard that the two paths stay one, to float32 and bit for bit."""
    rows = F.prompt_rows(prompt, 3)
    assert rows == F._prompt_rows(prompt, 3) and rows is not F.prompt_rows(prompt, 3)   # computed anew
    for stage in range(3):
        served = np.array(F.stage_row(rows, prompt, output, logprobs, hit, stage), dtype=np.float32)
        assert served.tobytes() == F.stage_features(prompt, output, logprobs, hit, stage, 3).tobytes()
    ante = F.ex_ante_rows(rows)
    assert np.array(ante, dtype=np.float32).tobytes() == F.ex_ante_all(prompt, 3).tobytes()
    assert [r[F.EX_ANTE_SLOT] for r in ante] == [1.0] * 3
    assert [r[:F.EX_ANTE_SLOT] + r[F.EX_ANTE_SLOT + 1:] for r in ante] == \
        [list(r[:F.EX_ANTE_SLOT] + r[F.EX_ANTE_SLOT + 1:]) for r in rows]
    with pytest.raises(ValueError, match="stage must be in 0..2, got 3"):
        F.stage_row(rows, prompt, output, logprobs, hit, 3)


def _share_per_char(text: str, pred) -> float:
    return sum(1 for ch in text if pred(ch)) / len(text) if text else 0.0


def _run_per_char(text: str, pred) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if pred(ch) else 0
        best = max(best, run)
    return best


def test_character_counts_equal_their_per_character_definitions() -> None:
    """_share and _longest_run work per distinct character and in C (str.translate / split); on random
    unicode text, including whitespace that str.split splits on but isspace-free classes never contain
    (U+001C..U+001F, U+0085), digits that are not decimal (superscripts, fractions) and lone surrogates,
    they must equal the obvious per-character loops."""
    import random
    from collections import Counter

    pool = ("abcXYZ 0123456789 \t\n?!.,;:_-+=*/\\'\"()[]{}<>éüßÆΩж中文日本語١٢٣۴५௬²³½ⅷ\u00a0\u2003\u200b\u1680"
            "\x1c\x1d\x1e\x1f\x85\ud800\udfff\U0001f600\U0001d7d8\ufffd")
    rng = random.Random(0)
    preds = (str.isdecimal, str.isalpha, str.isspace, F._is_symbol, str.isupper, lambda ch: ord(ch) > 127)
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.choice([0, 1, 5, 40, 300])))
        counts = Counter(text)
        for pred in preds:
            assert F._share(counts, len(text), pred) == _share_per_char(text, pred)
        for pred in (str.isdecimal, str.isalpha):
            assert F._longest_run(text, counts, pred) == _run_per_char(text, pred)
        # _prompt_part takes the longest decimal run from the \d+ runs it counts anyway
        assert max(map(len, F._DIGIT_RUNS.findall(text)), default=0) == _run_per_char(text, str.isdecimal)
        if len(text) > 1 and rng.random() < 0.05:   # the served feature (a full row: not every time)
            bigrams = [text[i:i + 2] for i in range(len(text) - 1)]
            v = F.stage_features("1+1=", text, [-0.1], False, 0, 3)
            assert slot(v, "o_repeat_bigram_frac") == pytest.approx(1 - len(set(bigrams)) / len(bigrams), abs=1e-6)
