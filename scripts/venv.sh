#!/usr/bin/env bash
# Creates the project's own Python venv (.venv) with moto, cargo-lambda, sam and cfn-lint,
# once per change of requirements-dev.txt. Prints the venv's bin directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$root/requirements-dev.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (moto, cargo-lambda, aws-sam-cli, cfn-lint)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/requirements-dev.txt" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin"
