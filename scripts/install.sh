#!/usr/bin/env bash
# Create .venv (if missing) and install privevo with its test extras.
# torch comes first and pinned: 2.13.0 is the CPU build; any other request pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[models,test]"
