#!/usr/bin/env bash
# The GPU figures not yet measured, in one device call, each side under its own timeout so that
# one slow compile cannot cost the rest: jaxdl's Conformer-M step then torchaudio's (issue 16),
# jaxdl's ResNet-50 step then torchvision's (torch_peers.py resnet), the default experiment's
# time to 98% on the GPU. jaxdl and torch run in separate processes, one after the other.
#   bash benchmarks/gpu_session.sh OUT_DIR [PEERS_DIR]   # PEERS_DIR: ../shared/peers (default)
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [PEERS_DIR]}
peers=${2:-../shared/peers}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/gpu_step.sh"
record_device
step conformer_jaxdl 140 python3 "$here/conformer_throughput.py" --full --no-peer --out "$out/conformer_full.json"
# torch_conformer.py times S and M; only M is compared here, so its S row is left out for time.
sed 's/for name, d, h, ffn, L in \[("S", 144, 4, 576, 16), /for name, d, h, ffn, L in [/' \
  "$peers/torch_conformer.py" >"$out/torch_conformer_m.py"
step conformer_torch 140 python3 "$out/torch_conformer_m.py"
step resnet50_jaxdl 110 python3 "$here/train_throughput.py" --full --out "$out/resnet50_full.json"
step resnet50_torch 130 python3 "$peers/torch_peers.py" resnet
step digits_tta 45 python3 "$here/digits_time_to_accuracy.py" --repeats 1 --out "$out/digits_tta.json"
