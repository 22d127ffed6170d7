#!/usr/bin/env bash
# The bootstrap size levers, measured: each release profile variant built as sam build builds
# (cargo lambda build --release) into its own target directory, then the lambda benchmark
# (cold start, size, peak RSS) run on its bootstraps. Writes docs/SIZE_LEVERS.md.
# About 10 minutes per variant on 2 cores, plus one build of the benchmark.
#   scripts/size_levers.sh [NAME=OPT:LTO ...]     e.g. scripts/size_levers.sh s-fat=s:fat
# The variant `workspace` is the profile in Cargo.toml as make build-lambda builds it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("workspace" "s-fat=s:fat" "z-fat=z:fat")
bin=$(scripts/venv.sh)
packages=()
for f in enqueue api admin generator sweeper deadletter; do packages+=(-p "$f"); done
mkdir -p target/levers
for variant in "${variants[@]}"; do
  name=${variant%%=*}
  started=$(date +%s)
  if [ "$variant" = workspace ]; then
    opt=$(sed -n '/^\[profile.release\]/,/^\[/s/^opt-level = //p' Cargo.toml | tr -d '"')
    lto=$(sed -n '/^\[profile.release\]/,/^\[/s/^lto = //p' Cargo.toml | tr -d '"')
    make build-lambda >target/levers/$name.build.log 2>&1
    artifacts=$root/target/lambda
  else
    spec=${variant#*=} && opt=${spec%%:*} && lto=${spec#*:}
    # The profile is overridden for this build only; the benchmark keeps the workspace's.
    PATH=$bin:$PATH CARGO_TARGET_DIR=target/levers/$name CARGO_PROFILE_RELEASE_OPT_LEVEL=$opt \
      CARGO_PROFILE_RELEASE_LTO=$lto cargo lambda build --release --x86-64 "${packages[@]}" \
      >target/levers/$name.build.log 2>&1 || { tail -20 target/levers/$name.build.log; exit 1; }
    artifacts=$root/target/levers/$name/lambda
  fi
  built=$(( $(date +%s) - started ))
  rm -f target/bench/pipeline.json
  LAMBDA_ARTIFACTS=$artifacts scripts/with-moto.sh \
    cargo bench -p shared --bench lambda 2>&1 | grep -v '"_aws"'
  python3 - "$name" "$opt" "$lto" "$built" <<'PY'
import json, sys
name, opt, lto, built = sys.argv[1:]
rows = json.load(open("target/bench/pipeline.json"))["lambda"]
json.dump({"name": name, "opt_level": opt, "lto": lto, "build_secs": int(built), "lambda": rows},
          open(f"target/levers/{name}.json", "w"), indent=1)
PY
done
python3 - "${variants[@]}" <<'PY' > docs/SIZE_LEVERS.md
import json, subprocess, sys
names = [v.split("=", 1)[0] for v in sys.argv[1:]]
runs = [json.load(open(f"target/levers/{n}.json")) for n in names]
fns = [r["function"] for r in runs[0]["lambda"]]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# Bootstrap size levers\n")
print(f"Written by `scripts/size_levers.sh` at commit `{rev}` (x86_64, 2 cores, `panic = \"unwind\"`, "
      "`codegen-units = 1`, `strip = true`). Each variant is the workspace's release profile with "
      "`opt-level` and `lto` overridden, built by `cargo lambda build --release` (what `sam build` "
      "runs); cold start and peak RSS are the lambda benchmark's (process start to first response, "
      "p50 of 5; see PERFORMANCE.md for the events).\n")
print("| variant | opt-level | lto | build | " + " | ".join(fns) + " |")
print("|---|---|---|---|" + "---|" * len(fns))
for r in runs:
    cells = [f"{x['bootstrap_bytes'] / 1e6:.1f} MB, {x['cold_start_ms_p50']} ms, {x['peak_rss_kib'] / 1024:.0f} MB"
             for x in r["lambda"]]
    build = f"{r['build_secs'] // 60} min" if r["name"] != "workspace" else "incremental"
    print(f"| {r['name']} | {r['opt_level']} | {r['lto']} | {build} | " + " | ".join(cells) + " |")
print("\nEach cell: bootstrap size, cold start p50, peak RSS. The generator's cold start is a full "
      "batch of 40 4K images and the sweeper's a run copying 16 videos, so those two are mostly the "
      "work of their first event.")
PY
echo "wrote docs/SIZE_LEVERS.md" >&2
