"""The operator's own metrics, from a real run (kopf, HTTP API emulator): passes and writes by kind
agree with what it did, and the CLI serves them over HTTP on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import prometheus_client
from prometheus_client import parser

from tests.operator.conftest import TP, profile, run_pod, targets, wait_for


def values(registry_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(registry_text) for s in family.samples}


def test_passes_and_writes_are_counted_by_kind(kc, start_operator):
    kc.ensure_namespace("shop")
    kc.create_node("n1")
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    operator = start_operator()
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": ["TraceProfile/shop/web"]}, "n1 targets")
    metrics = operator.reconciler.api.metrics
    wait_for(lambda: (metrics.registry.get_sample_value("podspan_operator_api_writes_total",
                                                        {"kind": "profile_status"}) or 0) >= 1, "a status write")
    before = operator.writes
    got = values(prometheus_client.generate_latest(metrics.registry).decode())
    after = operator.writes  # the operator runs on: a write may land between the reads
    writes = {dict(labels)["kind"]: value for (name, labels), value in got.items()
              if name == "podspan_operator_api_writes_total"}
    assert writes["node_config"] >= 1 and writes["profile_status"] >= 1
    assert before - 1 <= sum(writes.values()) <= after  # the same writes the Api counts
    passes = got[("podspan_operator_reconcile_passes_total", ())]
    assert passes >= 1
    assert abs(got[("podspan_operator_reconcile_pass_seconds_count", ())] - passes) <= 1  # a pass may be ending
    assert got[("podspan_operator_api_write_seconds_count", (("kind", "node_config"),))] == writes["node_config"]
    assert got[("podspan_operator_reconcile_failures_total", ())] == 0


def test_the_cli_serves_metrics_on_loopback_and_refuses_a_port_in_use(api):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run([sys.executable, "-m", "podspan_operator.cli", "--standalone", "--metrics-port",
                                  str(port), "--metrics-address", "127.0.0.1"], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "KUBECONFIG": str(api.kubeconfig)})
    assert refused.returncode == 2 and "cannot serve metrics on 127.0.0.1" in refused.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    operator = subprocess.Popen([sys.executable, "-m", "podspan_operator.cli", "--standalone", "--metrics-port",
                                 str(port), "--metrics-address", "127.0.0.1"], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "KUBECONFIG": str(api.kubeconfig)})
    try:
        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    got = values(response.read().decode())
            except OSError:
                return None
            return got if got.get(("podspan_operator_reconcile_passes_total", ()), 0) >= 1 else None
        got = wait_for(scraped, "a pass counted on the endpoint", timeout=60)
        assert ("process_cpu_seconds_total", ()) in got
    finally:
        operator.terminate()
        operator.communicate(timeout=60)
