"""The real kubectl against the API emulator and the real operator: `kubectl apply -f` a TraceProfile,
`kubectl get tp`/`ntc` with the CRDs' printer columns, `kubectl describe`, and
`kubectl wait --for=condition=Ready` (issue 12, ecosystem). Skips where kubectl is not installed."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from tests.operator.conftest import agent_report, run_pod, targets, wait_for

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def kubectl(api, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", "--kubeconfig", str(api.kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, timeout=90,
                            env={**os.environ, "KUBECONFIG": str(api.kubeconfig)})
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def columns(table: str) -> list[dict[str, str]]:
    """kubectl's table output as rows: a column starts where its header does (headers may hold spaces)."""
    header, *lines = table.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[max(0, i - 2):i] == "  ")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{header[a:b].strip(): line[a:b].strip() for a, b in bounds} for line in lines]


def test_apply_get_describe_wait_with_the_real_client(api, kc, start_operator):
    for crd_file in sorted((ROOT / "crds").glob("*s.yaml")):  # as `kubectl apply -f crds/` (printer columns)
        kubectl(api, "apply", "--validate=false", "-f", str(crd_file))
    kc.ensure_namespace("shop")
    kc.create_node("n1")
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    start_operator()
    profile = yaml.safe_dump({
        "apiVersion": "podspan.dev/v1alpha1", "kind": "TraceProfile", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "export": {"otlp": {"endpoint": "http://collector.observability:4317", "insecure": True}}}})
    assert "traceprofile.podspan.dev/web created" in kubectl(api, "apply", "--validate=false", "-f", "-",
                                                             stdin=profile)
    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": ["TraceProfile/shop/web"]}, "n1 targets")
    agent_report(kc, "n1", exported=3)
    kubectl(api, "wait", "--for=condition=Ready", "traceprofile/web", "-n", "shop", "--timeout=60s")

    table = kubectl(api, "get", "tp", "-n", "shop")
    assert table.splitlines()[0].split().count("AGE") == 1  # the CRD's Age column, not a second default one
    row = columns(table)[0]
    assert row["AGE"].endswith("s")  # a date column comes as an age, as from a real API server
    assert (row["NAME"], row["MATCHED"], row["TRACED"], row["NODES READY"], row["READY"]) == ("web", "1", "1", "1",
                                                                                              "True"), row
    nodes = kubectl(api, "get", "ntc")
    assert "n1" in nodes.splitlines()[1]
    described = kubectl(api, "describe", "tp", "web", "-n", "shop")
    assert "Ready" in described and "Tracing" in described and "Matched Pods:" in described
    # Apply again, unchanged: the client and the server agree there is nothing to do.
    assert "unchanged" in kubectl(api, "apply", "--validate=false", "-f", "-", stdin=profile)
