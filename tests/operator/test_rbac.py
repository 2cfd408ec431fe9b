"""RBAC and privileges of everything under config/ (the kustomize tree), read with PyYAML: no wildcard
and no secrets in any (Cluster)Role, no escalation verbs, bindings only to our own roles, and the
containers' securityContexts as docs/reliability.md ("Privileges") describes them. The Helm chart's roles and
workloads are checked equal to these by tests/operator/test_helm_chart.py."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
DOCS = [doc for path in sorted(CONFIG.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
        if doc and "kind" in doc]
ROLES = [doc for doc in DOCS if doc["kind"] in ("Role", "ClusterRole")]
BINDINGS = [doc for doc in DOCS if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")]
# Verbs that hand out more than the role itself holds.
ESCALATING_VERBS = {"escalate", "bind", "impersonate"}
# The agent's capabilities, each measured necessary by tests/agent/test_capabilities.py.
AGENT_CAPABILITIES = ["BPF", "PERFMON"]


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _workload(kind: str, name: str) -> dict[str, Any]:
    (doc,) = (d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name)
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def test_config_has_the_roles_it_binds() -> None:
    assert {_name(d) for d in ROLES} == {"ClusterRole/podspan-agent", "ClusterRole/podspan-operator"}
    defined = {(d["kind"], d["metadata"]["name"]) for d in ROLES}
    for binding in BINDINGS:
        ref = binding["roleRef"]
        assert (ref["kind"], ref["name"]) in defined, f"{_name(binding)} binds {ref['name']}, not one of ours"


@pytest.mark.parametrize("role", ROLES, ids=_name)
def test_role_has_no_wildcards_secrets_or_escalation(role: dict[str, Any]) -> None:
    assert "aggregationRule" not in role, "an aggregated role grants whatever other roles add"
    for rule in role["rules"]:
        for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            assert not any("*" in value for value in rule.get(field, [])), f"{_name(role)}: wildcard in {field}"
        assert not any(r.split("/")[0] == "secrets" for r in rule.get("resources", [])), f"{_name(role)}: secrets"
        assert not ESCALATING_VERBS & set(rule["verbs"]), f"{_name(role)}: {rule['verbs']}"


def test_agent_writes_only_its_node_config_status() -> None:
    (agent,) = (d for d in ROLES if d["metadata"]["name"] == "podspan-agent")
    writes = {(r, v) for rule in agent["rules"] for r in rule["resources"] for v in rule["verbs"]
              if v not in ("get", "list", "watch")}
    assert writes == {("nodetraceconfigs/status", "patch")}


def test_agent_runs_with_only_the_measured_capabilities() -> None:
    spec = _workload("DaemonSet", "podspan-agent")
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"], "add": AGENT_CAPABILITIES}
    # Host namespaces: only the PID one (the kernel reports host pids); no host network or IPC.
    assert spec["hostPID"] is True and not spec.get("hostNetwork") and not spec.get("hostIPC")
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/debug", "/lib/modules", "/usr/src"}
    read_only = {m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")}
    assert {"/sys/fs/cgroup", "/lib/modules", "/usr/src"} <= read_only


def test_operator_runs_unprivileged() -> None:
    spec = _workload("Deployment", "podspan-operator")
    assert spec["securityContext"]["runAsNonRoot"] is True and not spec.get("hostPID")
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
