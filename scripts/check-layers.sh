#!/usr/bin/env bash
# Checks the layering of src/ from its `use` lines and paths, so that a change cannot quietly undo it:
#   - only amqp/ (and the operator commands in cli/) know lapin;
#   - a dialect never touches AMQP, SQL, the store or the pipeline; nor does the matching engine;
#   - the store never imports a dialect, the pipeline or lapin;
#   - amqp/ uses nothing of ingest/ beyond what ingest/mod.rs exports (Ingest, Envelope, BatchError);
#   - no file under src/ is over 600 lines.
# Prints every violation and exits non-zero if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
violation() {
  echo "layering: $1" >&2
  failed=1
}

# Lines of Rust in $@ (files or directories) that mention a path matching the pattern.
uses() {
  local pattern=$1
  shift
  grep -rnE --include='*.rs' "$pattern" "$@" 2>/dev/null | grep -vE '^[^:]+:[0-9]+:\s*//' || true
}

report() {
  local rule=$1 found=$2
  if [ -n "$found" ]; then
    violation "$rule"
    echo "$found" | sed 's/^/    /' >&2
  fi
}

outside_amqp=$(find src -name '*.rs' -not -path 'src/amqp/*' -not -path 'src/cli/*')
# shellcheck disable=SC2086
report "lapin is used outside src/amqp/ and src/cli/" "$(uses '(^|[^a-z_])lapin::' $outside_amqp)"

for layer in src/dialect src/matching; do
  [ -d "$layer" ] || continue
  report "$layer imports sqlx, lapin, the store, the pipeline or amqp" \
    "$(uses '(^|[^a-z_])(sqlx|lapin)::|crate::(store|ingest|amqp|relay|startup)' "$layer")"
done
[ -f src/model.rs ] && report "src/model.rs imports sqlx, lapin, the store or the pipeline" \
  "$(uses '(^|[^a-z_])(sqlx|lapin)::|crate::(store|ingest|amqp|dialect)' src/model.rs)"

report "src/store/ imports a dialect, the pipeline or lapin" \
  "$(uses '(^|[^a-z_])lapin::|crate::(dialect|ingest|amqp)' src/store)"

report "src/ingest/ imports amqp" "$(uses 'crate::amqp' src/ingest)"

report "src/amqp/ uses ingest internals (only Ingest, Envelope and BatchError are its interface)" \
  "$(uses 'crate::ingest::' src/amqp | grep -vE 'crate::ingest::(\{[A-Za-z, ]*\}|Ingest|Envelope|BatchError);' |
    grep -E 'crate::ingest::[a-z_]+::' || true)$(uses 'crate::ingest::\{[^}]*\}' src/amqp |
    grep -E 'crate::ingest::\{[^}]*(apply|checks|keys|references|retry|error)' || true)"

long=$(find src -name '*.rs' -print0 | xargs -0 wc -l | awk '$2 != "total" && $1 > 600 {print $2 " (" $1 " lines)"}')
report "files over 600 lines (one concern per file)" "$long"

if [ "$failed" -ne 0 ]; then
  exit 1
fi
echo "layering: ok" >&2
