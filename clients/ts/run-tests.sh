#!/usr/bin/env bash
# CI entry point for the TypeScript client: install exactly the locked packages, build (codegen + tsc),
# and run Node's test runner against live servers it starts (PostgreSQL at 127.0.0.1:5432, the repo's
# .venv Python, or STOCKWIRE_PYTHON). Every test makes and drops its own database and stops its servers.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
npm test
