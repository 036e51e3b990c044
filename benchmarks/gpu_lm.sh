#!/usr/bin/env bash
# GPU figures of the LM benchmark in one go (what benchmarks/RESULTS.md records):
# jaxdl's bare step for GPT-2 124M and ~350M (T=1024, bf16) with cuDNN fused attention ('auto')
# and with XLA's attention, then the PyTorch peer (torch_peers.py gpt, torch.compile).
#   bash benchmarks/gpu_lm.sh OUT_DIR [PEERS_DIR]   # PEERS_DIR holds torch_peers.py (../shared/peers)
set -uo pipefail
out=${1:?usage: gpu_lm.sh OUT_DIR [PEERS_DIR]}
peers=${2:-../shared/peers}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/gpu_step.sh"
record_device
for impl in auto xla; do
  timeout 200 python3 "$here/lm_throughput.py" --full --no-peer --out "$out/lm_full_$impl.json" \
    --config.model.attention_impl=$impl 2>&1 | tee "$out/lm_full_$impl.log"
  if [ "$impl" = auto ] && [ -f "$peers/torch_peers.py" ]; then
    timeout 240 python3 "$peers/torch_peers.py" gpt 2>&1 | tee "$out/torch_peers_gpt.log"
  fi
done
