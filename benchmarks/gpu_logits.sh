#!/usr/bin/env bash
# One device call (about 9 min on an H200) for what the last GPU profile pointed at:
# GPT-2 124M's bare step (unscanned layers, fused q/k/v) with float32 logits and with bf16 logits
# fed to jaxdl.tasks.cross_entropy (model.cast_logits_to_fp32), ~350M with bf16 logits, then
# Conformer-M (absolute positions, per-tap depthwise convolution) with CUDA graphs on, XLA's
# default (benchmarks/RESULTS.md's profile ran with them off).
#   bash benchmarks/gpu_logits.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_logits.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/gpu_step.sh"
record_device
lm=("$here/lm_throughput.py" --full --no-peer --config.model.scan_layers=false
  --config.model.qkv_fused=true)
for cast in true false; do
  step "lm_124m_fp32logits_$cast" 110 python3 "${lm[@]}" --full-sizes 124m \
    --config.model.cast_logits_to_fp32=$cast --out "$out/lm_124m_fp32logits_$cast.json"
done
step conformer_m_graphs 200 python3 "$here/conformer_throughput.py" --full --no-peer \
  --positions absolute --out "$out/conformer_m_graphs.json"
step lm_350m_fp32logits_false 170 python3 "${lm[@]}" --full-sizes 350m \
  --config.model.cast_logits_to_fp32=false --out "$out/lm_350m_fp32logits_false.json"
