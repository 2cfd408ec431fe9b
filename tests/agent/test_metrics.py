"""RED metrics through the real kernel: `podspan-agent trace --metrics-port` on a frontend and a
backend; the endpoint, scraped over HTTP and parsed with prometheus_client, counts exactly the requests
sent, its histogram sums equal the exported spans' durations, and the service graph has the edge."""

from __future__ import annotations

import collections
import json
import pathlib
import signal
import socket
import time
import urllib.request

import pytest
from prometheus_client import parser

from podspan_demo import otlp_receiver, pods
from tests.agent import conftest, test_cli, test_trace_http

Series = tuple[str, tuple[tuple[str, str], ...]]


def scrape(port: int) -> dict[Series, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[Series, float], name: str, **labels: str) -> float:
    return sum(value for (s_name, s_labels), value in samples.items()
               if s_name == name and labels.items() <= dict(s_labels).items())


def test_metrics_count_every_request_exactly_and_match_the_spans(pod_runner: pods.PodRunner,
                                                                  tmp_path: pathlib.Path) -> None:
    back_port, front_port, metrics_port = conftest.free_port(), conftest.free_port(), conftest.free_port()
    backend = pod_runner.start("backend", [*conftest.SAMPLE_APP, "backend", "--port", str(back_port)],
                               env={"OTEL_SERVICE_NAME": "backend"})
    frontend = pod_runner.start("frontend", [*conftest.SAMPLE_APP, "frontend", "--port", str(front_port),
                                             "--backend", f"http://127.0.0.1:{back_port}"],
                                env={"OTEL_SERVICE_NAME": "frontend"})
    pods.wait_for_port("127.0.0.1", back_port)
    pods.wait_for_port("127.0.0.1", front_port)
    out = tmp_path / "spans.jsonl"
    agent = test_cli._start_agent(["trace", "--cgroup", str(frontend.cgroup_dir), "--cgroup", str(backend.cgroup_dir),
                                   "--metrics-port", str(metrics_port), "--output", "jsonl", "--output-file", str(out)])
    try:
        statuses = collections.Counter(test_trace_http._get(front_port, f"/users/{i}") for i in range(23))
        statuses.update(test_trace_http._get(front_port, f"/missing/{i}") for i in range(6))
        statuses.update(test_trace_http._get(back_port, "/healthz") for _ in range(5))
        assert statuses == {200: 28, 502: 6}
        expected_server = 23 + 6 + 23 + 6 + 5  # frontend and backend server spans
        deadline = time.monotonic() + 30
        while True:  # spans are released after the correlator's hold
            samples = scrape(metrics_port)
            counted = total(samples, "http_server_request_duration_seconds_count")
            if counted >= expected_server or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # Settled: nothing more arrives, so the counts are exact, not lower bounds.
        time.sleep(1.5)
        samples = scrape(metrics_port)
    finally:
        agent.send_signal(signal.SIGINT)
        agent.communicate(timeout=60)
    assert agent.returncode == 0

    server = "http_server_request_duration_seconds_count"
    assert total(samples, server, service_name="frontend", http_response_status_code="200") == 23
    assert total(samples, server, service_name="frontend", http_response_status_code="502") == 6
    assert total(samples, server, service_name="backend", http_response_status_code="200") == 28
    assert total(samples, server, service_name="backend", http_response_status_code="404") == 6
    assert total(samples, server) == expected_server
    client = "http_client_request_duration_seconds_count"
    assert total(samples, client, service_name="frontend") == 29
    assert total(samples, client, service_name="frontend", error_type="404") == 6
    edge = {"client": "frontend", "server": "backend"}
    assert total(samples, "traces_service_graph_request_total", **edge) == 29
    assert total(samples, "traces_service_graph_request_failed_total", **edge) == 6
    assert total(samples, "podspan_agent_spans_total") >= expected_server + 29
    assert total(samples, "process_cpu_seconds_total") > 0

    # Every exported span counted once, with its own duration.
    spans = [json.loads(line) for line in out.read_text().splitlines()]
    durations: dict[tuple[str, str], float] = collections.defaultdict(float)
    for span in spans:
        durations[(span["resource"]["service.name"], span["kind"])] += span["duration_ns"] / 1e9
    assert total(samples, "http_server_request_duration_seconds_sum", service_name="backend") == pytest.approx(
        durations[("backend", "server")], abs=1e-6)
    assert total(samples, "http_client_request_duration_seconds_sum", service_name="frontend") == pytest.approx(
        durations[("frontend", "client")], abs=1e-6)


def test_a_metrics_port_in_use_is_a_usage_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = test_cli._run(["trace", "--pid", "1", "--metrics-port", str(taken.getsockname()[1])])
    assert result.returncode == 2
    assert "cannot serve metrics on 127.0.0.1" in result.stderr


def test_with_an_otlp_endpoint_metrics_are_pushed_beside_the_spans(pod_runner: pods.PodRunner) -> None:
    port = conftest.free_port()
    app = pod_runner.start("app", [*conftest.SAMPLE_APP, "backend", "--port", str(port)],
                           env={"OTEL_SERVICE_NAME": "backend"})
    pods.wait_for_port("127.0.0.1", port)
    with otlp_receiver.OtlpReceiver() as receiver:
        agent = test_cli._start_agent(["trace", "--pid", str(app.pid), "--otlp-endpoint", receiver.http_endpoint],
                                      env={"OTEL_METRIC_EXPORT_INTERVAL": "300"})
        try:
            for i in range(9):
                test_trace_http._get(port, f"/users/{i}")
            receiver.wait_for(lambda got: len(got) >= 9, timeout=20)
        finally:
            agent.send_signal(signal.SIGINT)
            agent.communicate(timeout=60)
        requests = receiver.metric_requests()
    assert agent.returncode == 0
    assert len(requests) >= 2  # periodic pushes, then the final one
    counts = [point.count for resource_metrics in requests[-1].resource_metrics
              for scope_metrics in resource_metrics.scope_metrics for metric in scope_metrics.metrics
              if metric.name == "http.server.request.duration" for point in metric.histogram.data_points]
    assert sum(counts) == 9
