"""The Argo CD health check of TraceProfiles (config/argocd/traceprofile-health.lua), run in Lua 5.1 (Argo CD's
gopher-lua dialect) against statuses built by the operator's own aggregator, one per condition reason."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml
from lupa import lua51

from podspan_api import models
from podspan_operator import render, status
from tests.operator import test_status
from tests.operator.test_render import tp

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "config" / "argocd" / "traceprofile-health.lua").read_text()
NOW = test_status.NOW
HEARTBEAT_TIMEOUT = 60.0


def argo_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) the script returns for obj, run as Argo CD runs it: obj global, the chunk returns."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    health = lua.execute(SCRIPT)
    return health["status"], health["message"]


def operator_object(profile: render.Profile, matched: int, *configs: render.NodeConfig,
                    generation: int = 1) -> tuple[dict[str, Any], dict[str, models.Condition]]:
    """The TraceProfile as the API server holds it after the operator's status patch, and its conditions."""
    new, _ = status.aggregate(profile, matched, configs, NOW, HEARTBEAT_TIMEOUT)
    obj = {"apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": profile.kind,
           "metadata": {"name": profile.name, "namespace": profile.namespace, "generation": generation},
           "status": new.to_k8s()}
    return obj, {c.type: c for c in new.conditions}


config = test_status.config
# (Ready reason, Degraded reason) -> the profile, matching pods and node configs that make the aggregator write
# them, and Argo CD's health then.
CASES: dict[tuple[str, str], tuple[render.Profile, int, tuple[render.NodeConfig, ...], str]] = {
    ("NoMatchingPods", "AsExpected"): (tp("p"), 0, (), "Healthy"),
    ("Applying", "AsExpected"): (tp("p"), 2, (config("a", 1), config("b", 1, reported=False)), "Progressing"),
    ("Tracing", "AsExpected"): (tp("p"), 1, (config("a", 1),), "Healthy"),
    ("Tracing", "NodesNotReporting"): (tp("p"), 2, (config("a", 1), config("b", 1, age=600)), "Degraded"),
    ("NodesNotReporting", "NodesNotReporting"): (tp("p"), 1, (config("a", 1, age=600),), "Degraded"),
    ("Tracing", "ProbeErrors"): (tp("p"), 1, (config("a", 1, probe_errors=True),), "Degraded"),
    ("ProbeErrors", "ProbeErrors"): (tp("p"), 1, (config("a", 1, reported=False, probe_errors=True),), "Degraded"),
    ("Tracing", "ExportFailing"): (tp("p"), 1, (config("a", 1, export_error="refused"),), "Degraded"),
    ("Tracing", "EventsLost"): (tp("p"), 1, (config("a", 1, lost=3),), "Healthy"),
    ("Tracing", "OverBudget"): (tp("p"), 1, (config("a", 1, capture_fraction=0.3),), "Healthy"),
    ("Tracing", "TLSNotReadable"): (tp("p"), 1, (config("a", 1, tls_unprobed=("pid 42 (node)",)),), "Healthy"),
    ("InvalidSpec", "InvalidSpec"): (tp("p", protocols=["smtp"]), 3, (), "Degraded"),
}


@pytest.mark.parametrize("reasons", CASES, ids="/".join)
def test_health_follows_the_conditions_the_operator_writes(reasons: tuple[str, str]) -> None:
    profile, matched, configs, expected = CASES[reasons]
    obj, conditions = operator_object(profile, matched, *configs)
    assert (conditions["Ready"].reason, conditions["Degraded"].reason) == reasons
    health, message = argo_health(obj)
    assert health == expected
    # The message quotes the condition that decided, so Argo CD's UI says why.
    deciding = conditions["Degraded"] if conditions["Degraded"].status == "True" else conditions["Ready"]
    assert deciding.message in message


def test_every_reason_the_operator_writes_has_a_case() -> None:
    written = {value for name, value in vars(status).items() if name.isupper() and type(value) is str
               and name not in ("READY", "DEGRADED")}
    assert written == {reason for pair in CASES for reason in pair}


def test_a_status_of_an_older_generation_is_progressing() -> None:
    obj, _ = operator_object(tp("p"), 1, config("a", 1), generation=2)
    assert argo_health(obj) == ("Progressing", "Waiting for the podspan operator to observe generation 2")


def test_a_profile_without_status_is_progressing() -> None:
    obj, _ = operator_object(tp("p"), 1, config("a", 1))
    del obj["status"]
    assert argo_health(obj)[0] == "Progressing"


def test_docs_carry_the_script_in_the_argocd_cm_snippet() -> None:
    docs = (ROOT / "docs" / "gitops.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)]
    (config_map,) = (b for b in blocks if b.get("kind") == "ConfigMap" and b["metadata"]["name"] == "argocd-cm")
    assert config_map["data"] == {f"resource.customizations.health.{models.GROUP}_{kind}": SCRIPT
                                  for kind in ("TraceProfile", "ClusterTraceProfile")}
