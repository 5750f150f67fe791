#!/usr/bin/env bash
# Validates docs/asyncapi.yaml with the AsyncAPI parser (@asyncapi/parser, pinned in
# scripts/asyncapi/package-lock.json), under the machine's Node. Fails on any error the parser reports:
# the specification's own rules, the AMQP bindings, every payload schema, and every `$ref` (the local
# ones to docs/schemas/ included). The parser is installed into scripts/asyncapi/node_modules on the
# first run, and again only when the lock file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=scripts/asyncapi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "check-asyncapi: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

lock_sum=$(sha256sum "$tools/package-lock.json" | cut -d' ' -f1)
stamp="$tools/node_modules/.installed-from-lock"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_sum" ]]; then
  # --ignore-scripts: nothing the parser needs runs at install time (one dependency's install
  # script only reports usage statistics).
  (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

node "$tools/check.mjs" docs/asyncapi.yaml
