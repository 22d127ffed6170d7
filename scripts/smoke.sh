#!/usr/bin/env bash
# The load tool's smoke preset against a private local stack, with thresholds (CI runs this).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -q -p loadtest
out=${SMOKE_OUT:-$root/target/smoke}
mkdir -p "$out"
exec scripts/with-stack.sh bash -c '
  target/debug/loadtest --state "$STACK_STATE" --preset smoke --users 4 --quiet \
    --threshold "errors:rate<0.01" \
    --threshold "http_req_duration:p(95)<1000" \
    --threshold "session_e2e:p(95)<30000" \
    --summary-json "'"$out"'/smoke.json" --html "'"$out"'/smoke.html"'
