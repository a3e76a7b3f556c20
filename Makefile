# Two entry points (README): `make serve` and `make test`. Every target sets up what it needs, idempotently.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS := models/tiny/manifest.json
PREDICTOR := model_repository/quality_predictor/1/model.onnx
export PYTHONHASHSEED := 0

.PHONY: help venv sysdeps lint test test-unit test-contract test-parity test-e2e serve serve-split serve-openai bench-openai bench-sampling models-train models-eval collect predictor models-chat chat-calibrate report bench-fit bench soak chaos real-speed \
	gpu-dry-run routellm lock clean

help:
	@echo "make serve   - set up everything and serve the embedded cascade on 127.0.0.1 (HTTP 8000, gRPC 8001)"
	@echo "make test    - set up everything and run lint + the whole test suite"
	@echo "make serve-openai - the same server + an OpenAI-compatible API on http://127.0.0.1:9000/v1"
	@echo "make models-train | models-eval | collect | predictor | report | bench | soak | chaos | real-speed"

# uv installs the lock in seconds, with pip's package sources (scripts/venv.py); pip where uv is unavailable.
# Only pip: make venv VENV_ARGS=--pip
$(STAMP): pyproject.toml requirements.lock
	$(PY) scripts/venv.py --venv $(VENV) $(VENV_ARGS)
	touch $(STAMP)

venv: $(STAMP)

# Debian libraries the embedded server stack links: the Python-backend stub needs libpython3.X.so,
# perf_analyzer needs libb64. Installed only when missing (CI runs as root on a fresh machine).
sysdeps:
	@bash scripts/sysdeps.sh

lint: venv
	$(BIN)/ruff check .

# --durations=15: the slowest tests and fixtures (server starts) at the end of every run.
# The suite mostly waits (servers starting, paced stages, recoveries), so it runs in 3 pytest-xdist workers
# even on 2 cores; tests sharing a server run in one worker (tests/conftest.py). Serial: make test XDIST=
XDIST ?= -n 3 --dist loadgroup --no-loadscope-reorder
test: venv sysdeps lint
	$(BIN)/python -m pytest -q -ra --durations=15 $(XDIST)

# One tier alone (markers set by folder in tests/conftest.py): make test-unit | test-contract | test-parity | test-e2e
test-unit test-contract test-parity test-e2e: test-%: venv sysdeps
	$(BIN)/python -m pytest -q -ra -m $* $(XDIST)

serve: venv sysdeps $(MODELS) $(PREDICTOR)
	$(BIN)/optistop serve

# The split layout on loopback: stage servers (8100-8102, 8200-8202) and the cascade (8000-8002) calling
# them over gRPC, as deploy/ lays them out on Kubernetes.
serve-split: venv sysdeps $(MODELS) $(PREDICTOR)
	$(BIN)/optistop serve-split

# The cascade behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models).
serve-openai: venv sysdeps $(MODELS) $(PREDICTOR)
	$(BIN)/optistop openai

# genai-perf in its own venv (its pandas/pyarrow/plotly stay out of .venv), pinned to tritonclient 2.51.
GP_VENV := .venv-genai-perf
$(GP_VENV)/.installed: requirements-genai-perf.lock
	test -x $(GP_VENV)/bin/python || $(PY) -m venv $(GP_VENV)
	$(GP_VENV)/bin/python -m pip install -q -r requirements-genai-perf.lock
	touch $@

# TTFT, inter-token latency, throughput: cascade and each stage, streaming chat, concurrency 1 and 4,
# on a server + front end it starts on free ports (about 5 min on 2 cores) -> bench/openai/.
bench-openai: venv sysdeps $(GP_VENV)/.installed $(MODELS) $(PREDICTOR)
	$(BIN)/python -m optistop.perf.openai_bench --genai-perf $(GP_VENV)/bin/genai-perf $(BENCH_OPENAI_ARGS)

# What sampling (temperature > 0) does to the cascade's quality and cost, against greedy (README
# "OpenAI-compatible API"): in process, 360 held-out prompts, ~2 min.
bench-sampling: venv $(MODELS) $(PREDICTOR)
	$(BIN)/python -m optistop.perf.sampling --per-cell 30 --temperature 0.3 0.5 0.7 --lambda-scale 1 3 10 \
		--out bench/sampling.json

$(MODELS):
	$(MAKE) models-train models-eval

# Reproduces the committed tiny family from scratch (about 20 min on 2 cores).
models-train: venv
	$(BIN)/python -m optistop.tiny.train --out models/tiny --member small --member medium & \
	$(BIN)/python -m optistop.tiny.train --out models/tiny --member large; wait

models-eval: venv
	$(BIN)/python -m optistop.tiny.evaluate --models models/tiny --out artifacts/tiny_eval.json

# Labels from the three stages' real outputs -> features -> MLPs -> calibration -> ONNX + sidecar (< 10 min).
collect: venv
	$(BIN)/python predictor_export/collect.py --spec cascade.toml --out artifacts/collected.jsonl

predictor: collect
	$(BIN)/optistop calibrate artifacts/collected.jsonl --spec cascade.toml --out model_repository --no-install \
		--replay-out artifacts/tiny_replay.jsonl

# The second bundled family (Qwen2.5-Instruct-shaped), retrained from scratch (~12 min on one core).
models-chat: venv
	$(BIN)/python -m optistop.tiny.chat_train --out models/chat
	$(BIN)/python -m optistop.tiny.chat_evaluate --models models/chat

# The chat family from spec to a calibrated cascade with the user commands (README "Bring your own
# cascade"); refreshes the committed models/chat/predictor. Ports 28100-28102.
CHAT_REPO := artifacts/chat_repo
chat-calibrate: venv sysdeps
	rm -rf $(CHAT_REPO) artifacts/chat_labelled.jsonl
	$(BIN)/python -m optistop.tiny.chat --split val --per-level 100 --out artifacts/chat_prompts.jsonl
	$(BIN)/optistop repo --spec chat.toml --out $(CHAT_REPO)
	$(BIN)/optistop serve --repository $(CHAT_REPO) --http-port 28100 --grpc-port 28101 --metrics-port 28102 & \
	  pid=$$!; trap 'kill $$pid' EXIT; \
	  until curl -sf localhost:28100/v2/health/ready >/dev/null; do sleep 1; kill -0 $$pid || exit 1; done; \
	  $(BIN)/optistop collect --prompts artifacts/chat_prompts.jsonl --url 127.0.0.1:28101 --spec chat.toml \
	    --grader optistop.tiny.chat:grader --out artifacts/chat_labelled.jsonl
	$(BIN)/optistop calibrate artifacts/chat_labelled.jsonl --spec chat.toml --out $(CHAT_REPO)
	mkdir -p models/chat/predictor
	cp $(CHAT_REPO)/quality_predictor/1/{model.onnx,model.json,policy.json} models/chat/predictor/

$(PREDICTOR):
	$(MAKE) predictor

# Policy fit times on 3/4/5-stage MMLU-Pro ladders, 1,500 prompts (issue 28; converts MMLU-Pro if absent).
bench-fit: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m optistop.perf.fit_bench $(BENCH_FIT_ARGS)

# Issue 12's acceptance on every data set -> reports/ (REPORT_ARGS="--mmlupro-limit 2000" for a shorter run).
# The tiny family's scored replay comes from a predictor trained into a scratch repository: the report
# never overwrites the committed predictor the server loads (`make predictor` does, on purpose).
report: venv
	test -f artifacts/tiny_replay.jsonl || { $(MAKE) collect && $(BIN)/optistop calibrate artifacts/collected.jsonl \
		--spec cascade.toml --out artifacts/report_repo --no-install --replay-out artifacts/tiny_replay.jsonl; }
	$(BIN)/python -m optistop.report.build --out reports --seed 0 --jobs 2 $(REPORT_ARGS)

routellm: venv
	$(BIN)/python -m optistop.offline.routellm --out artifacts/routellm

# perf_analyzer: cascade vs fixed:0/1/2 at concurrency 1/4/8, 5 interleaved repeats, on a server it starts
# on free ports (about 6 min on 2 cores); also each stage model alone at concurrency 8 (the cascade's throughput
# against the ideal of its stage mix) and the controller overhead per predictor mode (bls, in_process,
# offline). For a running server (no per-mode figures unless it serves cascade_bls and cascade_local):
#   make bench BENCH_ARGS="--url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics"
bench: venv sysdeps $(MODELS) $(PREDICTOR)
	$(BIN)/python client/bench.py $(BENCH_ARGS)

# 60 s at concurrency 16 against a server it starts; prints its figures, exits non-zero on a failure.
soak: venv sysdeps
	$(BIN)/python -m optistop.reliability.soak --duration 60 --concurrency 16

# kill -9 every backend stub of a supervised server, 3 rounds, concurrency 6; prints recovery time p50/max
# and failed/degraded requests per kill (about 4-5 min on 2 cores). A 1-round version runs in `make test`.
chaos: venv sysdeps
	$(BIN)/python -m optistop.reliability.chaos --rounds 3 --concurrency 6

# Supervision at real-model speed (issue 23): the tiny family slowed to seconds per request by a test-only
# stage model, `optistop serve` supervised: collect of 100 prompts (0 errors), the cascade under 2 clients
# x 50 requests (all answered), kill -9 of a stage healed, a wedged model killed, SIGTERM exits 0. Prints
# its figures. A short version (8 prompts, 2 x 2 requests) runs in `make test`.
real-speed: venv sysdeps $(MODELS) $(PREDICTOR)
	OPTISTOP_REAL_SPEED=full $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/e2e/test_real_speed_e2e.py

# The TensorRT-LLM path without a GPU: every convert/build command and rendered config, nothing touched.
gpu-dry-run: venv
	build/engines.sh --dry-run
	$(BIN)/python -m optistop.render --profile llmapi --spec build/qwen2.5-llmapi.toml --out llmapi_repository --dry-run
	PYTHON=$(BIN)/python build/gpu-check.sh --dry-run

lock: venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^optistop' > requirements.lock.new
	@echo "review requirements.lock.new and move it over requirements.lock"

clean:
	rm -rf $(VENV) $(GP_VENV) artifacts .pytest_cache .ruff_cache
