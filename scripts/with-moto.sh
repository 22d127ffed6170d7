#!/usr/bin/env bash
# Runs a command with a private moto server on a free loopback port, then stops it.
# The command sees MOTO_ENDPOINT and AWS_ENDPOINT_URL pointing at it, and dummy credentials.
#   scripts/with-moto.sh cargo test --workspace
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$("$root/scripts/venv.sh")
mkdir -p "$root/target"
log=$(mktemp "$root/target/moto-XXXXXX.log")
"$bin/python" "$root/scripts/moto_server.py" --port 0 >"$log" 2>&1 &
moto_pid=$!
stop() {
  # moto takes many seconds to exit on SIGTERM; nothing of it needs to be kept.
  kill -KILL "$moto_pid" 2>/dev/null || true
  wait "$moto_pid" 2>/dev/null || true
}
trap stop EXIT INT TERM
endpoint=""
for _ in $(seq 1 150); do
  endpoint=$(sed -n 's/^moto listening on //p' "$log")
  [ -n "$endpoint" ] && break
  kill -0 "$moto_pid" 2>/dev/null || { echo "moto failed to start; see $log" >&2; exit 1; }
  sleep 0.2
done
[ -n "$endpoint" ] || { echo "moto did not start in time; see $log" >&2; exit 1; }
export MOTO_ENDPOINT="$endpoint"
export AWS_ENDPOINT_URL="$MOTO_ENDPOINT"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
echo "moto listening on $MOTO_ENDPOINT (log: $log)" >&2
"$@"
