"""Smart sampling in Kubernetes mode through the real kernel: a profile in `smart` mode with no
baseline exports exactly the traces with an error and the injected slow ones, each whole and marked
with its reason, while the agent's Prometheus endpoint still counts every request."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

from podspan_api import models
from podspan_demo import k8s_api_emulator as emu
from podspan_demo import otlp_receiver, pods
from tests.agent import conftest, test_metrics, test_node_agent, test_trace_http

PROFILE = test_node_agent.PROFILE


def _target(pod: pods.Pod, name: str) -> models.PodTarget:
    return models.PodTarget(
        uid=pod.uid, namespace="shop", name=f"{name}-1", qos_class=models.QOSClass.BEST_EFFORT, service_name=name,
        workload=models.Workload(kind="Deployment", name=name),
        containers=[models.ContainerTarget(name="app", container_id=f"containerd://{pod.container_id}",
                                           profiles=[PROFILE])],
    )


def test_smart_mode_keeps_error_and_slow_traces_whole_and_metrics_count_everything(
        api: emu.EmulatorThread, pod_runner: pods.PodRunner) -> None:
    # Its own receiver: the session's gets the in-process tracer's spans, whose paths these would shadow.
    with otlp_receiver.OtlpReceiver() as receiver:
        _smart_mode(api, pod_runner, receiver)


def _smart_mode(api: emu.EmulatorThread, pod_runner: pods.PodRunner, receiver: otlp_receiver.OtlpReceiver) -> None:
    kc = emu.KubeClient(api.url)
    back_port, front_port, metrics_port = conftest.free_port(), conftest.free_port(), conftest.free_port()
    backend = pod_runner.start("backend", [*conftest.SAMPLE_APP, "backend", "--port", str(back_port)])
    frontend = pod_runner.start("frontend", [*conftest.SAMPLE_APP, "frontend", "--port", str(front_port),
                                             "--backend", f"http://127.0.0.1:{back_port}"])
    pods.wait_for_port("127.0.0.1", back_port)
    pods.wait_for_port("127.0.0.1", front_port)
    profile = models.ResolvedProfile(
        key=PROFILE, kind=models.ProfileKind.TRACE_PROFILE, namespace="shop", name="web",
        protocols=[models.Protocol("http")],
        export=models.Export(otlp=models.OtlpExport(endpoint=receiver.grpc_endpoint,
                                                    protocol=models.OtlpProtocol.GRPC, insecure=True)),
        sampling=models.Sampling(mode=models.SamplingMode.SMART, smart=models.SmartSampling(
            baseline=0.0, latency_threshold_ms=250, decision_wait_ms=500)),
    )
    spec = models.NodeTraceConfigSpec(targets=[_target(frontend, "frontend"), _target(backend, "backend")],
                                      profiles=[profile]).to_k8s()
    kc.create(test_node_agent.NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                                    "metadata": {"name": test_node_agent.NODE}, "spec": spec})
    agent = subprocess.Popen(
        [sys.executable, "-m", "podspan_agent.cli", "run", "--node", test_node_agent.NODE,
         "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig), "OTEL_METRIC_EXPORT_INTERVAL": "500"},
        stderr=subprocess.PIPE, text=True)
    try:
        attached = {frontend.uid: "attached", backend.uid: "attached"}
        test_node_agent._wait(lambda: test_node_agent._target_states(kc) == attached, "attached targets")
        statuses = collections.Counter(test_trace_http._get(front_port, f"/users/{i}") for i in range(60))
        statuses.update(test_trace_http._get(front_port, f"/missing/{i}") for i in range(4))
        statuses.update(test_trace_http._get(front_port, f"/users/{i}?delay_ms=300") for i in range(3))
        assert statuses == {200: 63, 502: 4}
        expected = (4 + 3) * 3  # frontend server + client, backend server per kept trace
        spans = receiver.wait_for(lambda got: len(got) >= expected, timeout=30)
        time.sleep(2.5)  # past every decision: nothing else may arrive
        spans = receiver.spans()
        samples = test_metrics.scrape(metrics_port)
        # The node's status tells the truth about sampling: every span was exported or sampled out.
        def counted() -> dict[str, int] | None:
            profiles = ((kc.get(test_node_agent.NTC, test_node_agent.NODE) or {}).get("status") or {}).get("profiles")
            mine = next((p for p in profiles or [] if p["profile"] == PROFILE), None)
            return mine if mine and mine["spansExported"] + mine["spansSampledOut"] >= 67 * 3 else None
        counters = test_node_agent._wait(counted, "exported + sampled out in the node status", timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr

    by_trace: dict[int, list[otlp_receiver.ReceivedSpan]] = collections.defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    reasons = {trace_id: {str(s.attributes["podspan.sampling.reason"]) for s in trace}
               for trace_id, trace in by_trace.items()}
    assert all(len(trace) == 3 for trace in by_trace.values())  # whole: each backend span came with its trace
    assert (counters["spansExported"], counters["spansSampledOut"]) == (len(spans), 67 * 3 - len(spans))
    errors = [trace for trace_id, trace in by_trace.items() if reasons[trace_id] == {"error"}]
    assert len(errors) == 4
    assert sorted(s.attributes.get("http.response.status_code") for trace in errors for s in trace) == [
        404] * 8 + [502] * 4  # the frontend's call and the backend's answer (404, not an error) came too
    slow = [trace for trace_id, trace in by_trace.items() if reasons[trace_id] == {"latency"}
            and any(s.end_ns - s.start_ns >= 300_000_000 for s in trace)]
    assert len(slow) == 3 and all("delay_ms=300" in str(s.attributes.get("url.query")) for t in slow for s in t)
    # The rest were dropped (baseline 0) but for the few above their operation's p99 of recent spans.
    assert len(by_trace) - len(errors) - len(slow) <= 3
    assert set().union(*reasons.values()) <= {"error", "latency"}
    # Metrics count every request, sampled or not.
    count = "http_server_request_duration_seconds_count"
    assert test_metrics.total(samples, count, service_name="frontend") == 67
    assert test_metrics.total(samples, count, service_name="backend") == 67
    assert test_metrics.total(samples, "traces_service_graph_request_total",
                              client="frontend", server="backend") == 67
    # ... and the profile's endpoint got them as OTLP metrics too (the last push: the final state).
    pushed = receiver.metric_requests()[-1]
    counts = collections.Counter()
    for resource_metrics in pushed.resource_metrics:
        service = next(kv.value.string_value for kv in resource_metrics.resource.attributes if kv.key == "service.name")
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == "http.server.request.duration":
                    counts[service] += sum(point.count for point in metric.histogram.data_points)
    assert counts == {"frontend": 67, "backend": 67}
