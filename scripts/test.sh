#!/usr/bin/env bash
# Install everything the test suite needs into .venv (llama-cpp-python compiles from
# source the first time: ~6 minutes on 2 cores), type-check the package (mypy, configured in
# pyproject.toml: strict for the engine, the scheduler and the HTTP layer), run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,demo,bench]'
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q "$@"
