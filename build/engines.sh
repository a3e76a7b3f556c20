#!/usr/bin/env bash
# Build the TensorRT-LLM engines of a GPU cascade profile and render its Triton model repository.
#
#   build/engines.sh --dry-run                          print every command and rendered config; touch nothing
#   build/engines.sh                                    Qwen2.5 7B/32B/72B at TP 1/2/4 (build/qwen2.5-trtllm.toml)
#   build/engines.sh --profile build/tiny-trtllm.toml   the tiny-trt family (head size 64) at TP 1, one GPU
#   build/engines.sh --stage large                      one stage at a time (disk: that stage's share only)
#   build/launch.sh                                     then serve the stages (orchestrator mode, one server)
#
# For each stage: TensorRT-LLM's Qwen convert_checkpoint.py (--dtype, --tp_size, optional weight-only),
# trtllm-build (--gemm_plugin auto, sizes from the profile's [trtllm] table, paged context FMHA,
# --workers = TP), then `python -m optistop.render --profile trtllm` writes the stage configs. The
# repository holds the stages only: serve them, `optistop collect` + `label`, then `optistop calibrate
# --spec <profile> --out <repository>` installs the cascade and a predictor calibrated for this spec.
# Disk preflight: the engines to build + the largest converted checkpoint (one at a time; all of them with
# --keep-checkpoints) + 10% and 2 GiB margin, each sized as its HF checkpoint (halved for int8, quartered
# for int4 weight-only).
# A stage is skipped when its engine's inputs (plan row, TensorRT-LLM version, converter, HF files) are
# unchanged; optistop-build.json in each engine dir records them and the TensorRT-LLM version.
#
# Options:
#   --profile FILE       GPU profile (default build/qwen2.5-trtllm.toml)
#   --stage NAME         only this stage (repeatable)
#   --model-dir DIR      parent dir of the HF checkpoints (default: the profile's checkpoint paths)
#   --engines-dir DIR    engines and converted checkpoints (default ./engines, or $ENGINES_DIR)
#   --out DIR            model repository to write (default <engines-dir>/model_repository)
#   --force              rebuild even if up to date
#   --keep-checkpoints   keep the converted TensorRT-LLM checkpoints (as large as the model)
#   --dry-run            print the plan, commands and configs only
# Environment: PYTHON (runs optistop.render.repo; default .venv/bin/python, else python3), TRTLLM_PYTHON
#   (runs the converter; default python3), QWEN_CONVERT (TensorRT-LLM's
#   examples/models/core/qwen/convert_checkpoint.py; default: the image's /app/examples copy).
set -euo pipefail

SCRIPT=engines.sh
# shellcheck source=build/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
profile=$ROOT/build/qwen2.5-trtllm.toml
engines=${ENGINES_DIR:-$ROOT/engines}
out=""
model_dir=""
dry_run=0
force=0
keep=0
stage_args=()


while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$(value "$@"); shift 2 ;;
    --stage) stage_args+=(--stage "$(value "$@")"); shift 2 ;;
    --model-dir) model_dir=$(value "$@"); shift 2 ;;
    --engines-dir) engines=$(value "$@"); shift 2 ;;
    --out) out=$(value "$@"); shift 2 ;;
    --force) force=1; shift ;;
    --keep-checkpoints) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[ -f "$profile" ] || die "profile $profile not found"
mkabs() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
engines=$(mkabs "$engines")
out=$(mkabs "${out:-$engines/model_repository}")
ckpts=$engines/trtllm_checkpoints
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
TRTLLM_PYTHON=${TRTLLM_PYTHON:-python3}

render() {
  local extra=()
  [ -n "$model_dir" ] && extra+=(--model-dir "$model_dir")
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m optistop.render --profile trtllm \
    --spec "$profile" --engines-dir "$engines" "${extra[@]}" "${stage_args[@]}" "$@"
}

# One row per stage; columns as optistop.render.repo.PLAN_COLUMNS ("-" = empty). Spec errors end here.
plan=$(render --plan --checkpoints-dir "$ckpts") || exit 2

find_convert() {
  local c
  for c in "${QWEN_CONVERT:-}" /app/examples/models/core/qwen/convert_checkpoint.py \
    /app/tensorrt_llm/examples/models/core/qwen/convert_checkpoint.py; do
    if [ -n "$c" ] && [ -f "$c" ]; then printf '%s' "$c"; return 0; fi
  done
  return 1
}
convert=$(find_convert) || convert=""

# Fill the arrays convert_cmd and build_cmd for one plan row (PLAN_COLUMNS order).
commands_for() {
  local hf_dir=$3 tp=$5 ckpt_dir=$7 engine_out=$8 dtype=$9 weight_only=${10}
  local max_batch=${11} max_input=${12} max_seq=${13} max_tokens=${14}
  convert_cmd=("$TRTLLM_PYTHON" "${convert:-/app/examples/models/core/qwen/convert_checkpoint.py}" --model_dir "$hf_dir" --output_dir "$ckpt_dir"
    --dtype "$dtype" --tp_size "$tp" --workers "$tp")
  if [ "$weight_only" != "-" ]; then
    convert_cmd+=(--use_weight_only --weight_only_precision "$weight_only")
  fi
  build_cmd=(trtllm-build --checkpoint_dir "$ckpt_dir" --output_dir "$engine_out" --gemm_plugin auto
    --max_batch_size "$max_batch" --max_input_len "$max_input" --max_seq_len "$max_seq"
    --max_num_tokens "$max_tokens" --use_paged_context_fmha enable --workers "$tp")
}

show() { printf '%q ' "$@" | sed 's/ $//'; printf '\n'; }

if [ "$dry_run" = 1 ]; then
  echo "# dry run: profile $profile; nothing is written"
  while IFS=$'\t' read -r -a row; do
    commands_for "${row[@]}"
    src=${row[3]}
    [ "$src" != "-" ] || src=${row[2]}
    echo "# stage ${row[0]} -> ${row[1]}: $src at TP ${row[4]} on GPUs ${row[5]}"
    show "${convert_cmd[@]}"
    show "${build_cmd[@]}"
  done <<<"$plan"
  echo "# then: render the repository ($out), copying cascade + predictor from $ROOT/model_repository"
  render --out "$out" --dry-run
  exit 0
fi

# --- preflight: everything that can be missing, before hours of conversion --------------------------
command -v nvidia-smi >/dev/null 2>&1 ||
  die "nvidia-smi not found: engines need an NVIDIA GPU and driver (use docker/: docker compose run --rm engines)"
ngpu=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU ' || true)
[ "$ngpu" -ge 1 ] || die "nvidia-smi lists no GPU (driver not loaded, or the container lacks --gpus)"
command -v trtllm-build >/dev/null 2>&1 ||
  die "trtllm-build not found: run inside nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 (docker/Dockerfile)"
trt_version=$("$TRTLLM_PYTHON" -c 'import tensorrt_llm; print(tensorrt_llm.__version__)' 2>/dev/null | tail -n 1) ||
  die "$TRTLLM_PYTHON cannot import tensorrt_llm (use the trtllm container's python3, or set TRTLLM_PYTHON)"
[ -n "$convert" ] ||
  die "Qwen convert_checkpoint.py not found: set QWEN_CONVERT to TensorRT-LLM v$trt_version's examples/models/core/qwen/convert_checkpoint.py"
conv_sum=$(sha256sum "$convert" | cut -d' ' -f1)

# fingerprint ROW...: what an engine depends on (plan row, TensorRT-LLM version, converter, HF files).
fingerprint() {
  {
    printf '%s\n' "$*" "$trt_version" "$conv_sum"
    find -L "$3" -maxdepth 1 -type f -printf '%f %s %T@\n' | sort
  } | sha256sum | cut -d' ' -f1
}
# up_to_date ROW...: the engine in column 8 was built from exactly these inputs (and --force is off).
up_to_date() {
  local stamp=$8/optistop-build.json
  [ "$force" = 0 ] && [ -f "$8/config.json" ] && [ -f "$stamp" ] &&
    grep -q "\"fingerprint\": \"$(fingerprint "$@")\"" "$stamp"
}

need_gpus=1
engines_kb=0
ckpt_max_kb=0
ckpt_sum_kb=0
while IFS=$'\t' read -r -a row; do
  name=${row[0]} hf_dir=${row[2]} hf_repo=${row[3]} gpus=${row[5]}
  [ -f "$hf_dir/config.json" ] ||
    die "stage $name: no Hugging Face checkpoint at $hf_dir (config.json missing); download ${hf_repo/#-/the model} there or pass --model-dir"
  grep -q '"Qwen2ForCausalLM"' "$hf_dir/config.json" ||
    die "stage $name: $hf_dir/config.json is not a Qwen2ForCausalLM checkpoint"
  compgen -G "$hf_dir/*.safetensors" >/dev/null || die "stage $name: no *.safetensors in $hf_dir"
  head_dim=$("$PYTHON" -c 'import json, sys; c = json.load(open(sys.argv[1]))
print(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])' "$hf_dir/config.json") ||
    die "stage $name: cannot read hidden_size/num_attention_heads from $hf_dir/config.json"
  [ "$head_dim" -ge 32 ] ||
    note "stage $name: head_dim $head_dim; TensorRT-LLM's attention kernels start at 32, the build may fail"
  for g in ${gpus//,/ }; do [ $((g + 1)) -le "$need_gpus" ] || need_gpus=$((g + 1)); done
  # disk only for what this run builds: an up-to-date engine is skipped below
  if ! up_to_date "${row[@]}"; then
    kb=$(du -skL "$hf_dir" | cut -f1)
    case ${row[9]} in int8) kb=$((kb / 2)) ;; int4) kb=$((kb / 4)) ;; esac
    engines_kb=$((engines_kb + kb))
    ckpt_sum_kb=$((ckpt_sum_kb + kb))
    [ "$kb" -le "$ckpt_max_kb" ] || ckpt_max_kb=$kb
  fi
done <<<"$plan"
# peak: every engine built + the converted checkpoint being built (all of them when they are kept)
if [ "$keep" = 1 ]; then need_kb=$((engines_kb + ckpt_sum_kb)); else need_kb=$((engines_kb + ckpt_max_kb)); fi
[ "$need_kb" = 0 ] || need_kb=$((need_kb + need_kb / 10 + 2097152))
mkdir -p "$engines"
free_kb=$(df -Pk "$engines" | awk 'NR == 2 { print $4 }')
[ "$free_kb" -ge "$need_kb" ] ||
  die "not enough disk under $engines: $((free_kb / 1048576)) GiB free, about $((need_kb / 1048576)) GiB needed"
[ "$ngpu" -ge "$need_gpus" ] ||
  note "$ngpu GPU(s) here: enough to build, but serving this profile needs $need_gpus (GPU ids in $profile)"
case $trt_version in
  0.* | 1.0 | 1.0.* | 1.1 | 1.1.* | 1.2 | 1.2.*) ;;
  *) note "TensorRT-LLM $trt_version: the TensorRT engine path may be gone; 1.2.1 (container 26.07) is known good" ;;
esac

# --- build -------------------------------------------------------------------------------------------
mkdir -p "$engines/logs"
while IFS=$'\t' read -r -a row; do
  name=${row[0]} hf_dir=${row[2]} ckpt_dir=${row[6]} engine_dir=${row[7]}
  if up_to_date "${row[@]}"; then
    echo "stage $name: up to date ($engine_dir, TensorRT-LLM $trt_version)"
    continue
  fi
  fingerprint=$(fingerprint "${row[@]}")
  partial=$engine_dir.partial
  rm -rf "$partial" "$ckpt_dir"
  row[7]=$partial                                 # build there: only a finished engine gets the real name
  commands_for "${row[@]}"
  echo "stage $name: converting $hf_dir (TP ${row[4]}); log $engines/logs/$name-convert.log"
  show "${convert_cmd[@]}"
  "${convert_cmd[@]}" >"$engines/logs/$name-convert.log" 2>&1 ||
    die "stage $name: convert_checkpoint.py failed; see $engines/logs/$name-convert.log"
  echo "stage $name: building $engine_dir; log $engines/logs/$name-build.log"
  show "${build_cmd[@]}"
  "${build_cmd[@]}" >"$engines/logs/$name-build.log" 2>&1 ||
    die "stage $name: trtllm-build failed; see $engines/logs/$name-build.log"
  "$PYTHON" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2])), indent=1))' \
    stage "$name" model "${row[1]}" tensorrt_llm_version "$trt_version" fingerprint "$fingerprint" \
    hf_dir "$hf_dir" tp_size "${row[4]}" gpu_ids "${row[5]}" built_at "$(date -u +%FT%TZ)" \
    convert "$(show "${convert_cmd[@]}")" build "$(show "${build_cmd[@]}")" >"$partial/optistop-build.json"
  rm -rf "$engine_dir"
  mv "$partial" "$engine_dir"
  [ "$keep" = 1 ] || rm -rf "$ckpt_dir"
done <<<"$plan"

render --out "$out"
echo "stages ready: $out (the stage models only; the cascade joins them once calibrated for this spec)"
echo "next: build/launch.sh --repo $(printf '%q' "$out")   # serve the stages"
echo "      optistop collect ... && optistop label ...    # answers of every stage on your prompts"
echo "      optistop calibrate LABELLED.jsonl --spec $(printf '%q' "$profile") --out $(printf '%q' "$out")"
echo "      build/launch.sh --repo $(printf '%q' "$out")   # serve the cascade"
