"""OTLP metric export: what the request holds (decoded with opentelemetry-proto), where it goes
(/v1/metrics beside /v1/traces), pushes to a real receiver over HTTP and gRPC, a dead endpoint counted."""

from __future__ import annotations

import collections.abc
import time

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from podspan_agent.export import otlp_metrics, otlp_settings
from podspan_agent.metrics import red
from podspan_agent.spans import model
from podspan_demo import otlp_receiver
from tests.unit import test_red_metrics

MS = 1_000_000


@pytest.fixture
def receiver() -> collections.abc.Iterator[otlp_receiver.OtlpReceiver]:
    with otlp_receiver.OtlpReceiver() as running:
        yield running


def recorded() -> red.RedMetrics:
    metrics = red.RedMetrics()
    for duration_ms in (2, 2, 40):
        metrics.record(test_red_metrics.span(duration_ns=duration_ms * MS), sampled=True)
    metrics.record(test_red_metrics.span(service="billing", duration_ns=7 * MS), sampled=False)
    metrics.record_pair(test_red_metrics.span(kind=model.SpanKind.CLIENT, service="shop", error="HTTP 503"),
                        test_red_metrics.span(service="billing"))
    return metrics


def metric_named(request: metrics_service_pb2.ExportMetricsServiceRequest, service: str | None,
                 name: str) -> object:
    for resource_metrics in request.resource_metrics:
        attributes = {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
        if service is None or attributes.get("service.name") == service:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        return metric
    raise AssertionError(f"no {name} for {service}")


def test_the_request_holds_one_resource_per_workload_with_cumulative_histograms_and_exemplars() -> None:
    payload = otlp_metrics.encode_request(recorded().snapshot(), {"host.name": "node-a"}, 100, 200)
    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(payload)
    metric = metric_named(request, "shop", "http.server.request.duration")
    assert metric.unit == "s" and metric.histogram.aggregation_temporality == 2  # cumulative
    point, = metric.histogram.data_points
    assert (point.count, point.start_time_unix_nano, point.time_unix_nano) == (3, 100, 200)
    assert point.sum == pytest.approx(0.044)
    assert list(point.explicit_bounds) == list(red.DURATION_BUCKETS_S)
    assert list(point.bucket_counts)[:3] == [2, 0, 0] and sum(point.bucket_counts) == 3
    assert {kv.key: kv.value.int_value or kv.value.string_value for kv in point.attributes} == {
        "http.request.method": "GET", "http.response.status_code": 200, "http.route": "/x"}
    assert [e.trace_id for e in point.exemplars] == [(0xABC).to_bytes(16, "big")] * 2  # two buckets hit
    resource = next(rm.resource for rm in request.resource_metrics
                    if any(kv.value.string_value == "billing" for kv in rm.resource.attributes))
    assert {kv.key for kv in resource.attributes} >= {"host.name", "service.name", "k8s.namespace.name"}
    total = metric_named(request, None, "traces_service_graph_request_total")
    assert total.sum.is_monotonic and total.sum.data_points[0].as_int == 1
    assert metric_named(request, None, "traces_service_graph_request_failed_total").sum.data_points[0].as_int == 1


@pytest.mark.parametrize(("traces", "metrics"), [
    ("http://collector:4318/v1/traces", "http://collector:4318/v1/metrics"),
    ("http://collector:4318/otlp/v1/traces/", "http://collector:4318/otlp/v1/metrics"),
    ("http://collector:4317", "http://collector:4317"),
    ("http://collector:4318/custom", "http://collector:4318/custom"),
    (None, None),
])
def test_metrics_go_beside_the_traces_endpoint(traces: str | None, metrics: str | None) -> None:
    assert otlp_metrics.metrics_endpoint(traces) == metrics


def test_the_interval_comes_from_the_sdk_variable() -> None:
    assert otlp_metrics.interval_from_env({}) == 60.0
    assert otlp_metrics.interval_from_env({"OTEL_METRIC_EXPORT_INTERVAL": "1500"}) == 1.5
    with pytest.raises(ValueError, match="milliseconds"):
        otlp_metrics.interval_from_env({"OTEL_METRIC_EXPORT_INTERVAL": "1.5s"})


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_pushes_reach_a_real_receiver_periodically_and_at_shutdown(receiver: otlp_receiver.OtlpReceiver,
                                                                   protocol: str) -> None:
    metrics = recorded()
    endpoint = receiver.http_endpoint.replace("/v1/traces", "/v1/metrics") if protocol == "http/protobuf" \
        else receiver.grpc_endpoint
    settings = otlp_settings.resolve(otlp_settings.METRICS, endpoint, protocol=protocol, insecure=True, environ={})
    exporter = otlp_metrics.MetricsExporter(metrics.snapshot, settings, interval=0.2, environ={})
    deadline = time.monotonic() + 10
    while len(receiver.metric_requests()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    metrics.record(test_red_metrics.span(), sampled=False)
    exporter.shutdown()
    requests = receiver.metric_requests()
    assert len(requests) >= 3
    last = metric_named(requests[-1], "shop", "http.server.request.duration")
    assert last.histogram.data_points[0].count == 4  # the final push has what came after the last tick
    assert exporter.stats().pushes == len(requests) and exporter.stats().push_errors == 0


def test_a_dead_endpoint_is_counted_and_never_raises() -> None:
    with otlp_receiver.OtlpReceiver() as dead:
        endpoint = dead.http_endpoint.replace("/v1/traces", "/v1/metrics")
    settings = otlp_settings.resolve(otlp_settings.METRICS, endpoint, protocol="http/protobuf", environ={})
    exporter = otlp_metrics.MetricsExporter(recorded().snapshot, settings, interval=0.1, environ={})
    deadline = time.monotonic() + 10
    while exporter.stats().push_errors < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    exporter.shutdown(timeout=0.5)
    stats = exporter.stats()
    assert stats.pushes == 0 and stats.push_errors >= 2 and stats.failing
