"""A bring-your-own repository (optistop repo / calibrate) on the chat family's spec: what it holds at each
step, which model.py each model gets, and what `optistop openai --repository` reads from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from optistop.pipeline import repository as R
from optistop.render import pbtxt
from optistop.render.repo import RESOLVED_SPEC
from optistop.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "chat.toml"
PREDICTOR = ROOT / "models" / "chat" / "predictor"
TEMPLATES = ROOT / "model_repository"


def _models(repo: Path) -> set[str]:
    return {p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()}


def test_stages_only_until_calibrated_then_streaming_everywhere(tmp_path: Path) -> None:
    spec = load_spec(CHAT)
    assert R.main(["--spec", str(CHAT), "--out", str(tmp_path)]) == 0
    plain = {s.triton_model for s in spec.stages}
    assert _models(tmp_path) == plain            # collect needs the stages alone: each checkpoint loaded once
    R.install_serving_models(spec, tmp_path, PREDICTOR)
    streams = {f"{m}_stream" for m in plain}
    assert _models(tmp_path) == plain | streams | {"cascade", "cascade_stream", spec.predictor_model}
    plain_py = (TEMPLATES / "stage_small" / "1" / "model.py").read_bytes()
    stream_py = (TEMPLATES / "stage_small_stream" / "1" / "model.py").read_bytes()
    assert plain_py != stream_py
    for m in plain:
        assert (tmp_path / m / "1" / "model.py").read_bytes() == plain_py
        assert (tmp_path / f"{m}_stream" / "1" / "model.py").read_bytes() == stream_py
        assert pbtxt.is_decoupled(pbtxt.load(tmp_path / f"{m}_stream" / "config.pbtxt"))
        assert not pbtxt.is_decoupled(pbtxt.load(tmp_path / m / "config.pbtxt"))
    assert (tmp_path / "cascade_stream" / "1" / "model.py").read_bytes() == \
        (TEMPLATES / "cascade_stream" / "1" / "model.py").read_bytes()
    # one resolved spec, read by both cascade models (paths relative to each model's directory)
    for name in ("cascade", "cascade_stream"):
        cfg = pbtxt.load(tmp_path / name / "config.pbtxt")
        assert cfg.name == name
        ref = pbtxt.parameter(cfg, "cascade_spec")
        assert (tmp_path / name / ref).resolve() == (tmp_path / "cascade" / RESOLVED_SPEC)
    assert not (tmp_path / "cascade_stream" / RESOLVED_SPEC).exists()
    served = load_spec(R.repository_spec(tmp_path))
    assert served == spec and served.name == "chat"


def test_repository_spec_names_what_is_missing(tmp_path: Path) -> None:
    assert R.repository_spec(TEMPLATES) == (ROOT / "cascade.toml").resolve()   # the bundled one
    R.build_stages(load_spec(CHAT), tmp_path)
    with pytest.raises(SpecError, match=r"no cascade/config.pbtxt.*optistop calibrate"):
        R.repository_spec(tmp_path)


def test_torch_threads_and_instances_come_from_the_spec(tmp_path: Path) -> None:
    text = CHAT.read_text().replace('triton_model = "chat_large"\n',
                                    'triton_model = "chat_large"\ntorch_threads = 2\ninstances = 3\n')
    (tmp_path / "models").symlink_to(ROOT / "models")
    (tmp_path / "s.toml").write_text(text)
    spec = load_spec(tmp_path / "s.toml")
    R.build_stages(spec, tmp_path / "repo", streaming=True)
    for model, threads, count in (("chat_small", 1, 1), ("chat_large", 2, 3), ("chat_large_stream", 2, 3)):
        cfg = pbtxt.load(tmp_path / "repo" / model / "config.pbtxt")
        assert pbtxt.parameter(cfg, "torch_threads") == str(threads)
        assert [g.count for g in cfg.instance_group] == [count]
    (tmp_path / "bad.toml").write_text(text.replace("instances = 3", "instances = 0"))
    with pytest.raises(SpecError, match=r"stages\[2\]\.instances / torch_threads: must be integers >= 1"):
        load_spec(tmp_path / "bad.toml")


def test_openai_refuses_a_repository_without_a_cascade(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No silent fallback to the bundled cascade: one line, before any server starts."""
    from optistop.cli import openai

    R.build_stages(load_spec(CHAT), tmp_path)
    assert openai(["--repository", str(tmp_path), "--attach", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "optistop calibrate" in err and "\n" not in err


def test_openai_refuses_a_spec_the_repositorys_policy_was_not_fitted_for(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """--spec chat.toml against the bundled (tiny) repository: its policy belongs to another cascade."""
    from optistop.cli import openai

    assert openai(["--spec", str(CHAT), "--repository", str(TEMPLATES), "--attach", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibrated for cascade 'tiny'" in err and "cascade 'chat'" in err


def test_openai_app_of_a_byo_repository_serves_its_spec(tmp_path: Path) -> None:
    """What `optistop openai --repository R` builds: R's spec (model names, limits) and R's policy."""
    from starlette.testclient import TestClient

    from optistop.frontend.app import build_app

    spec = load_spec(CHAT)
    R.build_stages(spec, tmp_path)
    R.install_serving_models(spec, tmp_path, PREDICTOR)
    app = build_app("127.0.0.1:1", R.repository_spec(tmp_path), tmp_path)
    with TestClient(app) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        too_long = client.post("/v1/completions", json={"model": "cascade", "prompt": "x",
                                                        "max_tokens": spec.max_tokens_cap + 1})
    assert {"chat_small", "chat_medium", "chat_large"} <= set(ids) and "stage_small" not in ids
    assert too_long.status_code == 400 and str(spec.max_tokens_cap) in too_long.text


def test_gpu_profiles_refuse_the_embedded_engine_knobs(tmp_path: Path) -> None:
    import dataclasses

    from optistop.render.repo import render_all

    spec = load_spec(CHAT)
    threads = dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], torch_threads=4),)
                                  + spec.stages[1:])
    with pytest.raises(SpecError, match=r"stages\[0\]\.instances / torch_threads: only the cpu profile"):
        render_all(threads, profile="trtllm", repo=tmp_path, engines_dir=tmp_path, trt=None)
    assert render_all(threads, profile="cpu", repo=tmp_path)   # the cpu profile takes them
