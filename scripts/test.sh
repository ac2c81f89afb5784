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
.venv/bin/python -m pip install --quiet -e '.[dev,demo,bench]'
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q "$@"
