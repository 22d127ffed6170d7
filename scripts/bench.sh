#!/usr/bin/env bash
# Every benchmark, then docs/PERFORMANCE.md. About 15 minutes on 2 cores (release builds).
#   scripts/bench.sh            (make bench)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p target/bench
rm -f target/bench/pipeline.json
make build-lambda
cargo build -p loadtest -p local-stack
# In-process and moto benchmarks: the enqueue's AWS work, 4 images, the sweeper, cold starts.
scripts/with-moto.sh cargo bench -p shared --bench pipeline 2>&1 | grep -v '"_aws"'
scripts/with-moto.sh cargo bench -p shared --bench lambda 2>&1 | grep -v '"_aws"'
# Through the local gateway: an open-model run at a steady rate (100 users, so no user reaches
# the in-flight cap and every answer is a 202 to time), then, on a fresh stack so that the
# first run's backlog of sessions does not queue in front of it, the smoke preset.
scripts/with-stack.sh bash -c '
  target/debug/loadtest --state "$STACK_STATE" --rate 10/s --duration 30s --users 100 --no-e2e --quiet \
    --summary-json target/bench/gateway-load.json'
scripts/with-stack.sh bash -c '
  target/debug/loadtest --state "$STACK_STATE" --preset smoke --users 4 --quiet \
    --summary-json target/bench/smoke.json --html target/bench/smoke.html'
python3 - <<'PY'
import json
m = json.load(open("target/bench/gateway-load.json"))["metrics"]["http_req_duration"]["values"]
json.dump({"p50": round(m["med"] if "med" in m else m["p(50)"], 2), "p95": round(m["p(95)"], 2),
           "p99": round(m.get("p(99)", m["max"]), 2)}, open("target/bench/gateway.json", "w"))
PY
python3 scripts/render_performance.py target/bench > docs/PERFORMANCE.md
echo "wrote docs/PERFORMANCE.md" >&2
