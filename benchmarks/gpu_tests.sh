#!/usr/bin/env bash
# The tests of the library's backend-dependent paths, run on the lent GPU: layers, models,
# attention (cuDNN where 'auto' picks it), the depthwise convolution's GPU form, generation, the
# checkpoint importers, each against its torch / transformers reference as on CPU. float32
# matmuls at full precision (XLA's GPU default is TF32, which the float32 parity tolerances do
# not allow) and optimised code generation (the CPU suite's -O0 switch off). One process per
# 8 pytest workers shares the GPU (no preallocation). Tests that need 8 devices fail here by
# construction (one GPU): read the failures with that in mind.
#   bash benchmarks/gpu_tests.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_tests.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/gpu_step.sh"
record_device
export JAX_PLATFORMS=cuda,cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_DEFAULT_MATMUL_PRECISION=highest JAX_DISABLE_MOST_OPTIMIZATIONS=0
files=(conv_paths conformer transformer transformer_switches speech_models layers zoo_mobile
  cross_entropy generation hf_import models rnn masked_lm bert_switches)
paths=()
for name in "${files[@]}"; do paths+=("$here/../tests/test_$name.py"); done
step gpu_tests "${GPU_TESTS_LIMIT:-240}" python3 -m pytest -q -n 8 -m "not slow" -p no:cacheprovider \
  -rfE --junitxml "$out/gpu_tests.xml" "${paths[@]}"
