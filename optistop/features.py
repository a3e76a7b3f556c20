"""Versioned feature extraction for the quality predictor, shared by training and serving.

One 64-float vector per (prompt, stage[, output]). The predictor's training pipeline and the replay
call the two array functions below; the cascade's loop calls the same code as Python-float rows (the
arrays are ``np.array`` of them), so the features a model was trained on are the features it is served:

    stage_features(prompt, output_text, logprobs, hit_max_tokens, stage, n_stages)  # post-hoc
    ex_ante_features(prompt, stage, n_stages)                                       # before the stage runs
    rows = prompt_rows(prompt, n_stages)       # served: once per request, then per stage / for all stages
    stage_row(rows, prompt, output_text, logprobs, hit_max_tokens, stage); ex_ante_rows(rows)

Slots 0-8 are the paper's appendix B.2 features in the paper's order (counts scaled so that values stay
roughly O(1)); 9-11 are what the paper names but its code omits (input entropy, token length ratio);
12-25 more prompt complexity; 26-29 stage position and the ex-ante flag; 30-61 output-aware signals from
the stage engine (token log-probs, output length, max-tokens hit, output text), zeroed in ex-ante mode;
62-63 are reserved (always 0). ``SLOTS`` documents every slot; bump ``FEATURE_VERSION`` on any change to
a slot's meaning or scale (the exported predictor refuses to load with another version).

Robustness contract: never NaN/inf and never an exception for empty prompts, empty outputs, NaN or
infinite log-probs, non-sequence log-probs, or odd unicode (lone surrogates, U+FFFD from bytes decoded
with ``errors="replace"``; ``bytes`` are decoded that way here too). Every value is clipped to
[-CLIP, CLIP]. Only a stage outside ``0 <= stage < n_stages <= 4`` raises ``ValueError`` (a caller bug).
Log-probs are the generated tokens' (end token excluded), one per token, in nats.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from optistop.tensors import N_FEATURES

FEATURE_VERSION = 1
MAX_STAGES = 4          # width of the stage one-hot (the paper's B.2 uses 4 slots)
CLIP = 10.0             # every slot is clipped to [-CLIP, CLIP]
LOGPROB_FLOOR = -20.0   # -inf / very negative log-probs are clipped here (nats)

# (name, meaning). The index in this tuple is the slot index.
SLOTS: tuple[tuple[str, str], ...] = (
    # --- paper appendix B.2, in its order --------------------------------------------------------
    ("p_chars", "len(prompt) / 100  [B.2 len(prompt)]"),
    ("p_words", "len(prompt.split()) / 20  [B.2 word count]"),
    ("p_question_marks", "prompt.count('?') / 5  [B.2]"),
    ("p_exclamation_marks", "prompt.count('!') / 5  [B.2]"),
    ("p_lexical_diversity", "unique lower-cased words / words, 0 without words  [B.2]"),
    ("stage_0", "1 if stage == 0  [B.2 stage one-hot]"),
    ("stage_1", "1 if stage == 1  [B.2 stage one-hot]"),
    ("stage_2", "1 if stage == 2  [B.2 stage one-hot]"),
    ("stage_3", "1 if stage == 3  [B.2 stage one-hot]"),
    # --- named by the paper (section 5.1 / 10.2), omitted by its code --------------------------
    ("p_char_entropy", "Shannon entropy of the prompt's characters, bits / 5  [input entropy]"),
    ("p_word_entropy", "Shannon entropy of the prompt's words, bits / 5"),
    ("p_token_length_ratio", "pieces (runs of word characters, or single symbols) per character"),
    # --- prompt complexity ---------------------------------------------------------------------
    ("p_log_chars", "log1p(len(prompt)) / 8"),
    ("p_digit_frac", "share of decimal-digit characters"),
    ("p_alpha_frac", "share of alphabetic characters"),
    ("p_space_frac", "share of whitespace characters"),
    ("p_symbol_frac", "share of other characters (punctuation, operators)"),
    ("p_upper_frac", "share of upper-case characters"),
    ("p_nonascii_frac", "share of non-ASCII characters (incl. U+FFFD from undecodable bytes)"),
    ("p_longest_digit_run", "longest run of digits / 10"),
    ("p_longest_alpha_run", "longest run of letters / 10"),
    ("p_numbers", "number of digit runs / 5"),
    ("p_mean_word_len", "mean word length in characters / 10, 0 without words"),
    ("p_distinct_char_frac", "distinct characters / characters, 0 for an empty prompt"),
    ("p_lines", "number of lines / 10, 0 for an empty prompt"),
    ("p_max_char_share", "count of the most frequent character / characters"),
    # --- stage position and mode -----------------------------------------------------------------
    ("stage_frac", "stage / (n_stages - 1), 0 with one stage"),
    ("n_stages", "n_stages / 4"),
    ("is_last_stage", "1 if stage == n_stages - 1"),
    ("ex_ante", "1 for ex_ante_features (slots 30-61 are then 0), 0 for stage_features"),
    # --- output-aware (post-hoc) ----------------------------------------------------------------
    ("o_tokens", "generated tokens (len(logprobs)) / 32"),
    ("o_log_tokens", "log1p(generated tokens) / 5"),
    ("o_hit_max_tokens", "1 if generation stopped at max_tokens without an end token"),
    ("o_empty", "1 if the output text is empty after strip()"),
    ("o_no_logprobs", "1 if no finite log-prob is available (then slots 36-54 are 0)"),
    ("o_nan_logprob_frac", "share of NaN log-probs (dropped before the statistics below)"),
    ("o_lp_mean", "mean token log-prob / 5 (log-probs clipped to [-20, 0] nats)"),
    ("o_lp_min", "min token log-prob / 5"),
    ("o_lp_max", "max token log-prob / 5"),
    ("o_lp_std", "std of token log-probs / 5"),
    ("o_lp_q10", "10th percentile of token log-probs / 5"),
    ("o_lp_q25", "25th percentile / 5"),
    ("o_lp_q50", "median / 5"),
    ("o_lp_q75", "75th percentile / 5"),
    ("o_lp_q90", "90th percentile / 5"),
    ("o_lp_cum", "cumulative log-prob / 20 (then clipped to [-10, 0])"),
    ("o_lp_first", "first token's log-prob / 5"),
    ("o_lp_last", "last token's log-prob / 5"),
    ("o_p_mean", "mean token probability exp(lp)"),
    ("o_p_min", "min token probability"),
    ("o_p_seq", "sequence probability exp(cum log-prob)"),
    ("o_frac_p_below_half", "share of tokens with probability < 0.5"),
    ("o_frac_p_below_0.9", "share of tokens with probability < 0.9"),
    ("o_surprise_max", "-ln(max(-min lp, 1e-6)) / 10: resolves near-certain tokens"),
    ("o_surprise_mean", "-ln(max(-mean lp, 1e-6)) / 10"),
    ("o_chars", "len(output_text) / 32"),
    ("o_length_ratio", "len(output_text.strip()) / max(1, len(prompt))  [token length ratio, post-hoc]"),
    ("o_char_recall", "share of output characters (as a multiset) also in the prompt, 0 if empty"),
    ("o_digit_frac", "share of decimal-digit characters in the output"),
    ("o_alpha_frac", "share of alphabetic characters in the output"),
    ("o_char_entropy", "Shannon entropy of the output's characters, bits / 5"),
    ("o_repeat_bigram_frac", "1 - distinct character bigrams / bigrams of the output (looping)"),
    # --- reserved ----------------------------------------------------------------------------------
    ("reserved_62", "always 0"),
    ("reserved_63", "always 0"),
)
SLOT_NAMES: tuple[str, ...] = tuple(name for name, _ in SLOTS)
SLOT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SLOT_NAMES)}
STAGE_SLOTS: tuple[int, ...] = tuple(SLOT_INDEX[f"stage_{i}"] for i in range(MAX_STAGES))  # (5, 6, 7, 8)
EX_ANTE_SLOT: int = SLOT_INDEX["ex_ante"]
PAPER_SLOTS: tuple[int, ...] = tuple(range(9))                 # the paper's B.2 features
PROMPT_SLOTS: tuple[int, ...] = tuple(range(EX_ANTE_SLOT + 1))  # everything an ex-ante vector may set
OUTPUT_SLOTS: tuple[int, ...] = tuple(range(SLOT_INDEX["o_tokens"], SLOT_INDEX["reserved_62"]))
OUTPUT_NAMES: tuple[str, ...] = SLOT_NAMES[OUTPUT_SLOTS[0]:OUTPUT_SLOTS[-1] + 1]
assert len(SLOTS) == N_FEATURES and len(set(SLOT_NAMES)) == N_FEATURES

_PIECE = re.compile(r"\w+|[^\w\s]")
_DIGIT_RUNS = re.compile(r"\d+")   # \d on str patterns is Unicode category Nd: exactly str.isdecimal


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _entropy(counts: Counter) -> float:
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in counts.values())


# Character classes are counted per distinct character, from the text's Counter, and runs found by
# str.translate + str.split (both in C): a per-character Python loop cost ~0.8 us per prompt character,
# 2.4 ms for a 3,000-character prompt, every request. Equal results (tests/unit/test_features.py checks
# them against the per-character definitions on random unicode text).
def _share(counts: Counter, n: int, pred) -> float:
    """Share of the ``n`` characters counted in ``counts`` for which ``pred`` holds."""
    return sum(c for ch, c in counts.items() if pred(ch)) / n if n else 0.0


def _longest_run(text: str, counts: Counter, pred) -> int:
    """Longest run of consecutive characters of ``text`` for which ``pred`` holds; ``pred`` must reject
    whitespace (the other characters become spaces and ``split`` leaves the runs)."""
    table = {ord(ch): " " for ch in counts if not pred(ch)}
    return max(map(len, text.translate(table).split()), default=0)


def _is_symbol(ch: str) -> bool:
    return not (ch.isalnum() or ch.isspace())


def _prompt_part(prompt: str) -> tuple[float, ...]:
    """Slots 0-4 and 9-25 (stage-independent); cached by ``_prompt_rows``."""
    n = len(prompt)
    words = prompt.split()
    chars = Counter(prompt)
    digit_runs = _DIGIT_RUNS.findall(prompt)
    paper = (n / 100, len(words) / 20, prompt.count("?") / 5, prompt.count("!") / 5,
             len(set(map(str.lower, words))) / len(words) if words else 0.0)
    extra = (
        _entropy(chars) / 5,
        _entropy(Counter(words)) / 5,
        len(_PIECE.findall(prompt)) / n if n else 0.0,
        math.log1p(n) / 8,
        _share(chars, n, str.isdecimal),
        _share(chars, n, str.isalpha),
        _share(chars, n, str.isspace),
        _share(chars, n, _is_symbol),
        _share(chars, n, str.isupper),
        _share(chars, n, lambda ch: ord(ch) > 127),
        max(map(len, digit_runs), default=0) / 10,
        _longest_run(prompt, chars, str.isalpha) / 10,
        len(digit_runs) / 5,
        (sum(map(len, words)) / len(words)) / 10 if words else 0.0,
        len(chars) / n if n else 0.0,
        (prompt.count("\n") + 1) / 10 if n else 0.0,
        max(chars.values()) / n if n else 0.0,
    )
    return paper + extra


def _check(stage: int, n_stages: int) -> None:
    if not 1 <= int(n_stages) <= MAX_STAGES:
        raise ValueError(f"n_stages must be in 1..{MAX_STAGES}, got {n_stages}")
    if not 0 <= int(stage) < int(n_stages):
        raise ValueError(f"stage must be in 0..{int(n_stages) - 1}, got {stage}")


PromptRows = tuple[tuple[float, ...], ...]


def prompt_rows(prompt: str, n_stages: int) -> PromptRows:
    """One row per stage of every slot a post-hoc vector of ``prompt`` at that stage has before its output
    is known (prompt slots, stage one-hot and position; ex_ante 0), finished (clipped, NaN -> 0) and as
    Python floats. The served cascade computes them once per request and passes them to ``ex_ante_rows``
    and ``stage_row``; the array functions below (offline: replay, training) share a cache of them."""
    _check(0, n_stages)
    prompt = _text(prompt)
    part = [_finish_value(x) for x in _prompt_part(prompt)]   # the rest are 0, 1 or in [0, 1]: finished
    rows = []
    for stage in range(n_stages):
        v = [0.0] * N_FEATURES
        v[0:5] = part[0:5]
        v[9:26] = part[5:]
        v[STAGE_SLOTS[stage]] = 1.0
        v[SLOT_INDEX["stage_frac"]] = stage / (n_stages - 1) if n_stages > 1 else 0.0
        v[SLOT_INDEX["n_stages"]] = n_stages / MAX_STAGES
        v[SLOT_INDEX["is_last_stage"]] = float(stage == n_stages - 1)
        rows.append(tuple(v))
    return tuple(rows)


_prompt_rows = lru_cache(maxsize=256)(prompt_rows)


def _finish_value(x: float) -> float:
    """One slot as served: NaN -> 0, clipped to [-CLIP, CLIP], -0.0 -> 0.0 (equal features, equal bytes)."""
    if x != x:
        return 0.0
    return CLIP if x > CLIP else -CLIP if x < -CLIP else x + 0.0


def _logprob_list(logprobs: object) -> list[float]:
    """Flattened, as Python floats; anything that is not a sequence of numbers becomes empty."""
    if isinstance(logprobs, (tuple, list)) and all(type(x) is float for x in logprobs):
        return list(logprobs)   # the cascade's own StageOutput: no numpy round trip
    if logprobs is None:
        return []
    try:
        return np.asarray(logprobs, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError):
        return []


_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def quantiles_sorted(srt: Sequence[float]) -> list[float]:
    """``np.quantile(x, [.1, .25, .5, .75, .9])`` (linear method) of a non-empty sorted sequence: numpy's
    own arithmetic (virtual index (n-1)q, lerp from both ends, the last value past the end) on Python
    floats, which round the same way, without numpy's general-case dispatch, which was a third of a
    served decision's time. Bitwise equal to np.quantile (tests/unit/test_features.py)."""
    n = len(srt)
    out = []
    for q in _QUANTILES:
        v = (n - 1) * q
        lo = -1 if v >= n - 1 else math.floor(v)
        a = srt[lo]
        b = srt[-1 if lo == -1 else lo + 1]
        gamma = v - lo
        diff = b - a
        out.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)
    return out


def ex_ante_features(prompt: str, stage: int, n_stages: int) -> np.ndarray:
    """Prompt-only features (float32, shape (64,)) for a stage not yet run: output slots 0, ``ex_ante`` 1."""
    _check(stage, n_stages)
    return ex_ante_all(prompt, n_stages)[int(stage)]


def ex_ante_all(prompt: str, n_stages: int) -> np.ndarray:
    """(n_stages, 64) float32: ``ex_ante_features`` of every stage, in one go."""
    return np.array(ex_ante_rows(_prompt_rows(_text(prompt), int(n_stages))), dtype=np.float32)


def ex_ante_rows(rows: PromptRows) -> list[list[float]]:
    """Every stage's ex-ante vector as Python floats, from the prompt's ``prompt_rows`` (the cascade's
    first predictor call; float32 rounding happens where the predictor makes its array)."""
    return [[*row[:EX_ANTE_SLOT], 1.0, *row[EX_ANTE_SLOT + 1:]] for row in rows]   # finished: only the flag


def stage_features(prompt: str, output_text: str, logprobs: Sequence[float], hit_max_tokens: bool,
                   stage: int, n_stages: int) -> np.ndarray:
    """Post-hoc features (float32, shape (64,)) of ``stage``'s answer ``output_text`` to ``prompt``.

    ``logprobs``: the generated tokens' log-probs in nats (end token excluded), one per token; NaN
    entries are dropped and counted, -inf and values below -20 are clipped to -20, positive values to 0.
    """
    _check(stage, n_stages)
    rows = _prompt_rows(_text(prompt), int(n_stages))
    # float64 -> float32 rounds as astype does; the prompt part is finished already
    return np.array(stage_row(rows, prompt, output_text, logprobs, hit_max_tokens, stage), dtype=np.float32)


def stage_row(rows: PromptRows, prompt: str, output_text: str, logprobs: Sequence[float], hit_max_tokens: bool,
              stage: int) -> list[float]:
    """``stage_features`` as Python floats, from the prompt's ``prompt_rows`` (the served cascade)."""
    if not 0 <= int(stage) < len(rows):
        raise ValueError(f"stage must be in 0..{len(rows) - 1}, got {stage}")
    prompt_s, out = _text(prompt), _text(output_text)
    raw = _logprob_list(logprobs)
    n_tok = len(raw)
    finite = [x for x in raw if x == x]                           # NaN != NaN
    lp = [min(max(x, LOGPROB_FLOOR), 0.0) for x in finite]        # -inf -> floor, +inf -> 0
    o = dict.fromkeys(OUTPUT_NAMES, 0.0)   # filled below, in slot order
    o["o_tokens"] = n_tok / 32
    o["o_log_tokens"] = math.log1p(n_tok) / 5
    o["o_hit_max_tokens"] = float(bool(hit_max_tokens))
    o["o_empty"] = float(not out.strip())
    o["o_no_logprobs"] = float(not lp)
    o["o_nan_logprob_frac"] = (n_tok - len(finite)) / n_tok if n_tok else 0.0
    if lp:
        # Python floats throughout: in the server each call follows a stage call that left the caches
        # cold, where numpy's per-call dispatch cost more than the arithmetic on a few dozen tokens
        m = len(lp)
        srt = sorted(lp)
        cum = math.fsum(lp)
        mean = cum / m
        p = [math.exp(x) for x in lp]
        o["o_lp_mean"] = mean / 5
        o["o_lp_min"] = srt[0] / 5
        o["o_lp_max"] = srt[-1] / 5
        o["o_lp_std"] = math.sqrt(math.fsum((x - mean) ** 2 for x in lp) / m) / 5
        for name, q in zip(("o_lp_q10", "o_lp_q25", "o_lp_q50", "o_lp_q75", "o_lp_q90"), quantiles_sorted(srt)):
            o[name] = q / 5
        o["o_lp_cum"] = max(cum / 20, -CLIP)
        o["o_lp_first"] = lp[0] / 5
        o["o_lp_last"] = lp[-1] / 5
        o["o_p_mean"] = math.fsum(p) / m
        o["o_p_min"] = min(p)
        o["o_p_seq"] = math.exp(cum)
        o["o_frac_p_below_half"] = sum(x < 0.5 for x in p) / m
        o["o_frac_p_below_0.9"] = sum(x < 0.9 for x in p) / m
        o["o_surprise_max"] = -math.log(max(-srt[0], 1e-6)) / 10
        o["o_surprise_mean"] = -math.log(max(-mean, 1e-6)) / 10
    stripped = out.strip()
    o["o_chars"] = len(out) / 32
    o["o_length_ratio"] = len(stripped) / max(1, len(prompt_s))
    if out:
        pc, oc = Counter(prompt_s), Counter(out)
        o["o_char_recall"] = sum(min(c, pc[ch]) for ch, c in oc.items()) / len(out)
        o["o_digit_frac"] = _share(oc, len(out), str.isdecimal)
        o["o_alpha_frac"] = _share(oc, len(out), str.isalpha)
        o["o_char_entropy"] = _entropy(oc) / 5
        n_bigrams = len(out) - 1   # distinct bigrams = distinct pairs of neighbours
        o["o_repeat_bigram_frac"] = 1 - len(set(zip(out, out[1:]))) / n_bigrams if n_bigrams else 0.0
    base = rows[int(stage)]
    out_part = [_finish_value(x) for x in o.values()]
    return [*base[:OUTPUT_SLOTS[0]], *out_part, *base[OUTPUT_SLOTS[-1] + 1:]]


def stage_of(features: np.ndarray) -> np.ndarray:
    """Stage index per row of a (N, 64) batch from the one-hot slots; -1 where not exactly one is set."""
    onehot = np.asarray(features)[:, list(STAGE_SLOTS)] > 0.5   # (N, 4)
    return np.where(onehot.sum(axis=1) == 1, onehot.argmax(axis=1), -1)


def is_ex_ante(features: np.ndarray) -> np.ndarray:
    """(N,) bool: which rows of a (N, 64) batch are ex-ante (prompt-only) vectors."""
    return np.asarray(features)[:, EX_ANTE_SLOT] > 0.5
