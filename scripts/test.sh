#!/usr/bin/env bash
# Every test of the project: the Rust workspace's (`cargo test --workspace`), then the
# Python package's: built with maturin into a cached virtual environment
# ($TOPOCCL_VENV, default ~/.cache/topoccl-venv), linted (ruff), type-checked (mypy) and
# tested (pytest, jobs of real processes started with the topoccl binary the Rust tests
# built). Needs python3 with venv, and PyPI for the first run's installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace

venv=${TOPOCCL_VENV:-$HOME/.cache/topoccl-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check maturin numpy pytest ruff mypy
(cd crates/python && "$venv/bin/maturin" build --release -o ../../target/wheels/py -q)
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
  target/wheels/py/topoccl-*.whl
(cd crates/python && "$venv/bin/ruff" format --check . && "$venv/bin/ruff" check . \
  && "$venv/bin/mypy" python tests)
TOPOCCL_BIN="$PWD/target/debug/topoccl" "$venv/bin/pytest" -q crates/python/tests
