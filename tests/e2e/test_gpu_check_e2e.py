"""optistop.render.gpu_check (what build/gpu-check.sh runs on a GPU node) against the real CPU server:
the stage self-test and the cascade checks speak the same contract to the embedded stages as to
TensorRT-LLM engines or the PyTorch-backend stage, so they must pass here, and fail on a broken stage."""

from __future__ import annotations

import json

from optistop.render import gpu_check
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
    from optistop.tiny.tasks import grade

    out = tmp_path / "p.jsonl"
    assert gpu_check.write_prompts(load_spec(DEFAULT_SPEC), out, 10) == "exact"
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 12 and all(grade(r["prompt"], r["reference"]) for r in recs)   # one per cell
    assert {r["prompt"][:2] if r["prompt"][1] == ":" else "add" for r in recs} == {"R:", "S:", "add"}
    chat = tmp_path / "chat.toml"
    chat.write_text(DEFAULT_SPEC.read_text().replace("[cascade]", "[cascade]\nchat_template = true", 1))
    assert gpu_check.write_prompts(load_spec(chat, check_paths=False), out, 3) == "number"
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    for r in recs:
        a, b = (int(x) for x in r["messages"][0]["content"].split("?")[0].split()[2::2])
        assert r["reference"] == str(a + b)


def test_collect_and_calibrate_steps_give_a_cascade_the_repository_check_accepts(server, tmp_path, monkeypatch) -> None:
    """gpu-check's steps 4-5 on the CPU server: its prompts and grader, optistop collect through gRPC, then
    optistop calibrate for the spec; the cascade's own load-time check accepts what it installed."""
    from optistop.offline import replay
    from optistop.pipeline import calibrate, collect
    from optistop.pipeline.repository import build_stages
    from optistop.serving.cascade_service import CascadeService

    spec = load_spec(DEFAULT_SPEC)
    prompts, collected, repo = tmp_path / "p.jsonl", tmp_path / "c.jsonl", tmp_path / "repo"
    grader = gpu_check.write_prompts(spec, prompts, 48)
    assert collect.main(["--prompts", str(prompts), "--url", f"127.0.0.1:{server.cfg.grpc_port}",
                         "--spec", str(DEFAULT_SPEC), "--out", str(collected), "--grader", grader]) == 0
    recs = [json.loads(line) for line in collected.read_text().splitlines()]
    labels = [st["correct"] for r in recs for st in r["stages"]]
    assert len(recs) == 48 and any(labels) and not all(labels)     # the grader separates answers
    build_stages(spec, repo)
    nan = float("nan")   # skip only the cross-fitted report (a printed 5-fold refit), as in test_gpu_repository
    monkeypatch.setattr(replay, "kfold", lambda *a, **k: {"per": None})
    monkeypatch.setattr(replay, "summarise", lambda *a, **k: {"conditions": {
        "quality_rel": nan, "cost": nan, "cheapest_single_stage": nan, "router_cost": nan}})
    assert calibrate.main([str(collected), "--spec", str(DEFAULT_SPEC), "--out", str(repo), "--max-epochs", "2"]) == 0
    service = CascadeService.from_spec_file(repo / "cascade" / "cascade_spec.toml")
    service.check_repository(repo)
