#!/usr/bin/env bash
# Runs the whole test suite against a real RabbitMQ and PostgreSQL on this machine, starting or
# installing them first if needed. Failure points are compiled in (`--features failpoints`).
#
# The tests in `disruptive::` stop and restart RabbitMQ or Postgres themselves, which would break any
# test running beside them: they are `#[ignore]`d, and run here afterwards, one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
# tests/it/prometheus.rs runs a real Prometheus against a worker.
bash scripts/install-prometheus.sh

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --features failpoints --no-fail-fast \
    -E 'not test(/^disruptive::/)' "$@"
  cargo nextest run --workspace --all-targets --features failpoints --no-fail-fast \
    --test-threads 1 --run-ignored only -E 'test(/^disruptive::/)' "$@"
else
  # Without nextest every test shares one process, and with it the failure-point configuration.
  cargo test --workspace --all-targets --features failpoints --no-fail-fast "$@" -- \
    --test-threads=1 --skip disruptive::
  cargo test --workspace --test it --features failpoints --no-fail-fast "$@" -- \
    --test-threads=1 --ignored disruptive::
fi
