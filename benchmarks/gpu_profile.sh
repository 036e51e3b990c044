#!/usr/bin/env bash
# Where the GPU steps of issues 15 and 16 spend their time, in one device call (about 8 min):
# jaxdl's Conformer-M step (absolute positions) with cuDNN's grouped convolution ('plain') and
# with the per-tap depthwise form ('custom'), then GPT-2 124M (unscanned layers, fused q/k/v:
# the best settings of benchmarks/RESULTS.md).
# Each run prints its op table (benchmarks/op_profile.py); traces and JSON land in OUT_DIR.
#   bash benchmarks/gpu_profile.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_profile.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/gpu_step.sh"
record_device
# CUDA graphs off (an empty --xla_gpu_enable_command_buffer): under them the trace shows one
# command_buffer op per step instead of its kernels. Conformer-M needs ~75 s of init and ~60 s
# of compilation on an H200, hence its limits.
flags=--xla-flags=--xla_gpu_enable_command_buffer=
conformer=("$here/conformer_throughput.py" --full --no-peer --positions absolute --warmup 3
  --steps 10 --profile-dir "$out/traces" "$flags")
step conformer_plain 230 python3 "${conformer[@]}" --conv-impl plain --out "$out/conformer_plain.json"
step conformer_custom 230 python3 "${conformer[@]}" --conv-impl custom --out "$out/conformer_custom.json"
step lm_124m 110 python3 "$here/lm_throughput.py" --full --no-peer --full-sizes 124m --warmup 3 \
  --steps 10 --profile-dir "$out/traces" "$flags" --out "$out/lm_124m.json" \
  --config.model.scan_layers=false --config.model.qkv_fused=true
# The traces stay on the device (large, and nested too deep to come back); each run's op tables
# are in its log and in OUT_DIR/traces/<label>_ops.json.
find "$out/traces" -name "*.xplane.pb" -delete 2>/dev/null
true
