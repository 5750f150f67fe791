#!/usr/bin/env bash
# Runs the whole test suite against a real RabbitMQ and PostgreSQL on this machine, starting or
# installing them first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --features failpoints --no-fail-fast "$@"
else
  # Without nextest every test shares one process, and with it the failure-point configuration.
  cargo test --workspace --all-targets --features failpoints --no-fail-fast "$@" -- --test-threads=1
fi
