"""The Prometheus endpoint over real HTTP on loopback, parsed with prometheus_client's own parsers:
metric and label names, cumulative buckets, exemplars in OpenMetrics, service graph, agent health."""

from __future__ import annotations

import collections.abc
import urllib.request

import pytest
from prometheus_client import parser
from prometheus_client.openmetrics import parser as openmetrics_parser

from podspan_agent.export import otlp
from podspan_agent.metrics import prometheus, red
from podspan_agent.spans import model
from tests.unit import test_red_metrics

MS = 1_000_000


@pytest.fixture
def served() -> collections.abc.Iterator[tuple[red.RedMetrics, prometheus.Collector, prometheus.Endpoint]]:
    metrics = red.RedMetrics()
    collector = prometheus.Collector(metrics)
    endpoint = prometheus.Endpoint("127.0.0.1", 0, collector)
    try:
        yield metrics, collector, endpoint
    finally:
        endpoint.close()


def scrape(endpoint: prometheus.Endpoint, accept: str | None = None) -> str:
    request = urllib.request.Request(endpoint.url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in parser.text_string_to_metric_families(text)
            for s in family.samples]


def test_histograms_are_exposed_with_prometheus_names_labels_and_cumulative_buckets(served: tuple[
        red.RedMetrics, prometheus.Collector, prometheus.Endpoint]) -> None:
    metrics, _, endpoint = served
    for duration_ms in (2, 2, 40, 900):
        metrics.record(test_red_metrics.span(duration_ns=duration_ms * MS), sampled=False)
    got = samples(scrape(endpoint))
    name = "http_server_request_duration_seconds"
    labels = {"service_name": "shop", "k8s_namespace_name": "prod", "k8s_deployment_name": "shop",
              "http_request_method": "GET", "http_response_status_code": "200", "http_route": "/x"}
    buckets = {s_labels["le"]: value for s_name, s_labels, value in got
               if s_name == f"{name}_bucket" and {k: v for k, v in s_labels.items() if k != "le"} == labels}
    assert buckets["0.005"] == 2 and buckets["0.05"] == 3 and buckets["0.75"] == 3 and buckets["1.0"] == 4
    assert buckets["+Inf"] == 4
    assert (f"{name}_count", labels, 4.0) in got
    total = next(value for s_name, s_labels, value in got if s_name == f"{name}_sum" and s_labels == labels)
    assert total == pytest.approx(0.944)


def test_openmetrics_scrapes_carry_exemplars_of_sampled_spans(served: tuple[
        red.RedMetrics, prometheus.Collector, prometheus.Endpoint]) -> None:
    metrics, _, endpoint = served
    metrics.record(test_red_metrics.span(trace_id=0xFEED, span_id=0xBEEF), sampled=True)
    text = scrape(endpoint, accept="application/openmetrics-text; version=1.0.0")
    exemplars = [s.exemplar for family in openmetrics_parser.text_string_to_metric_families(text)
                 for s in family.samples if s.exemplar is not None]
    assert [e.labels for e in exemplars] == [{"trace_id": f"{0xFEED:032x}", "span_id": f"{0xBEEF:016x}"}]
    assert exemplars[0].value == pytest.approx(0.003)


def test_service_graph_uses_tempo_names(served: tuple[red.RedMetrics, prometheus.Collector,
                                                      prometheus.Endpoint]) -> None:
    metrics, _, endpoint = served
    client = test_red_metrics.span(kind=model.SpanKind.CLIENT, service="frontend", error="HTTP 503")
    metrics.record_pair(client, test_red_metrics.span(service="backend", error="HTTP 503"))
    got = samples(scrape(endpoint))
    edge = {"client": "frontend", "server": "backend"}
    assert ("traces_service_graph_request_total", edge, 1.0) in got
    assert ("traces_service_graph_request_failed_total", edge, 1.0) in got
    assert ("traces_service_graph_request_server_seconds_count", edge, 1.0) in got
    assert ("traces_service_graph_request_client_seconds_count", edge, 1.0) in got


def test_health_is_what_the_tracer_published_and_process_metrics_are_there(served: tuple[
        red.RedMetrics, prometheus.Collector, prometheus.Endpoint]) -> None:
    _, collector, endpoint = served
    tracer_stats = {"events": 120, "kernel_events_lost": 3, "spans": 60, "connections": 4}
    exports = [otlp.ExportStats(spans_exported=50, dropped_queue_full=2, export_errors=1, queued=5, in_flight=3),
               otlp.ExportStats(spans_exported=7, dropped_shutdown=1)]
    collector.publish(prometheus.Health.of(tracer_stats, exports, tracepoints=22))
    got = {name: value for name, labels, value in samples(scrape(endpoint)) if not labels}
    assert got["podspan_agent_events_total"] == 120 and got["podspan_agent_events_lost_total"] == 3
    assert got["podspan_agent_spans_total"] == 60 and got["podspan_agent_spans_exported_total"] == 57
    assert got["podspan_agent_spans_dropped_total"] == 3 and got["podspan_agent_export_errors_total"] == 1
    assert got["podspan_agent_export_queue"] == 8 and got["podspan_agent_connections"] == 4
    assert got["podspan_agent_tracepoints_attached"] == 22
    assert got["process_cpu_seconds_total"] > 0 and got["process_resident_memory_bytes"] > 0


def test_folded_series_are_counted_per_workload() -> None:
    metrics = red.RedMetrics(series_limit=1)
    endpoint = prometheus.Endpoint("127.0.0.1", 0, prometheus.Collector(metrics))
    try:
        for status in (200, 201, 202):
            metrics.record(test_red_metrics.span(attributes={"http.response.status_code": status}), sampled=False)
        got = samples(scrape(endpoint))
    finally:
        endpoint.close()
    folded = [(labels, value) for name, labels, value in got if name == "podspan_metric_series_folded_total"]
    assert folded == [({"metric": "http.server.request.duration", "service_name": "shop",
                        "k8s_namespace_name": "prod", "k8s_deployment_name": "shop"}, 2.0)]
    overflow = [labels for name, labels, _ in got
                if name == "http_server_request_duration_seconds_count" and labels.get("otel_metric_overflow")]
    assert overflow and overflow[0]["otel_metric_overflow"] == "true"


def test_a_port_in_use_is_an_os_error(served: tuple[red.RedMetrics, prometheus.Collector,
                                                    prometheus.Endpoint]) -> None:
    _, collector, endpoint = served
    with pytest.raises(OSError):
        prometheus.Endpoint("127.0.0.1", endpoint.port, collector)
