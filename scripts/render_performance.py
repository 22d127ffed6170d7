"""Writes docs/PERFORMANCE.md from the benchmark results in target/bench/.

    python3 scripts/render_performance.py target/bench > docs/PERFORMANCE.md

Run by scripts/bench.sh after the benchmarks; every figure names the command that reproduces it.
"""

import json
import os
import platform
import subprocess
import sys


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "rustc": sh("rustc", "--version"),
    }


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
    with open(os.path.join(folder, "pipeline.json")) as f:
        results = json.load(f)
    gateway = None
    path = os.path.join(folder, "gateway.json")
    if os.path.exists(path):
        with open(path) as f:
            gateway = json.load(f)
    m = machine()
    out = []
    w = out.append
    w("# Performance")
    w("")
    w("Measured on this project's development machine; reproduce everything with `make bench`")
    w("(15-20 minutes on 2 cores, most of it release builds; it writes this file). The old")
    w("system's figures are from its own measurements (Node/Express + PostgreSQL + BullMQ + MinIO,")
    w("k6: 26 ms to answer 202, 11-25 ms of database work per generation, 30-32 s end to end for")
    w("four images, p95 < 30 s as its load threshold).")
    w("")
    w(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, {m['rustc']}.")
    w("AWS services are moto (local, Python) and the provider is the project's mock server, so")
    w("absolute AWS latencies here are moto's, not DynamoDB's; ratios and call counts carry over.")
    w("")
    enq = results.get("enqueue")
    if enq:
        w("## Enqueue (answer 202)")
        w("")
        w("| measure | p50 | p95 | p99 |")
        w("|---|---|---|---|")
        w(f"| bare AWS requests of the design (reserve transaction + SendMessage) straight to moto | {enq['bare_p50_ms']} ms | {enq['bare_p95_ms']} ms | {enq['bare_p99_ms']} ms |")
        w(f"| the enqueue handler in process (validation, pricing, the same requests) | {enq['handler_p50_ms']} ms | {enq['handler_p95_ms']} ms | {enq['handler_p99_ms']} ms |")
        if gateway:
            g = gateway
            w(f"| through the local gateway (HTTP, JWT check, Invoke API, `cargo lambda watch`, debug build) | {g['p50']} ms | {g['p95']} ms | {g['p99']} ms |")
        w("| old system (Express + PostgreSQL), 202 answer | 26 ms | | |")
        w("")
        w(f"- AWS calls on the happy path: **{enq['aws_calls']}** (one TransactWriteItems, one SendMessage; the design's budget is two round trips).")
        w(f"- Handler / bare requests: **{enq['handler_over_bare']}x**: the handler adds almost nothing to the two requests it must make. Nearly all of the p50 is moto's own time for the transaction (Python, one DynamoDB request at a time); DynamoDB answers a small TransactWriteItems in single-digit milliseconds.")
        if gateway:
            ratio = round(gateway["p50"] / enq["bare_p50_ms"], 2)
            w(f"- Local gateway / bare requests: **{ratio}x** (p50), measured in the same run, an open model at 10 requests/s for 30 s (100 users, none at the in-flight cap) while the generator, pollers and sweeper work on the same 2 cores and the same moto. The gateway path adds two local HTTP hops and cargo-lambda's runtime emulation of a debug build; API Gateway and a warm Lambda add a few ms in AWS.")
        w(f"- {enq['requests']} requests in turn. Command: `scripts/with-moto.sh cargo bench -p shared --bench pipeline enqueue`" + (" and `scripts/bench.sh` for the gateway row." if gateway else "."))
        w("")
    four = results.get("four_images")
    if four:
        lat = four["image_latency_ms"]
        w("## A 4-image session")
        w("")
        w(f"Mock provider at a fixed {lat} ms per image; wall time of one delivery of the SQS record (claim, provider calls, copies into S3, capture), median of {four['runs']}.")
        w("")
        w("| | wall time | / one image's latency |")
        w("|---|---|---|")
        w(f"| one image | {four['one_image_ms']:.0f} ms | {four['one_image_ms'] / lat:.2f}x |")
        w(f"| four images, all at once (this system) | {four['four_images_concurrent_ms']:.0f} ms | **{four['concurrent_ratio']}x** |")
        w(f"| four images, one after another (the old system's way) | {four['four_images_sequential_ms']:.0f} ms | {four['sequential_ratio']}x |")
        w("")
        w(f"Four images take about as long as one: **{four['speedup']}x** faster than in turn. The mock serves outputs of real size (0.8 MB per 1K image), so every image is also streamed into S3 (moto), and four copies at once share moto's one request at a time: that is the step above one image's latency. With the real provider's 6-8 s per call, the old system's 26.6 s of provider time for four images becomes about 7 s.")
        w("Command: `scripts/with-moto.sh cargo bench -p shared --bench pipeline four_images`")
        w("")
    sweep = results.get("sweeper")
    if sweep:
        w("## Sweeper: 1,000 due video tasks")
        w("")
        w(f"Mock provider at {sweep['call_latency_ms']} ms per status call; every task has succeeded, so each is copied into S3, captured and completed in the run.")
        w("")
        w("| mode | provider status calls | time in status checks | sweep wall time |")
        w("|---|---|---|---|")
        for key in ("list", "gets"):
            s = sweep[key]
            w(f"| {s['mode']} | {s['status_calls']} | {s.get('status_check_ms', 'n/a')} ms | {s['wall_ms']} ms |")
        w("")
        w("The list endpoint answers for 500 tasks per call, so 1,000 tasks cost 2 provider calls instead of 1,000. The rest of the wall time is settling 1,000 sessions against moto (a read and a transaction each, serialized by moto, plus two S3 copies), which DynamoDB does in parallel.")
        w("Command: `scripts/with-moto.sh cargo bench -p shared --bench pipeline sweeper`")
        w("")
    lam = results.get("lambda")
    if lam:
        w("## Cold start, bootstrap size, peak memory")
        w("")
        w("The bootstraps that ship (`cargo lambda build --release`, what `sam build` runs, with `panic = \"unwind\"`), each started as Lambda starts it, against a minimal Runtime API served by the benchmark, with moto and the mock (at realistic output sizes) behind it: process start to first response.")
        w("")
        w("| function | bootstrap | cold start p50 (min-max) | peak RSS | event |")
        w("|---|---|---|---|---|")
        for r in lam:
            w(f"| {r['function']} | {r['bootstrap_bytes'] / 1e6:.1f} MB | {r['cold_start_ms_p50']} ms ({r['cold_start_ms_min']}-{r['cold_start_ms_max']}) | {r['peak_rss_kib'] / 1024:.1f} MB | {r['event']} |")
        w("")
        w("Cold start includes loading the AWS config, building the clients and answering the first event (which opens the connections). For the generator that first event is a full batch, 40 provider calls and 40 streamed copies of 10 MB each (400 MB), so its figure is mostly the batch's work (moto takes about 10 MB/s); its peak RSS is the memory under that batch, and the sweeper's under 16 video copies: copies stream, so memory does not grow with output size. Command: `make build-lambda && scripts/with-moto.sh cargo bench -p shared --bench lambda`")
        w("")
        w("The release profile (opt-level `s`, fat LTO) was chosen by measuring the size levers on these same bootstraps: [SIZE_LEVERS.md](SIZE_LEVERS.md), `scripts/size_levers.sh` (opt-level 3 with thin LTO gave 13.7-17.0 MB at the same cold start).")
        w("")
    load = None
    lpath = os.path.join(folder, "smoke.json")
    if os.path.exists(lpath):
        with open(lpath) as f:
            load = json.load(f)
    if load:
        mm = load.get("metrics", {})
        def val(name, key):
            try:
                return mm[name]["values"][key]
            except KeyError:
                return "n/a"
        w("## Load test (smoke preset against the local stack)")
        w("")
        w("| metric | value | old k6 threshold |")
        w("|---|---|---|")
        w(f"| http_req_duration p(95) (the 202) | {val('http_req_duration', 'p(95)')} ms | < 30,000 ms |")
        w(f"| session_e2e p(95) | {val('session_e2e', 'p(95)')} ms | (not measured) |")
        w(f"| errors rate | {val('errors', 'rate')} | < 0.10 |")
        w("")
        w("Command: `scripts/bench.sh` (see tools/loadtest/README.md for the presets and thresholds).")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
