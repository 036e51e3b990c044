# Sourced by the GPU session scripts (gpu_session.sh, gpu_profile.sh); expects $out to be set.
# step NAME SECONDS COMMAND...: runs COMMAND under a timeout, logs to $out/NAME.log, prints its
# exit status and time and the log's last lines, so one slow compile cannot cost the rest.
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - start)) s (limit $limit)"; tail -n 15 "$out/$name.log"
}
