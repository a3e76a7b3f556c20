# Two entry points (README): `make serve` and `make test`. Every target sets up what it needs, idempotently.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS := models/tiny/manifest.json
PREDICTOR := model_repository/quality_predictor/1/model.onnx
export PYTHONHASHSEED := 0

.PHONY: help venv sysdeps lint test test-unit test-contract test-parity test-e2e serve models-train models-eval collect predictor report bench soak \
	gpu-dry-run routellm lock clean

help:
	@echo "make serve   - set up everything and serve the embedded cascade on 127.0.0.1 (HTTP 8000, gRPC 8001)"
	@echo "make test    - set up everything and run lint + the whole test suite"
	@echo "make models-train | models-eval | collect | predictor | report | bench | soak"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Debian libraries the embedded server stack links: the Python-backend stub needs libpython3.X.so,
# perf_analyzer needs libb64. Installed only when missing (CI runs as root on a fresh machine).
sysdeps:
	@bash scripts/sysdeps.sh

lint: venv
	$(BIN)/ruff check .

test: venv sysdeps lint
	$(BIN)/python -m pytest -q -ra

# One tier alone (markers set by folder in tests/conftest.py): make test-unit | test-contract | test-parity | test-e2e
test-unit test-contract test-parity test-e2e: test-%: venv sysdeps
	$(BIN)/python -m pytest -q -ra -m $*

serve: venv sysdeps $(MODELS) $(PREDICTOR)
	$(BIN)/optistop serve

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

$(PREDICTOR):
	$(MAKE) predictor

# Issue 12's acceptance on every data set -> reports/ (REPORT_ARGS="--mmlupro-limit 2000" for a shorter run).
report: venv
	test -f artifacts/tiny_replay.jsonl || $(MAKE) collect predictor
	$(BIN)/python -m optistop.report.build --out reports --seed 0 --jobs 2 $(REPORT_ARGS)

routellm: venv
	$(BIN)/python -m optistop.offline.routellm --out artifacts/routellm

# perf_analyzer: cascade vs fixed:0/1/2 at concurrency 1/4/8, 5 interleaved repeats, on a server it starts
# on free ports (about 5 min on 2 cores). For a running server:
#   make bench BENCH_ARGS="--url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics"
bench: venv sysdeps $(MODELS) $(PREDICTOR)
	$(BIN)/python client/bench.py $(BENCH_ARGS)

# 60 s at concurrency 16 against a server it starts; prints its figures, exits non-zero on a failure.
soak: venv sysdeps
	$(BIN)/python -m optistop.perf.soak --duration 60 --concurrency 16

# The TensorRT-LLM path without a GPU: every convert/build command and rendered config, nothing touched.
gpu-dry-run: venv
	build/engines.sh --dry-run

lock: venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^optistop' > requirements.lock.new
	@echo "review requirements.lock.new and move it over requirements.lock"

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache
