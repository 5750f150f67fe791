#!/usr/bin/env bash
# Starts customer-ingest on this machine, with no Docker: makes sure RabbitMQ and PostgreSQL answer
# (starting them, or installing them from the distribution's packages, as scripts/services.sh does),
# builds the service, applies the migrations, prints how to publish a sample and where the metrics
# are, and runs the worker in the foreground. Ctrl-C stops it cleanly: the messages in hand finish,
# the outbox is flushed, and it exits 0 (a second Ctrl-C stops it at once).
#
#   scripts/run.sh [--bin PATH] [--no-services]
#
# Settings come as for the service itself: INGEST__SECTION__KEY variables (e.g.
# INGEST__HTTP__ADDR=127.0.0.1:9500) and INGEST_CONFIG. --bin runs that binary instead of building
# target/release/customer-ingest; --no-services leaves RabbitMQ and Postgres alone (when the URLs
# point elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[run] %s\n' "$*" >&2; }

bin=""
services=true
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --no-services) services=false; shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) log "unknown argument $1 (see --help)"; exit 2 ;;
  esac
done

if $services; then
  bash scripts/services.sh
fi

if [ -z "$bin" ]; then
  log "building customer-ingest (release)"
  cargo build --release --locked --quiet --bin customer-ingest
  bin=target/release/customer-ingest
fi

log "applying migrations"
"$bin" migrate

# Where /readyz and /metrics answer: INGEST__HTTP__ADDR (or the default), reached over loopback when
# the worker listens on every address.
addr=${INGEST__HTTP__ADDR:-0.0.0.0:9464}
port=${addr##*:}
host=${addr%:*}
case $host in 0.0.0.0 | "[::]" | "") host=127.0.0.1 ;; esac
url="http://$host:$port"

ready() {
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null
  else
    (
      exec 3<>"/dev/tcp/${host//[\[\]]/}/$port"
      printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n' "$host" >&3
      read -r -t 2 answer <&3
      [[ $answer == *" 200 "* ]]
    ) 2>/dev/null
  fi
}

usage() {
  local names
  names=$(env | sed -n 's/^\(INGEST__[A-Z0-9_]*\)=.*/\1/p' | sort | paste -sd ' ' -)
  cat <<EOF

customer-ingest is ready. In another terminal, publish the sample batch and print its reply:

    $bin publish examples/upsert-by-customer-id.json --type upsert-by-customer-id --tenant acme --wait
EOF
  if [ -n "$names" ]; then
    printf '\n  with the same settings as this run: %s\n' "$names"
  fi
  cat <<EOF

Metrics: $url/metrics    health: $url/healthz, $url/readyz
Dead letters: $bin dlq list
Ctrl-C stops the worker (the messages in hand finish first).

EOF
}

# Tells how to use the worker once it is ready; gives up quietly if the worker ends first. `$$` is
# this script, which becomes the worker by `exec` below.
(
  for _ in $(seq 1 600); do
    kill -0 $$ 2>/dev/null || exit 0
    if ready; then
      usage
      exit 0
    fi
    sleep 0.2
  done
) &

# The worker takes this process's place, so that Ctrl-C, SIGTERM and the exit status are its own.
log "starting the worker"
exec "$bin" serve
