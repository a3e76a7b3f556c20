#!/usr/bin/env bash
# Smoke test of the GPU path on a GPU node, inside the image (docker/Dockerfile), in the real order:
# build (or render) the stages, serve the stages alone, log-prob self-test of every stage, collect and
# label their answers, `optistop calibrate` a cascade for exactly this spec, serve the cascade, and send it
# one request per policy (fixed:0, optimal, router). Exits 0 only if every check passes.
#
# Which stages: with the profile's Qwen2.5-7B-Instruct checkpoint mounted, the profile cut to its first
# stage (one GPU); without it, the tiny-trt family (models/tiny-trt, head size 64, shipped with the project:
# build/tiny-trtllm.toml, all three stages on GPU 0), so any single GPU runs the whole sequence.
#
#   build/gpu-check.sh --dry-run                      print every step; touch nothing (works anywhere)
#   build/gpu-check.sh                                TensorRT engine path
#   build/gpu-check.sh --profile build/qwen2.5-llmapi.toml   PyTorch backend (the project's LLM-API stage)
#   docker compose -f docker/compose.yaml run --rm gpu-check  the same in the image, work dir on the engines volume
#
# Options:
#   --profile FILE     GPU profile (default build/qwen2.5-trtllm.toml); *-llmapi.toml uses the PyTorch backend
#   --model-dir DIR    parent dir of the HF checkpoints (default: the profile's checkpoint paths)
#   --work-dir DIR     engines, repository, collected answers, logs: put it on a volume, not in the container
#                      layer (default $ENGINES_DIR/gpu-check when ENGINES_DIR is set, else ./gpu-check)
#   --port N           HTTP port of the servers it starts (gRPC N+1, metrics N+2; default 8000)
#   --prompts N        collection prompts (default 48; Qwen: addition, grader number; tiny-trt: the task
#                      suite, every cell alike, grader exact)
#   --timeout-s N      how long to wait for a server to be ready (default 1800)
#   --dry-run          print what it would run
set -euo pipefail

SCRIPT=gpu-check.sh
# shellcheck source=build/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
profile=$ROOT/build/qwen2.5-trtllm.toml
model_dir=""
if [ -n "${ENGINES_DIR:-}" ]; then work=$ENGINES_DIR/gpu-check; else work=$PWD/gpu-check; fi
port=8000
n_prompts=48
ready_s=1800
dry_run=0

while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$(value "$@"); shift 2 ;;
    --model-dir) model_dir=$(value "$@"); shift 2 ;;
    --work-dir) work=$(value "$@"); shift 2 ;;
    --port) port=$(value "$@"); shift 2 ;;
    --prompts) n_prompts=$(value "$@"); shift 2 ;;
    --timeout-s) ready_s=$(value "$@"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[ -f "$profile" ] || die "profile $profile not found"
profile=$(cd -- "$(dirname -- "$profile")" && pwd)/$(basename -- "$profile")
case $port$ready_s$n_prompts in *[!0-9]*) die "--port, --prompts and --timeout-s take whole numbers" ;; esac
case $profile in *llmapi*) kind=llmapi ;; *) kind=trtllm ;; esac
case $work in /*) ;; *) work=$PWD/$work ;; esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

if [ "$dry_run" = 0 ]; then   # fail in seconds, in one line, where nothing can run
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: run this on a GPU node, inside the image (docker/)"
  nvidia-smi --list-gpus 2>/dev/null | grep -q '^GPU ' || die "nvidia-smi lists no GPU (driver not loaded, or the container lacks --gpus)"
  command -v tritonserver >/dev/null 2>&1 || die "tritonserver not found: run inside the trtllm image (docker/)"
fi

# The stages: the profile's first stage when its checkpoint is there, else the tiny-trt family.
first=$(PYTHONPATH="$ROOT" "$PYTHON" -c 'import sys; from pathlib import Path
from optistop.spec import load_spec
c = load_spec(sys.argv[1], check_paths=False).stages[0].checkpoint
print(Path(sys.argv[2]) / c.name if sys.argv[2] else c)' "$profile" "$model_dir") ||
  die "cannot read $profile"
if [ -f "$first/config.json" ]; then
  spec=$work/one-stage.toml
  cut=("$PYTHON" -m optistop.render.gpu_check --cut "$profile" --out "$spec")
  [ -z "$model_dir" ] || cut+=(--model-dir "$model_dir")
  what="$(basename -- "$profile") cut to its first stage ($first)"
else
  spec=$ROOT/build/tiny-trtllm.toml
  cut=()
  what="the tiny-trt family (build/tiny-trtllm.toml; no checkpoint at $first)"
fi
repo=$work/model_repository
if [ "$kind" = trtllm ]; then
  prepare=("$ROOT/build/engines.sh" --profile "$spec" --engines-dir "$work/engines" --out "$repo")
else
  prepare=("$PYTHON" -m optistop.render --profile llmapi --spec "$spec" --out "$repo")
fi
launch=("$ROOT/build/launch.sh" --repo "$repo" --http-port "$port" --grpc-port $((port + 1)) --metrics-port $((port + 2)))
serve() { exec "${launch[@]}" --log-file "$work/$1.log"; }
url=127.0.0.1:$port
selftest=("$PYTHON" -m optistop.render.gpu_check --spec "$spec" --stages --url "$url")
prompts=("$PYTHON" -m optistop.render.gpu_check --spec "$spec" --prompts "$work/prompts.jsonl" --n "$n_prompts")
collect=("$PYTHON" -m optistop.cli collect --prompts "$work/prompts.jsonl" --url "127.0.0.1:$((port + 1))"
  --spec "$spec" --out "$work/collected.jsonl" --grader)      # + what the prompts step prints (number | exact)
calibrate=("$PYTHON" -m optistop.cli calibrate "$work/collected.jsonl" --spec "$spec" --out "$repo")
policies=("$PYTHON" -m optistop.render.gpu_check --spec "$spec" --url "$url" --cascade fixed:0 optimal router)

if [ "$dry_run" = 1 ]; then
  show() { printf '%q ' "$@" | sed 's/ $//'; printf '%s\n' "${suffix:-}"; }
  echo "# gpu-check ($kind): $what; work dir $work"
  [ ${#cut[@]} = 0 ] || show "${cut[@]}"
  echo "# 1. build the stages (stage models only: no cascade until it is calibrated for this spec)"
  show "${prepare[@]}"
  echo "# 2. serve the stages; wait up to ${ready_s}s for http://$url/v2/health/ready"
  suffix=" &" show "${launch[@]}" --log-file "$work/stages.log"
  echo "# 3. log-prob self-test of every stage (non-zero output_log_probs, one per token, stops at an end token)"
  show "${selftest[@]}"
  echo "# 4. collect and label every stage's answers"
  show "${prompts[@]}"
  suffix=" \"\$(the grader it printed)\"" show "${collect[@]}"
  echo "# 5. calibrate the cascade for this spec (installs cascade + quality_predictor into the repository)"
  show "${calibrate[@]}"
  echo "# 6. stop the stage server; serve the cascade"
  suffix=" &" show "${launch[@]}" --log-file "$work/cascade.log"
  echo "# 7. one cascade request per policy"
  show "${policies[@]}"
  exit 0
fi

mkdir -p "$work"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
server=""
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true' EXIT
start() {   # start NAME: serve the repository, wait until ready
  serve "$1" &
  server=$!
  for ((t = 0; t < ready_s; t += 5)); do
    curl -sf "http://$url/v2/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || die "the server exited while loading; see $work/$1.log"
    sleep 5
  done
  die "the server was not ready within ${ready_s}s; see $work/$1.log"
}
stop() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; }

echo "gpu-check ($kind): $what; work dir $work"
[ ${#cut[@]} = 0 ] || "${cut[@]}"
rm -rf "$repo/cascade" "$repo/quality_predictor" "$work/collected.jsonl"   # a rerun calibrates afresh
"${prepare[@]}"
start stages
"${selftest[@]}"
grader=$("${prompts[@]}")
"${collect[@]}" "$grader"
"${calibrate[@]}"
stop
start cascade
"${policies[@]}"
echo "gpu-check: OK: stages served and self-tested, cascade calibrated for $(basename -- "$spec") and served"
