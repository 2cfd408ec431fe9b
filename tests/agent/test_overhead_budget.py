"""The overhead budget through the real kernel: a node agent with a tiny `overheadBudget` on a loaded nginx lowers
the fraction of exchanges the kernel captures, yet every request is either an exported span or a skipped exchange,
and the RED metrics count every one; with a generous budget everything is captured."""

from __future__ import annotations

import datetime
import http.client
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from podspan_api import models
from podspan_demo import k8s_api_emulator as emu
from podspan_demo import otlp_receiver, pods, servers
from podspan_operator import render, status
from tests.agent import conftest, test_metrics, test_node_agent
from tests.operator import test_render

PROFILE = test_node_agent.PROFILE
LOAD_S = 6.0


def _counters(kc: emu.KubeClient) -> dict[str, Any] | None:
    profiles = ((kc.get(test_node_agent.NTC, test_node_agent.NODE) or {}).get("status") or {}).get("profiles") or []
    return next((p for p in profiles if p["profile"] == PROFILE), None)


def _load(port: int, seconds: float, connections: int = 2) -> int:
    """Keep-alive GET / from `connections` threads for `seconds`; the requests answered 200, every one of them."""
    answered = [0] * connections

    def client(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            answered[slot] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(answered)


Outcome = tuple[int, list[dict[str, Any]], dict[str, Any], list[otlp_receiver.ReceivedSpan], float, float,
                list[float]]


def _run(api: emu.EmulatorThread, pod_runner: pods.PodRunner, tmp_path: pathlib.Path, cpu_percent: float) -> Outcome:
    """Load nginx under a profile with `cpu_percent`: (requests, node statuses seen during the load, final counters,
    server spans exported, the RED request count, the kernel's count of skipped exchanges, the agent's measured cost
    scraped from its endpoint during the load)."""
    kc = emu.KubeClient(api.url)
    port, metrics_port = conftest.free_port(), conftest.free_port()
    conf = servers.nginx_config(tmp_path, "127.0.0.1", port)
    nginx = pod_runner.start("nginx", [servers.nginx_binary(), "-c", str(conf), "-p", str(tmp_path)])
    pods.wait_for_port("127.0.0.1", port)
    with otlp_receiver.OtlpReceiver() as receiver:
        profile = models.ResolvedProfile(
            key=PROFILE, kind=models.ProfileKind.TRACE_PROFILE, namespace="shop", name="web",
            protocols=[models.Protocol("http")],
            export=models.Export(otlp=models.OtlpExport(endpoint=receiver.grpc_endpoint,
                                                        protocol=models.OtlpProtocol.GRPC, insecure=True)),
            overhead_budget=models.OverheadBudget(cpu_percent=cpu_percent),
        )
        target = models.PodTarget(
            uid=nginx.uid, namespace="shop", name="web-1", qos_class=models.QOSClass.BEST_EFFORT, service_name="web",
            workload=models.Workload(kind="Deployment", name="web"),
            containers=[models.ContainerTarget(name="app", container_id=f"containerd://{nginx.container_id}",
                                               profiles=[PROFILE])])
        spec = models.NodeTraceConfigSpec(targets=[target], profiles=[profile]).to_k8s()
        kc.create(test_node_agent.NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                                        "metadata": {"name": test_node_agent.NODE}, "spec": spec})
        agent = subprocess.Popen(
            [sys.executable, "-m", "podspan_agent.cli", "run", "--node", test_node_agent.NODE,
             "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"],
            env={**os.environ, "KUBECONFIG": str(api.kubeconfig)}, stderr=subprocess.PIPE, text=True)
        try:
            test_node_agent._wait(lambda: test_node_agent._target_states(kc) == {nginx.uid: "attached"},
                                  "attached target")
            sent = 0
            seen: list[dict[str, Any]] = []
            costs: list[float] = []  # the agent's cost over the last second, while the load runs
            done = threading.Event()

            def watch() -> None:
                while not done.wait(0.5):
                    found = kc.get(test_node_agent.NTC, test_node_agent.NODE) or {}
                    if found.get("status"):
                        seen.append(found)
                    costs.append(test_metrics.total(test_metrics.scrape(metrics_port), "podspan_agent_cost_percent"))

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                sent += _load(port, LOAD_S)
            finally:
                done.set()
                watcher.join()
            spans: list[otlp_receiver.ReceivedSpan] = []

            def accounted() -> tuple[dict[str, Any], float, float] | None:
                spans[:] = receiver.spans()  # nginx's server spans: the load client is not traced
                mine = _counters(kc)
                # The node status is written every 10 s: wait for one that has seen all of it.
                if not mine or mine.get("agentCpuPercent") is None or len(spans) + mine["exchangesSkipped"] < sent:
                    return None
                samples = test_metrics.scrape(metrics_port)
                red_count = test_metrics.total(samples, "http_server_request_duration_seconds_count",
                                               service_name="web")
                return mine, red_count, test_metrics.total(samples, "podspan_agent_exchanges_skipped_total")

            try:
                counters, red_count, skipped = test_node_agent._wait(accounted, "spans + skipped exchanges", timeout=40)
            except AssertionError as exc:
                samples = test_metrics.scrape(metrics_port)
                raise AssertionError(
                    f"{exc}: {sent} requests, {len(spans)} spans, status {_counters(kc)}, RED "
                    f"{test_metrics.total(samples, 'http_server_request_duration_seconds_count')}, kernel "
                    f"{test_metrics.total(samples, 'podspan_agent_exchanges_skipped_total')}, uncounted "
                    f"{test_metrics.total(samples, 'podspan_agent_exchanges_uncounted_total')}") from None
        finally:
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=60)
        assert agent.returncode == 0, stderr
    return sent, seen, counters, spans, red_count, skipped, costs


def _degraded(node_config: dict[str, Any]) -> models.Condition:
    config = models.NodeTraceConfig.model_validate(node_config)
    new, _ = status.aggregate(test_render.tp("web"), 1, [render.NodeConfig(name=config.metadata.name, generation=1,
                                                              spec=config.spec, status=config.status)],
                              datetime.datetime.now(datetime.UTC), 60)
    return next(c for c in new.conditions if c.type == "Degraded")


def test_tiny_budget_captures_fewer_exchanges_and_counts_every_request(
        api: emu.EmulatorThread, pod_runner: pods.PodRunner, tmp_path: pathlib.Path) -> None:
    sent, seen, counters, spans, red_count, skipped, _ = _run(api, pod_runner, tmp_path, cpu_percent=0.5)
    fractions = [p.get("captureFraction") for s in seen for p in s["status"].get("profiles", [])]
    throttled = [s for s in seen for p in s["status"].get("profiles", []) if p.get("captureFraction", 1.0) < 1.0]
    assert throttled, fractions
    assert sent > 1000 and 0 < len(spans) < sent
    assert len(spans) + skipped == sent  # every request: a span or an exchange the kernel counted
    assert counters["exchangesSkipped"] == skipped  # the kernel's count, folded into the status
    assert red_count == sent  # the RED metrics stay exact
    assert counters["costScope"] == "userspace CPU and BPF run time"
    assert _degraded(throttled[-1]).reason == "OverBudget"


def test_generous_budget_captures_everything(api: emu.EmulatorThread, pod_runner: pods.PodRunner,
                                             tmp_path: pathlib.Path) -> None:
    sent, seen, counters, spans, red_count, skipped, costs = _run(api, pod_runner, tmp_path, cpu_percent=400)
    assert {p.get("captureFraction") for s in seen for p in s["status"].get("profiles", [])} == {1.0}
    assert (len(spans), counters["exchangesSkipped"], skipped, red_count) == (sent, 0, 0, sent)
    # Measured while loaded: the final status comes after the load, when the last second may have cost nothing.
    assert max(costs) > 0 and counters["agentCpuPercent"] is not None
    assert _degraded(seen[-1]).reason == "AsExpected"
