#!/usr/bin/env python3
"""Turns a CustomResourceDefinition's OpenAPI v3 schema into a JSON Schema (draft 7) for one of its
objects, strict as `kubectl apply --validate=strict` is: an object that lists its properties and does
not say it keeps unknown fields (`x-kubernetes-preserve-unknown-fields`) refuses any other property, so a
misspelled field fails instead of being pruned without a word by the API server.

    crd-to-jsonschema.py CRD.yaml > SCHEMA.json

The schemas under deploy/k8s/schemas/ are this script's output for the CRDs in
deploy/k8s/schemas/crds/; scripts/check-k8s.sh makes them again and fails if they differ.

Not carried over: `x-kubernetes-validations` (CEL rules, which only the API server evaluates);
scripts/check_deploy.py checks the one that matters here (minReplicaCount <= maxReplicaCount).
"""

import json
import sys

import yaml


def strict(node):
    """The JSON Schema equivalent of one OpenAPI v3 schema node, recursively."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict(schema) for name, schema in value.items()}
        else:
            out[key] = strict(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def object_schema(crd, version):
    names = crd["spec"]["names"]
    group = crd["spec"]["group"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"const": f"{group}/{version['name']}"}
    properties["kind"] = {"const": names["kind"]}
    # The CRD says only `type: object`; the fields a manifest of ours may set, strictly.
    properties["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema["additionalProperties"] = False
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"{names['kind']} ({group}/{version['name']})",
        **schema,
    }


def main(path):
    with open(path, encoding="utf-8") as file:
        crd = yaml.safe_load(file)
    [version] = [v for v in crd["spec"]["versions"] if v.get("storage")]
    json.dump(object_schema(crd, version), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
