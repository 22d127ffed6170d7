#!/usr/bin/env bash
# Runs a command against a private local stack (`local up --no-demo`), then stops the stack.
# The command sees STACK_STATE (the stack's state.json: gateway URL, dev key, ...).
#   scripts/with-stack.sh target/debug/loadtest --state '$STACK_STATE' --preset smoke
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=$(mktemp -d "$root/target/stack-XXXXXX")
export LOCAL_STACK_DIR="$dir"
cargo build -q -p local-stack --bin local
"$root/target/debug/local" up --no-demo --state-dir "$dir" >"$dir/up.log" 2>&1 &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap stop EXIT INT TERM
for _ in $(seq 1 1200); do
  if [ -f "$dir/state.json" ] && grep -q "\"pid\": *$pid\b" "$dir/state.json"; then break; fi
  kill -0 "$pid" 2>/dev/null || { tail -40 "$dir/up.log" >&2; echo "local up exited early" >&2; exit 1; }
  sleep 0.5
done
[ -f "$dir/state.json" ] || { tail -40 "$dir/up.log" >&2; echo "local up was not ready in time" >&2; exit 1; }
export STACK_STATE="$dir/state.json"
echo "local stack ready ($STACK_STATE)" >&2
"$@"
