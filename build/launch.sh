#!/usr/bin/env bash
# Serve a repository rendered by build/engines.sh (or by render --profile llmapi, whose stages run the
# project's LLM-API stage model): one tritonserver; for engines in TensorRT-LLM orchestrator mode under
# mpirun, so the TP-1, TP-2 and TP-4 engines (each on its own gpu_device_ids) live in one server next to
# the cascade and quality_predictor Python models (once `optistop calibrate` installed them).
#
#   build/launch.sh                       serve ./engines/model_repository on HTTP 8000, gRPC 8001, metrics 8002
#   build/launch.sh --dry-run             print the environment and command only
#
# Same command line as TensorRT-LLM's `launch_triton_server.py --multi-model --world_size=1`:
# TRTLLM_ORCHESTRATOR=1 makes each tensorrt_llm model spawn its own MPI workers (trtllmExecutorWorker)
# on its GPUs; pinned/CUDA memory pools are off (tensors between Python models stay on CPU);
# --disable-auto-complete-config, so every config.pbtxt declares all of its tensors.
#
# Options: --repo DIR (default <engines-dir>/model_repository, $ENGINES_DIR or ./engines),
#   --http-port N, --grpc-port N, --metrics-port N, --log-file FILE, --dry-run.
set -euo pipefail

SCRIPT=launch.sh
# shellcheck source=build/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
repo=${ENGINES_DIR:-$ROOT/engines}/model_repository
http=8000
grpc=8001
metrics=8002
log_file=""
dry_run=0


while [ $# -gt 0 ]; do
  case $1 in
    --repo) repo=$(value "$@"); shift 2 ;;
    --http-port) http=$(value "$@"); shift 2 ;;
    --grpc-port) grpc=$(value "$@"); shift 2 ;;
    --metrics-port) metrics=$(value "$@"); shift 2 ;;
    --log-file) log_file=$(value "$@"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

compgen -G "$repo/*/config.pbtxt" >/dev/null ||
  die "no models in $repo: build them first (build/engines.sh), or pass --repo"

# A config's parameter value: the string_value inside its key's parameters block (protobuf text format
# puts it on the key's line or a line or two below, and leaves an empty value out: then it prints nothing).
param() {
  awk -v key="key: \"$2\"" 'index($0, key) { on = 1 }
    on && /string_value: "/ { sub(/.*string_value: "/, ""); sub(/"[^"]*$/, ""); print; exit }
    on && /^}/ { exit }' "$1"
}

need_gpus=0
engines=0
for cfg in "$repo"/*/config.pbtxt; do
  dir=$(dirname "$cfg")
  if [ -f "$dir/1/model.yaml" ]; then
    ids=$(param "$cfg" gpu_device_ids)
    for g in ${ids//[,;]/ }; do [ $((g + 1)) -le "$need_gpus" ] || need_gpus=$((g + 1)); done
    continue
  fi
  grep -q '^backend: "tensorrtllm"' "$cfg" || continue
  engines=1
  engine=$(param "$cfg" gpt_model_path)
  [ "$dry_run" = 1 ] || [ -f "$engine/config.json" ] ||
    die "$(dirname "$cfg"): engine $engine is missing (run build/engines.sh)"
  ids=$(param "$cfg" gpu_device_ids)
  for g in ${ids//[,;]/ }; do [ $((g + 1)) -le "$need_gpus" ] || need_gpus=$((g + 1)); done
done

if [ "$dry_run" = 1 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  ngpu=$need_gpus                       # dry run on a machine without GPUs: the repository's view
else
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: serving TensorRT-LLM engines needs NVIDIA GPUs"
  ngpu=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU ' || true)
  [ "$ngpu" -ge "$need_gpus" ] || die "$ngpu GPU(s) visible, the repository's gpu_device_ids need $need_gpus"
fi

cmd=(tritonserver "--model-repository=$repo"
  "--http-port=$http" "--grpc-port=$grpc" "--metrics-port=$metrics"
  --disable-auto-complete-config "--backend-config=python,shm-region-prefix-name=prefix0_"
  --pinned-memory-pool-byte-size=0 --enable-peer-access=false)
for ((j = 0; j < ngpu; j++)); do cmd+=("--cuda-memory-pool-byte-size=$j:0"); done
[ -z "$log_file" ] || cmd+=(--log-verbose=1 "--log-file=$log_file")

# orchestrator mode under mpirun is the C++ backend's (launch_triton_server.py --multi-model); llmapi
# stages start their own TP workers through the LLM API and must not inherit an MPI job
if [ "$engines" = 1 ]; then
  export TRTLLM_ORCHESTRATOR=1 TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1
  cmd=(mpirun --allow-run-as-root -n 1 "${cmd[@]}")
fi
if [ "$dry_run" = 1 ]; then
  [ "$engines" = 0 ] || echo "TRTLLM_ORCHESTRATOR=1 TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1 \\"
  printf '%q ' "${cmd[@]}" | sed 's/ $//'
  printf '\n'
  exit 0
fi
for tool in "${cmd[0]}" tritonserver; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run inside the trtllm container (docker/)"
done
echo "launch.sh: serving $repo on HTTP $http, gRPC $grpc, metrics $metrics ($ngpu GPUs)" >&2
exec "${cmd[@]}"
