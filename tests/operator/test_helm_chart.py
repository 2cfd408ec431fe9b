"""The Helm chart (charts/podspan) against the kustomize tree (config/): without helm, the templates read as YAML
with their actions blanked out must equal config/ wherever nothing is templated; every value a template reads
exists, and every value is read; the chart's CRDs are the generated ones. With helm, the rendered chart must
hold the objects kubectl kustomize builds."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.operator import test_manifests

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "podspan"
TEMPLATES = sorted((CHART / "templates").glob("*.yaml"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# The objects of config/ (not its samples or GitOps examples), as written, before kustomize.
CONFIG = {(d["kind"], d["metadata"]["name"]): d for d in test_manifests._docs(test_manifests.CONFIG_FILES)}
KUSTOMIZATION = yaml.safe_load((ROOT / "config" / "kustomization.yaml").read_text())
# Stands for whatever a template action renders; a line that is only an action becomes a key "TEMPLATED".
TEMPLATED = "TEMPLATED"
ACTION = re.compile(r"\{\{-?.*?-?\}\}")
VALUE_REFERENCE = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
# Values a template hands over whole (toYaml, with): their own keys are Kubernetes fields, not chart values.
WHOLE_VALUES = {"operator.resources", "agent.resources", "defaultProfile.namespaceSelector",
                "defaultProfile.selector", "defaultProfile.protocols"}


def skeleton(path: pathlib.Path) -> list[dict[str, Any]]:
    """The template's objects with every action blanked out (what the chart always renders)."""
    lines = []
    for line in path.read_text().splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        if ACTION.fullmatch(line.strip()):
            lines.append(f"{indent}{TEMPLATED}: {TEMPLATED}")
        else:
            lines.append(ACTION.sub(TEMPLATED, line))
    return [doc for doc in yaml.safe_load_all("\n".join(lines)) if doc and set(doc) != {TEMPLATED}]


def assert_same(chart: Any, config: Any, where: str) -> None:
    """chart equals config except where it is templated: a templated scalar matches any value, and a dict
    holding a templated line may lack keys of config; a key whose whole value is templated may be chart-only."""
    if isinstance(chart, str) and TEMPLATED in chart:
        pattern = ".*".join(re.escape(part) for part in chart.split(TEMPLATED))
        assert re.fullmatch(pattern, str(config), re.DOTALL), f"{where}: {chart!r} cannot render {config!r}"
    elif isinstance(chart, dict):
        assert isinstance(config, dict), f"{where}: {config!r} is not a mapping"
        for key, value in chart.items():
            if key != TEMPLATED and not (key not in config and value in (TEMPLATED, {TEMPLATED: TEMPLATED})):
                assert key in config, f"{where}.{key} is not in config/"
                assert_same(value, config[key], f"{where}.{key}")
        if TEMPLATED not in chart:
            assert set(config) <= set(chart), f"{where}: the chart lacks {sorted(set(config) - set(chart))}"
    elif isinstance(chart, list):
        assert isinstance(config, list) and len(chart) == len(config), f"{where}: {chart!r} vs {config!r}"
        for i, (c, k) in enumerate(zip(chart, config, strict=True)):
            assert_same(c, k, f"{where}[{i}]")
    else:
        assert chart == config, f"{where}: {chart!r} != {config!r}"


def test_chart_metadata_follows_the_kustomize_images() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["type"]) == ("v2", "podspan", "application")
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    images = {i["name"]: i for i in KUSTOMIZATION["images"]}
    for component in ("operator", "agent"):
        kustomized = images[f"podspan-{component}"]
        assert VALUES[component]["image"]["repository"] == kustomized["newName"]
        assert chart["appVersion"] == kustomized["newTag"]  # the default tag


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_equals_config_where_not_templated(path: pathlib.Path) -> None:
    docs = skeleton(path)
    assert docs, f"{path.name} renders nothing by default"
    for doc in docs:
        if doc["kind"] == "ClusterTraceProfile":  # the optional default profile: not in config/
            continue
        key = (doc["kind"], doc["metadata"]["name"])
        if TEMPLATED in key[1]:  # the name is a value: check it is the default that config/ uses
            key = (key[0], next(name for kind, name in CONFIG if kind == key[0]))
        assert key in CONFIG, f"{path.name}: {key} is not in config/"
        assert_same(doc, CONFIG[key], f"{path.name}:{key[0]}/{key[1]}")


def test_every_kustomize_object_is_in_the_chart() -> None:
    names = {(d["kind"], d["metadata"]["name"]) for path in TEMPLATES for d in skeleton(path)}
    crd_names = {(d["kind"], d["metadata"]["name"]) for d in test_manifests._docs(sorted((CHART / "crds").glob("*")))}
    missing = set(CONFIG) - crd_names - {(kind, name) for kind, name in names}
    missing -= {("PriorityClass", VALUES["agent"]["priorityClass"]["name"]),  # templated names
                ("Namespace", KUSTOMIZATION["namespace"])}
    assert not missing


def test_default_values_are_the_config_ones() -> None:
    deployment = CONFIG[("Deployment", "podspan-operator")]["spec"]["template"]["spec"]
    daemonset = CONFIG[("DaemonSet", "podspan-agent")]["spec"]["template"]["spec"]
    for component, spec in (("operator", deployment), ("agent", daemonset)):
        (container,) = spec["containers"]
        assert VALUES[component]["resources"] == container["resources"]
        assert VALUES[component]["image"]["pullPolicy"] == container["imagePullPolicy"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert VALUES[component]["metricsPort"] == ports["metrics"]
    assert VALUES["operator"]["healthPort"] == {p["name"]: p["containerPort"]
                                               for p in deployment["containers"][0]["ports"]}["health"]
    assert VALUES["operator"]["replicas"] == CONFIG[("Deployment", "podspan-operator")]["spec"]["replicas"]
    priority = VALUES["agent"]["priorityClass"]
    assert priority["name"] == daemonset["priorityClassName"]
    assert priority["value"] == CONFIG[("PriorityClass", priority["name"])]["value"]


def _leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths |= _leaves(value, f"{path}.") if isinstance(value, dict) and path not in WHOLE_VALUES else {path}
    return paths


def test_templates_read_only_existing_values_and_every_value_is_read() -> None:
    read = {m.group(1)[1:] for path in TEMPLATES for m in VALUE_REFERENCE.finditer(path.read_text())}
    for reference in read:
        node: Any = VALUES
        for part in reference.split("."):
            assert isinstance(node, dict) and part in node, f".Values.{reference} is not in values.yaml"
            node = node[part]
    unread = {leaf for leaf in _leaves(VALUES) if not any(leaf == r or leaf.startswith(f"{r}.") for r in read)}
    assert not unread, f"values no template reads: {sorted(unread)}"


def test_chart_crds_are_the_generated_ones() -> None:
    rendered = test_manifests._gen_crds().render_chart()
    assert {p.name for p in (CHART / "crds").iterdir()} == set(rendered)
    for name, text in rendered.items():
        assert (CHART / "crds" / name).read_text() == text, \
            f"charts/podspan/crds/{name} is stale: run scripts/gen_crds.py"


def test_chart_rbac_is_the_config_rbac() -> None:
    """tests/operator/test_rbac.py checks config/rbac; the chart's roles must be the same, rule for rule."""
    for who in ("operator", "agent"):
        chart = {(d["kind"], d["metadata"]["name"]): d for d in skeleton(CHART / "templates" / f"rbac-{who}.yaml")}
        config = {(d["kind"], d["metadata"]["name"]): d
                  for d in test_manifests._docs([ROOT / "config" / "rbac" / f"{who}.yaml"])}
        assert set(chart) == set(config)
        assert chart[("ClusterRole", f"podspan-{who}")]["rules"] == config[("ClusterRole", f"podspan-{who}")]["rules"]
        binding = chart[("ClusterRoleBinding", f"podspan-{who}")]
        assert binding["roleRef"] == config[("ClusterRoleBinding", f"podspan-{who}")]["roleRef"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"podspan-{who}", "namespace": TEMPLATED}]
        assert '"{{ .Release.Namespace }}"' in (CHART / "templates" / f"rbac-{who}.yaml").read_text()


def _objects(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def test_helm_template_renders_the_kustomize_objects() -> None:
    if shutil.which("helm") is None:
        pytest.skip("helm is not installed: the templates were checked without rendering above")
    rendered = _objects(subprocess.run(
        ["helm", "template", "podspan", str(CHART), "--namespace", KUSTOMIZATION["namespace"], "--include-crds"],
        check=True, capture_output=True, text=True).stdout)
    kustomized = {(d["kind"], d["metadata"]["name"]): d for d in test_manifests._kustomize("config")}
    assert set(rendered) == set(kustomized)
    for key, doc in kustomized.items():
        chart = rendered[key]
        assert chart["metadata"].get("namespace") == doc["metadata"].get("namespace"), key
        if key[0] != "CustomResourceDefinition":  # Helm applies crds/ as they are: without kustomize's label
            assert doc["metadata"].get("labels", {}).items() <= chart["metadata"].get("labels", {}).items(), key
        for field in ("spec", "rules", "roleRef", "subjects", "value"):
            assert chart.get(field) == doc.get(field), f"{key}: {field}"
        test_manifests._validate(chart)
