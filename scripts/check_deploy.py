#!/usr/bin/env python3
"""What no schema can see: that the deployment files agree with the service and with each other.

- every INGEST__ variable that docker-compose.yml or deploy/k8s/ sets is a setting the service knows
  (config/default.toml holds every setting, and the service refuses a key it does not know);
- docker-compose.yml publishes the ports the defaults and scripts/run.sh use;
- the Kubernetes objects name each other rightly (ConfigMap, Secrets, TriggerAuthentication, the
  scaled Deployment, the queue KEDA watches), run as the Dockerfile's user with a read-only root
  filesystem, probe /readyz and /healthz on the HTTP port, and give a pod longer to stop than its
  preStop pause plus the shutdown deadline;
- the service's code writes no file (the Deployment's root filesystem is read-only and has no /tmp);
- every object of deploy/k8s/ is either a Kubernetes kind (checked by kubernetes-validate) or a KEDA
  one in a keda-*.yaml file (checked by check-jsonschema), so none escapes validation.

    check_deploy.py REPO_ROOT
"""

import re
import sys
import tomllib
from pathlib import Path

import yaml

errors = []


def check(condition, message):
    if not condition:
        errors.append(message)


def known_settings(root):
    """INGEST__SECTION__KEY for every key of config/default.toml (tables such as auth.tenants included)."""
    defaults = tomllib.loads((root / "config/default.toml").read_text())
    return {
        f"INGEST__{section.upper()}__{key.upper()}": value
        for section, table in defaults.items()
        for key, value in table.items()
    }


def port_of(url_or_addr):
    match = re.search(r":(\d+)(?:/|$)", url_or_addr)
    return int(match.group(1)) if match else None


def check_compose(root, settings):
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    worker = services["worker"]
    environment = worker.get("environment", {})
    for name in environment:
        if name.startswith("INGEST__"):
            check(name in settings, f"docker-compose.yml: worker sets {name}, which is no setting")

    def published(service):
        return {int(str(p).split(":")[0]) for p in services[service].get("ports", [])}

    amqp_port = port_of(settings["INGEST__AMQP__URL"])
    db_port = port_of(settings["INGEST__DATABASE__URL"])
    http_port = port_of(environment.get("INGEST__HTTP__ADDR", settings["INGEST__HTTP__ADDR"]))
    check(amqp_port in published("rabbitmq"), f"docker-compose.yml: rabbitmq does not publish {amqp_port}")
    check(db_port in published("postgres"), f"docker-compose.yml: postgres does not publish {db_port}")
    check(http_port in published("worker"), f"docker-compose.yml: worker does not publish {http_port}")
    check(
        port_of(settings["INGEST__HTTP__ADDR"]) == http_port,
        "docker-compose.yml: the worker's HTTP port differs from the default one scripts/run.sh uses",
    )
    deadline = int(settings["INGEST__SHUTDOWN__DEADLINE_SECS"])
    grace = int(str(worker.get("stop_grace_period", "10s")).rstrip("s"))
    check(grace > deadline, f"docker-compose.yml: stop_grace_period {grace}s is not longer than the {deadline}s drain deadline")


def load_manifests(directory):
    objects = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                objects.append((path.name, document))
    return objects


def check_pod(where, pod, settings, dockerfile_user, config, secrets):
    security = pod.get("securityContext", {})
    check(security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
    uid, gid = dockerfile_user
    check(security.get("runAsUser") == uid, f"{where}: runAsUser is not the Dockerfile's {uid}")
    check(security.get("runAsGroup") == gid, f"{where}: runAsGroup is not the Dockerfile's {gid}")
    for container in pod["containers"]:
        context = container.get("securityContext", {})
        check(context.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is not read-only")
        check(context.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation is allowed")
        check("resources" in container, f"{where}: no resources")
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                check(source["configMapRef"]["name"] in config, f"{where}: no ConfigMap {source['configMapRef']['name']}")
            if "secretRef" in source:
                check(source["secretRef"]["name"] in secrets, f"{where}: no Secret {source['secretRef']['name']}")
        for variable in container.get("env", []):
            if variable["name"].startswith("INGEST__"):
                check(variable["name"] in settings, f"{where}: {variable['name']} is no setting")


def check_k8s(root, settings):
    directory = root / "deploy/k8s"
    objects = load_manifests(directory)
    by_kind = {}
    for file, document in objects:
        kind, api = document.get("kind"), document.get("apiVersion", "")
        by_kind.setdefault(kind, {})[document["metadata"]["name"]] = document
        is_keda = api.startswith("keda.sh/")
        check(is_keda == file.startswith("keda-"), f"deploy/k8s/{file}: a {kind} ({api}) belongs in a keda-*.yaml file only if it is a KEDA object")

    config = {name: cm.get("data", {}) for name, cm in by_kind.get("ConfigMap", {}).items()}
    secrets = {name: {**s.get("data", {}), **s.get("stringData", {})} for name, s in by_kind.get("Secret", {}).items()}
    for name, values in config.items():
        for key in values:
            check(key in settings, f"ConfigMap {name}: {key} is no setting")
    for name, values in secrets.items():
        for key in values:
            if key.startswith("INGEST__"):
                check(key in settings, f"Secret {name}: {key} is no setting")
    effective = dict(settings)
    for values in config.values():
        effective.update(values)

    dockerfile = (root / "deploy/Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)", dockerfile, re.MULTILINE)
    dockerfile_user = (int(user.group(1)), int(user.group(2)))

    http_port = port_of(effective["INGEST__HTTP__ADDR"])
    deadline = int(effective["INGEST__SHUTDOWN__DEADLINE_SECS"])
    deployments = by_kind.get("Deployment", {})
    check(len(deployments) == 1, "deploy/k8s: expected one Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        check_pod(f"Deployment {name}", pod, settings, dockerfile_user, config, secrets)
        check("replicas" not in deployment["spec"], f"Deployment {name}: sets replicas, which the ScaledObject owns")
        [worker] = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in worker.get("ports", [])}
        check(ports.get("http") == http_port, f"Deployment {name}: containerPort http is not INGEST__HTTP__ADDR's {http_port}")
        check(worker["readinessProbe"]["httpGet"]["path"] == "/readyz", f"Deployment {name}: readiness is not /readyz")
        check(worker["livenessProbe"]["httpGet"]["path"] == "/healthz", f"Deployment {name}: liveness is not /healthz")
        pause = int(worker["lifecycle"]["preStop"]["exec"]["command"][-1])
        grace = pod["terminationGracePeriodSeconds"]
        check(
            grace > pause + deadline,
            f"Deployment {name}: terminationGracePeriodSeconds {grace} is not longer than the preStop pause ({pause}) plus the drain deadline ({deadline})",
        )
    for name, job in by_kind.get("Job", {}).items():
        check_pod(f"Job {name}", job["spec"]["template"]["spec"], settings, dockerfile_user, config, secrets)

    authentications = by_kind.get("TriggerAuthentication", {})
    for name, authentication in authentications.items():
        for ref in authentication["spec"].get("secretTargetRef", []):
            check(ref["key"] in secrets.get(ref["name"], {}), f"TriggerAuthentication {name}: no key {ref['key']} in Secret {ref['name']}")
    for name, scaled in by_kind.get("ScaledObject", {}).items():
        spec = scaled["spec"]
        check(spec["scaleTargetRef"]["name"] in deployments, f"ScaledObject {name}: scales no Deployment of deploy/k8s")
        check(spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100), f"ScaledObject {name}: minReplicaCount over maxReplicaCount")
        for trigger in spec["triggers"]:
            check(trigger["authenticationRef"]["name"] in authentications, f"ScaledObject {name}: no TriggerAuthentication {trigger['authenticationRef']['name']}")
            if trigger["type"] == "rabbitmq":
                metadata = trigger["metadata"]
                check(metadata.get("queueName") == effective["INGEST__AMQP__INGEST_QUEUE"], f"ScaledObject {name}: watches {metadata.get('queueName')}, not the ingest queue")
                check(metadata.get("mode") == "QueueLength", f"ScaledObject {name}: mode is not QueueLength")


# What writing a file looks like in Rust; the service must need none of it (logs go to stdout).
WRITES_A_FILE = re.compile(r"\b(File::create|fs::write|OpenOptions|create_dir|temp_dir|tempfile|NamedTempFile)\b")


def check_no_file_writes(root):
    for path in sorted((root / "src").rglob("*.rs")):
        # Unit tests run on a developer's machine, not in the pod: a file of tests, and whatever
        # follows a file's `#[cfg(test)]`, may write files.
        if path.name == "tests.rs" or path.name.endswith("_tests.rs"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() == "#[cfg(test)]":
                break
            if WRITES_A_FILE.search(line) and not line.lstrip().startswith("//"):
                errors.append(
                    f"{path.relative_to(root)}:{number}: writes a file, but the Deployment's root filesystem is read-only"
                )


def main(root):
    root = Path(root)
    settings = known_settings(root)
    check_compose(root, settings)
    check_k8s(root, settings)
    check_no_file_writes(root)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print("deployment files agree with the settings and with each other")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
