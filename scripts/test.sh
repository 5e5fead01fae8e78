#!/usr/bin/env bash
# Every test of the project: the Rust workspace's (`cargo test --workspace`), then the
# Python package's: built with maturin into a cached virtual environment
# ($TOPOCCL_VENV, default ~/.cache/topoccl-venv, with torch and scikit-learn for the
# torch.distributed backend and the DDP example), linted (ruff), type-checked (mypy) and
# tested (pytest: jobs of real processes started by the topoccl binary the Rust tests
# built, and by torchrun). Needs python3 with venv, and PyPI for the first run's installs
# (torch with its dependencies is several GB; later runs reuse the environment).
set -euo pipefail
cd "$(dirname "$0")/.."

# The console's page first, so that the test build embeds it and the browser test below
# uses the binary the tests built (no second build of the CLI).
browser=0
if command -v chromium >/dev/null && command -v npm >/dev/null; then
  scripts/build-console.sh
  browser=1
fi

cargo test --workspace

# Every decoder of bytes from another process, fuzzed for a bounded time from the
# committed corpus (fuzz/; a crash fails the run with the input saved).
scripts/fuzz.sh "${TOPOCCL_FUZZ_SECONDS:-10}"

# The console's page in a real browser (Debian's chromium, playwright-core): built and
# embedded first; SKIP only without chromium or npm.
if [ "$browser" = 1 ]; then
  (cd console/web && TOPOCCL_BIN="$PWD/../../target/debug/topoccl" node test/browser.mjs)
  # Live, on namespaced hosts (needs root and iproute2): a throttled trunk turns red in
  # the page within 5 s. Exit 77 is a skip, its reason printed by the script.
  live=0
  scripts/netns-console.sh target/debug/topoccl || live=$?
  if [ "$live" = 77 ]; then
    echo "SKIP console live browser test (namespaced hosts): see the reason above"
  elif [ "$live" != 0 ]; then
    exit "$live"
  fi
else
  echo "SKIP console browser test: needs chromium and npm (apt-get install chromium nodejs npm)"
fi

venv=${TOPOCCL_VENV:-$HOME/.cache/topoccl-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# torch is pinned: the backend implements the process-group interface of this release.
{ "$venv/bin/python" -c 'import torch, sklearn, maturin, pytest, mypy, numpy, expecttest' \
  && [ -x "$venv/bin/ruff" ]; } 2>/dev/null \
  || "$venv/bin/pip" install -q --disable-pip-version-check \
    maturin numpy pytest ruff mypy torch==2.15.0 scikit-learn expecttest hypothesis
(cd crates/python && "$venv/bin/maturin" build --release -o ../../target/wheels/py -q)
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
  target/wheels/py/topoccl-*.whl
(cd crates/python && "$venv/bin/ruff" format --check . && "$venv/bin/ruff" check . \
  && "$venv/bin/mypy" python tests conformance bench)
"$venv/bin/ruff" format --check --config crates/python/pyproject.toml examples/python
"$venv/bin/ruff" check --config crates/python/pyproject.toml examples/python
"$venv/bin/mypy" --strict examples/python
TOPOCCL_BIN="$PWD/target/debug/topoccl" "$venv/bin/pytest" -q crates/python/tests
