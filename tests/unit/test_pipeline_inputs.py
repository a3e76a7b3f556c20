"""Bring-your-own-cascade inputs: the prompts file and the graders, on values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from optistop.pipeline.collect import PromptFileError, done_ids, read_prompts
from optistop.pipeline.label import make_grader, make_labeler


@pytest.mark.parametrize(("text", "needle"), [
    ('{"id": 1}\n', ":1: give exactly one of 'prompt' (text) and 'messages' (chat)"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', ":2: id '1' appears twice"),
    ("nope\n", ":1: not valid JSON"),
    ('{"prompt": "a"}\n', ":1: field 'id' is missing"),
    ('\n{"id": 3, "messages": [{"role": "robot", "content": "x"}]}\n', ":2: field 'messages' message 0"),
])
def test_bad_prompt_files_name_the_line(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(text)
    with pytest.raises(PromptFileError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_prompts(f)


def test_resume_skips_ids_already_written_and_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "a", "stages": []}\n{"id": 2, "stages": []}\n{"id": "c", "sta')
    assert done_ids(out) == {"a", "2"}


def test_graders_by_hand() -> None:
    rec = {"id": "x", "stages": [{"response": "I think (B)"}, {"response": "The answer is (C)."}]}
    assert make_grader("choice")("so the answer is (C).", "C", rec)
    assert not make_grader("choice")("A or B? The answer is (B)", "C", rec)
    assert make_grader("number")("... so #### 1,234", "1234", rec) and make_grader("number")("42.0", "42", rec)
    assert make_grader("exact")("  four   words ", "four words", rec)
    agree = make_labeler("agree:choice")(rec)
    assert [s["correct"] for s in agree["stages"]] == [False, True]   # the last stage agrees with itself
    with pytest.raises(ValueError, match="valid: exact"):
        make_grader("fuzzy")
