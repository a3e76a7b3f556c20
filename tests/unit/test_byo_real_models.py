"""The bring-your-own path sized for real checkpoints: collect's resume and concurrency, stage timeouts,
small-sample verdicts of calibrate, the client's prompt files and the serve ports."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from optistop.client.cascade import read_prompt_file
from optistop.pipeline.collect import default_concurrency, done_ids
from optistop.predictor import evaluate as E
from optistop.spec import DEFAULT_SPEC, load_spec

ROOT = Path(__file__).resolve().parents[2]


def _rec(i: int, error: bool) -> str:
    stage = {"model": "small", "cost": 1.0, **({"error": "InferenceServerException: timed out"} if error
                                                else {"response": "x"})}
    return json.dumps({"id": str(i), "prompt": f"p{i}", "stages": [{"model": "s0", "cost": 1.0, "response": "y"},
                                                                    stage]})


def test_resume_collects_errored_records_again(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c.jsonl"
    lines = [_rec(0, False), _rec(1, True), _rec(2, False), _rec(3, True)]
    out.write_text("\n".join(lines) + "\n" + '{"id": "4", "stag')          # + a torn last line
    assert done_ids(out, retry_errors=False) == {"0", "1", "2", "3"}
    assert out.read_text().count("\n") == 4                                # untouched
    assert done_ids(out, retry_errors=True) == {"0", "2"}
    assert out.read_text().splitlines() == [lines[0], lines[2]]            # the errored lines are gone
    assert "2 records" in capsys.readouterr().err
    assert done_ids(out, retry_errors=True) == {"0", "2"} and not (tmp_path / "c.jsonl.tmp").exists()


def test_default_concurrency_follows_the_fewest_instances() -> None:
    spec = load_spec(DEFAULT_SPEC)
    assert default_concurrency(spec) == 2                                  # one instance each: 2, not 8
    more = dataclasses.replace(spec, stages=tuple(dataclasses.replace(s, instances=k)
                                                  for s, k in zip(spec.stages, (4, 3, 5), strict=True)))
    assert default_concurrency(more) == 6


def test_timeouts_grow_with_tokens_by_default_but_not_for_the_tiny_family(tmp_path: Path) -> None:
    chat = load_spec(ROOT / "chat.toml")                                   # sets no timeouts: the defaults
    assert [s.timeout_for(48) for s in chat.stages] == [30.0 + 1.0 * 48] * 3
    assert load_spec(DEFAULT_SPEC).stages[2].timeout_for(32) == 30.0       # cascade.toml keeps 30 s flat


def _table(pos: int, n: int, ece: float = 0.01, gain: float = 0.2) -> dict:
    cell = lambda auroc: {"auroc": auroc, "ece": ece, "brier": 0.1, "n": n, "positives": pos}
    return {"stages": ["small", "large"], "per_stage": {"small": {"mlp32": {
        "output_aware": cell(0.6 + gain), "prompt_only": cell(0.6)}}}}


def test_acceptance_says_not_enough_data_below_ten_examples() -> None:
    ok = E.acceptance(_table(40, 100), calibration=(30, 80))
    assert ok["verdict"] == "met" and ok["auroc_gain_met"] is True and ok["too_few_examples"] == []
    assert E.acceptance(_table(40, 100, gain=0.01), calibration=(30, 80))["verdict"] == "not met"
    one = E.acceptance(_table(1, 42), calibration=(0, 30))    # the case: 1 of 42 right, 0 in calibration
    assert one["verdict"] == "not enough data" and one["auroc_gain_met"] is False and one["ece_met"] is False
    assert one["too_few_examples"] == [
        "stage small: 1 positive and 41 negative test examples (fewer than 10)",
        "stage small: 0 positive and 30 negative calibration examples (fewer than 10)"]
    negatives = E.acceptance(_table(95, 100), calibration=(60, 70))        # too few wrong answers counts too
    assert negatives["verdict"] == "not enough data" and "5 negative test" in negatives["too_few_examples"][0]
    assert E.acceptance(_table(10, 20), calibration=(10, 20))["verdict"] == "met"   # exactly 10 is enough


def test_too_few_lists_every_role_and_stage() -> None:
    lines = E.too_few({"calibration": {"small": (3, 50), "large": (45, 50)}, "test": {"small": (20, 40)}})
    assert lines == ["stage small: 3 positive and 47 negative calibration examples (fewer than 10)",
                     "stage large: 45 positive and 5 negative calibration examples (fewer than 10)"]


def test_client_prompt_file_takes_jsonl_with_multiline_prompts(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    recs = [{"prompt": "line one\nline two", "reference": "2"}, {"messages": [{"role": "user", "content": "hi"}]}]
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    assert read_prompt_file(str(f)) == recs
    plain = tmp_path / "p.txt"
    plain.write_text("12+35=\n\nR:abc=\n")
    assert read_prompt_file(str(plain)) == [{"prompt": "12+35="}, {"prompt": "R:abc="}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b", "messages": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: give exactly one of 'prompt'"):
        read_prompt_file(str(bad))


def test_client_check_with_a_grader(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from optistop.cli import _check, client_main
    from optistop.pipeline.label import make_grader

    number = make_grader("number")
    assert _check({"prompt": "How many?", "reference": "42"}, "It is 42.", number) is True
    assert _check({"prompt": "How many?", "reference": "41"}, "It is 42.", number) is False
    assert _check({"prompt": "12+35="}, "47", None) is True                # the bundled suite without a grader
    assert _check({"prompt": "not a task"}, "47", None) is None
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "x"}\n')
    assert client_main(["--file", str(f), "--check", "--grader", "agree"]) == 2
    assert "compares stages' answers" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "expect"), [
    ({}, (8000, 8001, 8002)),
    ({"grpc_port": 28101}, (28100, 28101, 28102)),
    ({"http_port": 9100}, (9100, 9101, 9102)),
    ({"grpc_port": 28101, "metrics_port": 7000}, (28100, 28101, 7000)),
])
def test_ports_follow_the_grpc_port(given: dict, expect: tuple) -> None:
    from optistop.cli import _derive_ports

    args = argparse.Namespace(**{"http_port": None, "grpc_port": None, "metrics_port": None, **given})
    _derive_ports(args)
    assert (args.http_port, args.grpc_port, args.metrics_port) == expect
