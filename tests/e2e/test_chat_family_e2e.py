"""The second bundled family (Qwen2.5-Instruct-shaped: byte-level BPE, ChatML, ends at <|im_end|>), taken
from spec to a served, calibrated cascade through the same commands a user runs: optistop repo, serve,
collect, label, calibrate. No special case for this family anywhere in the code."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from optistop.client.cascade import ask, make_client
from optistop.pipeline import calibrate, collect, label, repository
from optistop.server.embedded import EmbeddedServer
from optistop.serving.streaming import stream_model
from optistop.serving.tokenizers import PromptEncoder
from optistop.spec import load_spec
from optistop.tiny.chat import generate_split, grade
from tests.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "chat.toml"
PREDICTOR = ROOT / "models" / "chat" / "predictor"    # calibrated by `make chat-calibrate`


def _load(srv: EmbeddedServer, model: str) -> None:
    """Load ``model`` into a running server through the model-repository API (explicit model control)."""
    url = f"http://{srv.cfg.http_url}/v2/repository/models/{model}/load"
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=srv.cfg.control_header)
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.status == 200, model
    srv.wait_ready(model=model)


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory):
    spec = load_spec(SPEC_FILE)
    repo = tmp_path_factory.mktemp("chat") / "repo"
    repository.build_stages(spec, repo)
    repository.install_serving_models(spec, repo, PREDICTOR)
    plain = (*(st.triton_model for st in spec.stages), spec.predictor_model, "cascade")
    models = (*plain, *(stream_model(m) for m in plain if m != spec.predictor_model))   # streaming variants too
    with start_server(repo, repo.parent / "server.log", load_models=models) as srv:
        yield srv


def test_templated_prompts_stop_at_im_end(chat_server) -> None:
    """Every stage ends its answer at <|im_end|>, well before max_tokens, and answers the question."""
    spec = load_spec(SPEC_FILE)
    items = generate_split("test", 2, seed=5)

    async def go() -> list[dict]:
        async with collect.Collector(spec, PromptEncoder.for_spec(spec), chat_server.cfg.grpc_url, 48) as c:
            return [await c.one(it.to_prompt_record()) for it in items]

    for rec, it in zip(asyncio.run(go()), items, strict=True):
        for st in rec["stages"]:
            assert "error" not in st and not st["hit_max_tokens"] and 0 < len(st["token_ids"]) < 48
        assert grade(it.prompt, rec["stages"][-1]["response"]), rec   # the large member is ~99% right


def test_raw_text_and_chat_messages_get_the_same_answer(chat_server) -> None:
    client = make_client(chat_server.cfg.grpc_url)
    for it in generate_split("test", 1, seed=6):
        raw = ask(client, "grpc", it.prompt)
        chat = ask(client, "grpc", [{"role": "user", "content": it.prompt}])
        assert (raw.text, raw.stages_run, raw.stage) == (chat.text, chat.stages_run, chat.stage)
        assert not raw.degraded and "<|im_end|>" not in raw.text and raw.stage_model.startswith("chat_")


def test_spec_to_calibrated_cascade_with_the_user_commands(tmp_path: Path) -> None:
    """repo -> serve (stages only) -> collect -> label -> calibrate -> serve the cascade."""
    spec = load_spec(SPEC_FILE)
    repo, prompts = tmp_path / "repo", tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(it.to_prompt_record()) + "\n"
                               for it in generate_split("val", 40, seed=1)))
    assert repository.main(["--spec", str(SPEC_FILE), "--out", str(repo)]) == 0
    # one server: the stages-only repository first, the calibrated cascade loaded into it afterwards
    stages = tuple(st.triton_model for st in spec.stages)
    with start_server(repo, tmp_path / "server.log", load_models=stages) as srv:
        out = tmp_path / "collected.jsonl"
        assert collect.main(["--prompts", str(prompts), "--url", srv.cfg.grpc_url, "--spec", str(SPEC_FILE),
                             "--out", str(out)]) == 0
        # resume: a record with a stage error (as a timed-out call leaves) is collected again, nothing else
        lines = out.read_text().splitlines()
        first = json.loads(lines[0])
        first["stages"][1] = {"model": "medium", "cost": 4.5, "error": "InferenceServerException: timed out"}
        out.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
        assert collect.main(["--prompts", str(prompts), "--url", srv.cfg.grpc_url, "--spec", str(SPEC_FILE),
                             "--out", str(out)]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 160 and len({r["id"] for r in records}) == 160
        assert not any("error" in st for r in records for st in r["stages"])
        assert records[-1]["id"] == first["id"] and records[0]["id"] != first["id"]   # re-collected, appended
        labelled = tmp_path / "labelled.jsonl"
        assert label.main([str(out), "--grader", "optistop.tiny.chat:grader", "--out", str(labelled)]) == 0
        assert calibrate.main([str(labelled), "--spec", str(SPEC_FILE), "--out", str(repo),
                               "--max-epochs", "5"]) == 0
        assert (repo / "cascade" / "config.pbtxt").exists()
        assert (repo / spec.predictor_model / "1" / "policy.json").exists()
        assert not srv.ready("cascade")
        for model in (spec.predictor_model, "cascade"):
            _load(srv, model)
        a = ask(make_client(srv.cfg.grpc_url), "grpc", "Write 4071 in words.")
        assert a.stage_model.startswith("chat_") and a.cost > 0 and not a.degraded


def test_streaming_chat_from_the_bring_your_own_repository(chat_server) -> None:
    """What `optistop openai --repository R` serves on a bring-your-own repository: R's spec and policy,
    streaming through its cascade_stream and the stages' streaming variants, not degraded (the plain
    stage model.py in a *_stream stage failed every streamed call and fell back)."""
    from starlette.testclient import TestClient

    from optistop.frontend import protocol as P
    from optistop.frontend.app import build_app

    repo = chat_server.cfg.repository
    app = build_app(chat_server.cfg.grpc_url, repository.repository_spec(repo), repo)
    it = generate_split("test", 1, seed=7)[0]
    body = {"model": "chat_large", "messages": [{"role": "user", "content": it.prompt}], "stream": True,
            "max_tokens": 48}
    with TestClient(app) as client, client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    text = "".join(p for p in pieces if p)
    assert sum(1 for p in pieces if p) >= 2            # tokens arrived as several chunks, not one answer
    meta = [c[P.EXTRA] for c in chunks if P.EXTRA in c]
    assert len(meta) == 1 and meta[0]["stage_model"] == "chat_large" and not meta[0]["degraded"], meta
    assert grade(it.prompt, text) and "<|im_end|>" not in text and chunks[-1]["model"] == "chat_large"
