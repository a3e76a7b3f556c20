#!/usr/bin/env bash
# One-stage smoke test of a GPU profile on a GPU node, inside the image (docker/Dockerfile): builds
# (trtllm) or renders (llmapi) the smallest stage, serves it with the cascade and predictor, sends one
# request to the stage and one to the cascade, and checks that log-probs are non-zero and that the
# answer stops at an end token before its budget. Exits 0 only if every check passes.
#
#   build/gpu-check.sh --dry-run                      print the steps; touch nothing (works anywhere)
#   build/gpu-check.sh                                Qwen2.5-7B-Instruct, TensorRT engine path
#   build/gpu-check.sh --profile build/qwen2.5-llmapi.toml   the same stage on the PyTorch backend
#
# Options:
#   --profile FILE     GPU profile (default build/qwen2.5-trtllm.toml); *-llmapi.toml uses the llmapi path
#   --model-dir DIR    parent dir of the HF checkpoints (default: the profile's checkpoint paths)
#   --work-dir DIR     engines and repository (default ./gpu-check)
#   --port N           HTTP port of the server it starts (default 8000)
#   --timeout-s N      how long to wait for the server to be ready (default 1800)
#   --dry-run          print what it would run
set -euo pipefail

SCRIPT=gpu-check.sh
# shellcheck source=build/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
profile=$ROOT/build/qwen2.5-trtllm.toml
model_dir=""
work=$PWD/gpu-check
port=8000
ready_s=1800
dry_run=0

while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$(value "$@"); shift 2 ;;
    --model-dir) model_dir=$(value "$@"); shift 2 ;;
    --work-dir) work=$(value "$@"); shift 2 ;;
    --port) port=$(value "$@"); shift 2 ;;
    --timeout-s) ready_s=$(value "$@"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[ -f "$profile" ] || die "profile $profile not found"
profile=$(cd -- "$(dirname -- "$profile")" && pwd)/$(basename -- "$profile")
case $port$ready_s in *[!0-9]*) die "--port and --timeout-s take whole numbers" ;; esac
case $profile in *llmapi*) kind=llmapi ;; *) kind=trtllm ;; esac
PYTHON=${PYTHON:-python3}
repo=$work/model_repository
one=$work/one-stage.toml

extra=()
[ -z "$model_dir" ] || extra+=(--model-dir "$model_dir")
if [ "$kind" = trtllm ]; then
  prepare=("$ROOT/build/engines.sh" --profile "$one" --engines-dir "$work/engines" --out "$repo" "${extra[@]}")
else
  prepare=("$PYTHON" -m optistop.serving.render --profile llmapi --spec "$one" --out "$repo"
    --with-models "$ROOT/model_repository" "${extra[@]}")
fi
serve=("$ROOT/build/launch.sh" --repo "$repo" --http-port "$port" --grpc-port $((port + 1))
  --metrics-port $((port + 2)) --log-file "$work/server.log")
cut=("$PYTHON" -m optistop.serving.gpu_check --cut "$profile" --out "$one")
check=("$PYTHON" -m optistop.serving.gpu_check --spec "$one" --kind "$kind" --url "127.0.0.1:$port")

if [ "$dry_run" = 1 ]; then
  echo "# gpu-check ($kind): profile $profile cut to its first stage"
  printf '%q ' "${cut[@]}"; printf '\n'
  printf '%q ' "${prepare[@]}"; printf '\n'
  printf '%q ' "${serve[@]}"; printf '&\n'
  echo "# wait up to ${ready_s}s for http://127.0.0.1:$port/v2/health/ready"
  printf '%q ' "${check[@]}"; printf '\n'
  exit 0
fi

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: run this on a GPU node, inside the image (docker/)"
command -v tritonserver >/dev/null 2>&1 || die "tritonserver not found: run inside the trtllm image (docker/)"
mkdir -p "$work"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
"${cut[@]}"
"${prepare[@]}"
"${serve[@]}" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for ((t = 0; t < ready_s; t += 5)); do
  curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || die "the server exited while loading; see $work/server.log"
  sleep 5
done
curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 ||
  die "the server was not ready within ${ready_s}s; see $work/server.log"
"${check[@]}"
