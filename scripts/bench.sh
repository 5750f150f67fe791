#!/usr/bin/env bash
# Measures the worker against the Postgres ceiling on this machine and prints one JSON object on
# stdout (progress on stderr). Arguments go to `customer-ingest-bench` (the `bench/` crate), e.g.
#   scripts/bench.sh --messages 50 --customers 1000
# Settings come from the usual place: INGEST__PIPELINE__CHUNK_SIZE=1000 scripts/bench.sh tries a change.
# See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# A debug build would measure the compiler's optimisation level, not the pipeline. The bench starts
# its workers from the service binary built beside it.
cargo build --release --quiet -p customer-ingest -p customer-ingest-bench >&2
bash scripts/services.sh
exec target/release/customer-ingest-bench "$@"
