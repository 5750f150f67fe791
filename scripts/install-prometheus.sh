#!/usr/bin/env bash
# Makes sure `prometheus` and `promtool` are on PATH, installing Debian's `prometheus` package where they
# are missing (no prompt, no recommended extras such as the node exporter). Used by scripts/test.sh
# (tests/it/prometheus.rs starts a real Prometheus) and scripts/check-deploy.sh (promtool).
#
# The package would start its own daemon on :9090 where the init system lets it: the install runs with
# a policy that forbids starting services, and the packaged service is left stopped and disabled. The
# tests start their own Prometheus on a free loopback port and stop it.
set -euo pipefail

log() { printf '[prometheus] %s\n' "$*" >&2; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

command -v apt-get >/dev/null || { log "no apt-get: install Prometheus 2.x (prometheus, promtool) yourself"; exit 1; }

policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# Written by scripts/install-prometheus.sh for the length of one install.\nexit 101\n' |
    as_root tee "$policy" >/dev/null
  as_root chmod 755 "$policy"
  own_policy=true
fi
cleanup() { if $own_policy; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

log "installing Debian's prometheus package"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Whatever the init system, leave the packaged service stopped and off.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null || {
  log "the prometheus package installed no prometheus/promtool on PATH"; exit 1; }
log "$(prometheus --version 2>&1 | head -n 1)"
