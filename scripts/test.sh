#!/usr/bin/env bash
# Install everything the test suite needs into .venv (llama-cpp-python compiles from
# source the first time: ~6 minutes on 2 cores), plus Chromium for the console's browser
# tests, type-check the package (mypy, configured in pyproject.toml: strict for the engine,
# the scheduler and the HTTP layer), and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The web console's browser tests drive Debian's Chromium through Playwright (no browser
# download): install it where we can; without one those tests are skipped, saying why.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
        && [ -z "${CHROMIUM:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "warning: could not install chromium; the console's browser tests will be skipped" >&2
    else
        echo "warning: no chromium and not root; the console's browser tests will be skipped" >&2
    fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# -DGGML_RPC=ON from the first build (a fresh machine compiles once).
CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_RPC=ON" .venv/bin/python -m pip install --quiet -e '.[dev,demo,bench]'
# llama.cpp's RPC backend (appliance worker, `rpc` in models.toml; tests/test_rpc.py) needs
# -DGGML_RPC=ON. pip's wheel cache ignores CMAKE_ARGS, so rebuild (no cache) only when the
# installed build lacks it: a machine that already has the right build stays quick.
if ! .venv/bin/python -c 'import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_rpc() else 1)'; then
    echo "rebuilding llama-cpp-python with the RPC backend (-DGGML_RPC=ON; several minutes)" >&2
    CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_RPC=ON" .venv/bin/python -m pip install --quiet --no-cache-dir \
        --force-reinstall --no-deps "llama-cpp-python==$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
fi
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q "$@"
