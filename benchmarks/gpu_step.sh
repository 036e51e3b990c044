# Sourced by the GPU scripts (gpu_session.sh, gpu_profile.sh, gpu_logits.sh, gpu_lm.sh) once
# they have set $out: creates it and unbuffers Python's output for the logs.
mkdir -p "$out"
export PYTHONUNBUFFERED=1

# step NAME SECONDS COMMAND...: runs COMMAND under a timeout, logs to $out/NAME.log, prints its
# exit status and time and the log's last lines, so one slow compile cannot cost the rest.
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - start)) s (limit $limit)"; tail -n 15 "$out/$name.log"
}

# record_device: the GPU, its driver and the library versions, printed and kept in $out/device.txt.
record_device() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee "$out/device.txt"
  python3 - <<'PY' | tee -a "$out/device.txt"
import importlib
import jax
names = ("jax", "flax", "optax", "orbax.checkpoint", "torch")
versions = []
for name in names:
    try:
        versions.append(f"{name} {importlib.import_module(name).__version__}")
    except ImportError:
        pass
print(", ".join(versions), jax.devices())
PY
}
