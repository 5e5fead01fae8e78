#!/usr/bin/env bash
# Builds the console's page into console/web/dist (embedded by crates/console's build.rs
# the next time the binary is built): npm ci, typecheck, lint, bundle. Needs Node 20+ and
# npm; nothing else is downloaded (no browser).
set -euo pipefail
cd "$(dirname "$0")/../console/web"
command -v npm >/dev/null || { echo "build-console: npm is not installed (apt-get install nodejs npm)" >&2; exit 1; }
npm ci --no-audit --no-fund --ignore-scripts
npm run --silent typecheck
npm run --silent lint
npm run --silent bundle
