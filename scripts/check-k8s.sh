#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s/ offline, with no cluster:
#   1. every Kubernetes object against the schemas of Kubernetes $K8S_VERSION (kubernetes-validate,
#      --strict: a field the API does not have fails, as `kubectl apply --validate=strict` would);
#   2. the KEDA objects (keda-*.yaml) against JSON Schemas made from KEDA's own CRDs, kept in
#      deploy/k8s/schemas/ (check-jsonschema; those schemas refuse unknown fields too), after checking
#      that the schemas are still what scripts/crd-to-jsonschema.py makes of the CRDs;
#   3. that the files agree with the service's settings, with docker-compose.yml and with each other
#      (scripts/check_deploy.py).
# The tools are pinned in scripts/check-k8s.requirements.txt and installed into .tools/venv, which is
# made again only when that file (or the Python) changes.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.30.0}
venv=.tools/venv
requirements=scripts/check-k8s.requirements.txt

log() { printf '[check-k8s] %s\n' "$*" >&2; }

stamp="$(sha256sum "$requirements" | cut -d' ' -f1) $(python3 --version 2>&1)"
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "installing the pinned validators into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian keeps venv (and ensurepip) in a package of its own.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
  echo "$stamp" > "$venv/.stamp"
fi
bin=$venv/bin

failed=0

# 1. Kubernetes objects. An object kubernetes-validate has no schema for only draws a warning, so
#    warnings fail too: a misspelled kind or apiVersion must not pass unchecked.
mapfile -t core < <(find deploy/k8s -maxdepth 1 -name '*.yaml' ! -name 'keda-*' | sort)
if ! output=$("$bin/kubernetes-validate" --kubernetes-version "$K8S_VERSION" --strict --quiet "${core[@]}" 2>&1) \
  || grep -q '^WARN' <<<"$output"; then
  printf '%s\n' "$output" >&2
  failed=1
else
  log "${#core[@]} files valid for Kubernetes $K8S_VERSION (strict)"
fi

# 2. KEDA objects, against the CRDs' schemas; the schemas first, against the CRDs they came from.
for crd in deploy/k8s/schemas/crds/*.yaml; do
  schema=deploy/k8s/schemas/$(basename "$crd" .yaml).json
  if ! "$bin/python" scripts/crd-to-jsonschema.py "$crd" | cmp -s - "$schema"; then
    log "$schema is not what scripts/crd-to-jsonschema.py makes of $crd: make it again"
    failed=1
  fi
done
for manifest in deploy/k8s/keda-*.yaml; do
  # keda-scaledobject.yaml holds a ScaledObject: its schema is keda.sh_scaledobjects.json.
  kind=$(basename "$manifest" .yaml)
  schema=deploy/k8s/schemas/keda.sh_${kind#keda-}s.json
  if [ ! -f "$schema" ]; then
    log "$manifest: no schema $schema"
    failed=1
  elif ! "$bin/check-jsonschema" --schemafile "$schema" "$manifest"; then
    failed=1
  fi
done

# 3. Agreement with the settings, docker-compose.yml, the Dockerfile and each other.
"$bin/python" scripts/check_deploy.py . || failed=1

if [ "$failed" -ne 0 ]; then
  log "FAILED"
  exit 1
fi
log "deploy/k8s and docker-compose.yml are valid"
