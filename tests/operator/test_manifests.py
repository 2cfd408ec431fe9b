"""Offline checks of everything we ship: CRDs match the models, manifests match Kubernetes and our schemas."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from podspan_api import models

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S_VERSION = kubernetes_validate.latest_version()


def _gen_crds() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_crds
    finally:
        sys.path.pop(0)
    return gen_crds


def test_committed_crds_equal_generated_from_models() -> None:
    rendered = _gen_crds().render()
    assert set(rendered) == {f"{m.PLURAL}.yaml" for m in models.RESOURCES}
    for name, text in rendered.items():
        assert (ROOT / "crds" / name).read_text() == text, f"crds/{name} is stale: run scripts/gen_crds.py"


def _docs(paths: list[pathlib.Path]) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomize(directory: str) -> list[dict[str, Any]]:
    try:
        out = subprocess.run(["kubectl", "kustomize", str(ROOT / directory)], check=True, capture_output=True,
                             text=True).stdout
    except FileNotFoundError:
        pytest.skip("kubectl is not installed; the raw files are still validated")
    return [doc for doc in yaml.safe_load_all(out) if doc]


# config/flux holds Flux objects (tests/operator/test_flux.py), not part of the kustomize tree.
CONFIG_FILES = sorted(p for p in (ROOT / "config").rglob("*.yaml")
                      if p.name != "kustomization.yaml" and not {"samples", "flux"} & set(p.parts))
SAMPLE_FILES = sorted(p for p in (ROOT / "config" / "samples").glob("*.yaml") if p.name != "kustomization.yaml")
# Workloads and the TraceProfile of the kind e2e (tests/e2e/kind): users run them against real clusters too.
E2E_FILES = sorted(p for p in (ROOT / "tests" / "e2e" / "kind" / "manifests").glob("*.yaml")
                   if p.name != "kustomization.yaml")
CRDS = {(d["spec"]["group"], d["spec"]["names"]["kind"]): d
        for d in _docs(sorted((ROOT / "crds").glob("*.yaml")) + CONFIG_FILES)
        if d["kind"] == "CustomResourceDefinition"}


def _validate(doc: dict[str, Any]) -> None:
    group = doc["apiVersion"].rpartition("/")[0]
    crd = CRDS.get((group, doc["kind"]))
    if crd is None:  # a built-in kind
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(doc, schema, cls=jsonschema.Draft4Validator)


@pytest.mark.parametrize("path", CONFIG_FILES + SAMPLE_FILES + E2E_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_is_valid(path: pathlib.Path) -> None:
    for doc in _docs([path]):
        _validate(doc)


def test_kustomize_builds_valid_objects() -> None:
    docs = _kustomize("config")
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment", "DaemonSet",
            "PriorityClass"} <= kinds
    for doc in docs:
        _validate(doc)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] in ("Deployment", "DaemonSet")} == \
        {"podspan-system"}


def test_kustomize_builds_valid_e2e_objects() -> None:
    docs = _kustomize("tests/e2e/kind/manifests")
    for doc in docs:
        _validate(doc)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"podspan-e2e"}


def test_samples_parse_with_the_models() -> None:
    for doc in _docs(SAMPLE_FILES + [p for p in E2E_FILES if p.name == "traceprofile.yaml"]):
        model = {m.KIND: m for m in models.RESOURCES}[doc["kind"]]
        model.model_validate(doc)


def _rules(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [r["rule"] for r in node.get("x-kubernetes-validations", [])] + \
            [rule for value in node.values() for rule in _rules(value)]
    return [rule for value in node for rule in _rules(value)] if isinstance(node, list) else []


def test_crds_have_validations_and_short_names() -> None:
    by_kind = {kind: crd for (_, kind), crd in CRDS.items()}
    assert {k: by_kind[k]["spec"]["names"]["shortNames"] for k in ("TraceProfile", "ClusterTraceProfile",
                                                                   "NodeTraceConfig")} == \
        {"TraceProfile": ["tp"], "ClusterTraceProfile": ["ctp"], "NodeTraceConfig": ["ntc"]}
    rules = _rules(by_kind["TraceProfile"]["spec"]["versions"][0]["schema"])
    assert any("insecure" in r for r in rules) and any("operator" in r for r in rules)
