"""optistop.serving.gpu_check (what build/gpu-check.sh runs on a GPU node) against the real CPU server:
the stage self-test and the cascade checks speak the same contract to the embedded stages as to
TensorRT-LLM engines or the PyTorch-backend stage, so they must pass here, and fail on a broken stage."""

from __future__ import annotations

import json

from optistop.serving import gpu_check
from optistop.spec import DEFAULT_SPEC, load_spec


def test_stage_self_test_and_three_policies_pass_on_the_embedded_server(server, capsys) -> None:
    url = f"127.0.0.1:{server.cfg.http_port}"
    assert gpu_check.main(["--spec", str(DEFAULT_SPEC), "--stages", "--url", url]) == 0, capsys.readouterr().err
    assert gpu_check.main(["--spec", str(DEFAULT_SPEC), "--url", url, "--cascade", *gpu_check.POLICIES]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("cascade (") == 3 and "from stage_small" in out        # fixed:0 answered by stage 0


def test_a_missing_stage_is_one_fail_line(server, capsys) -> None:
    spec = load_spec(DEFAULT_SPEC)
    problems = gpu_check.check_stage(f"127.0.0.1:{server.cfg.http_port}", "no_such_stage", [1, 5], 2, (), 8)
    assert len(problems) == 1 and "no_such_stage" in problems[0]
    assert spec.stages[0].triton_model == "stage_small"


def test_collection_prompts_follow_the_family(tmp_path) -> None:
    out = tmp_path / "p.jsonl"
    gpu_check.write_prompts(load_spec(DEFAULT_SPEC), out, 10)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 10 and all("prompt" in r and r["reference"].isdigit() for r in recs)
    chat = tmp_path / "chat.toml"
    chat.write_text(DEFAULT_SPEC.read_text().replace("[cascade]", "[cascade]\nchat_template = true", 1))
    gpu_check.write_prompts(load_spec(chat, check_paths=False), out, 3)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    for r in recs:
        a, b = (int(x) for x in r["messages"][0]["content"].split("?")[0].split()[2::2])
        assert r["reference"] == str(a + b)
