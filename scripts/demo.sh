#!/usr/bin/env bash
# Install, then make DP synthetic digits with the demo config (extra arguments go to privevo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
privevo synthesize configs/digits.yaml "$@"
