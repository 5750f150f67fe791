#!/usr/bin/env bash
# Checks the Prometheus artifacts in deploy/ with the tool Prometheus itself uses: the scrape config,
# the alerting rules, and the rules' unit tests (deploy/tests/*.yml: every alert with synthetic series,
# firing and not). Installs promtool first where it is missing. Run by .ci/run; takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prometheus.sh

promtool check config deploy/prometheus.yml
promtool check rules deploy/prometheus-alerts.yml
promtool test rules deploy/tests/*.yml
