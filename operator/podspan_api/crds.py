"""CustomResourceDefinitions generated from the models: pydantic JSON Schema -> structural openAPIV3Schema."""

from __future__ import annotations

from typing import Any

from podspan_api import models

# JSON Schema keywords a structural CRD schema does not accept or does not need.
_DROPPED_KEYS = {"title", "$defs", "uniqueItems", "propertyNames"}

_READY = '.status.conditions[?(@.type=="Ready")].status'
_PROFILE_COLUMNS = [
    {"name": "Matched", "type": "integer", "jsonPath": ".status.matchedPods", "description": "Matched pods."},
    {"name": "Traced", "type": "integer", "jsonPath": ".status.tracedPods", "description": "Traced pods."},
    {"name": "Nodes Ready", "type": "integer", "jsonPath": ".status.nodes.ready",
     "description": "Nodes reporting the profile applied."},
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes.total", "priority": 1,
     "description": "Nodes hosting selected pods."},
    {"name": "Ready", "type": "string", "jsonPath": _READY, "description": "Ready condition."},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
     "priority": 1, "description": "Ready condition reason."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
_NODE_COLUMNS = [
    {"name": "Heartbeat", "type": "date", "jsonPath": ".status.heartbeatTime",
     "description": "Last agent heartbeat."},
    {"name": "Headers", "type": "string", "jsonPath": ".status.headerSource",
     "description": "Kernel headers the agent compiled with."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, turn Optional[X] into X, and drop keywords Kubernetes rejects."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    variants = node.pop("anyOf", None)
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {variants}")
        node = {**non_null[0], **node}
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # The referring field's own description and extras win over the model's docstring.
        node = {**target, **node}
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "patternProperties" in node:
        # Key patterns cannot be expressed structurally; pydantic still checks them in the operator.
        (node["additionalProperties"],) = node.pop("patternProperties").values()
    if "properties" in node:
        # The API server prunes unknown fields; additionalProperties: false is not allowed beside properties.
        node.pop("additionalProperties", None)
        node["properties"] = {name: _structural(prop, defs) for name, prop in node["properties"].items()}
    return {k: _structural(v, defs) if k != "properties" else v
            for k, v in node.items() if k not in _DROPPED_KEYS}


def _object_schema(model: type[models.Resource]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    props = schema["properties"]
    result = {
        "type": "object",
        "description": _structural(schema, defs)["description"],
        "properties": {
            "apiVersion": {"type": "string", "description": "podspan.dev/v1alpha1"},
            "kind": {"type": "string", "description": model.KIND},
            "metadata": {"type": "object"},
            "spec": _structural(props["spec"], defs),
            "status": _structural(props["status"], defs),
        },
    }
    if "spec" in schema.get("required", []):
        result["required"] = ["spec"]
    return result


def crd(model: type[models.Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one Podspan kind."""
    is_profile = model is not models.NodeTraceConfig
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced" if model.NAMESPACED else "Cluster",
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.KIND.lower(),
                "shortNames": [model.SHORT_NAME],
                "categories": ["podspan"],
            },
            "versions": [{
                "name": models.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _PROFILE_COLUMNS if is_profile else _NODE_COLUMNS,
                "schema": {"openAPIV3Schema": _object_schema(model)},
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(model) for model in models.RESOURCES]
