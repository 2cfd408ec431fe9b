"""RED metrics from spans: which instrument, which series, bucket edges, the cardinality limit,
exemplars only from sampled spans, the service graph, and snapshots consistent while recording."""

from __future__ import annotations

import threading

import pytest

from podspan_agent.metrics import red
from podspan_agent.protocols import base
from podspan_agent.spans import model

MS = 1_000_000


def span(protocol: str = "http", kind: model.SpanKind = model.SpanKind.SERVER, duration_ns: int = 3 * MS,
         attributes: dict[str, base.AttributeValue] | None = None, error: str | None = None,
         service: str = "shop", trace_id: int = 0xABC, span_id: int = 0x12) -> model.SpanRecord:
    return model.SpanRecord(
        trace_id=trace_id, span_id=span_id, parent_span_id=None, name="GET /x", kind=kind,
        start_ns=1_000 * MS, end_ns=1_000 * MS + duration_ns,
        attributes=attributes if attributes is not None else {"http.request.method": "GET",
                                                              "http.response.status_code": 200,
                                                              "http.route": "/x", "url.path": "/x/1"},
        resource={"service.name": service, "k8s.namespace.name": "prod", "k8s.pod.name": "shop-7f9c-abcde",
                  "k8s.deployment.name": "shop"},
        protocol=protocol, error=error,
    )


def only_point(snapshot: red.Snapshot) -> red.Point:
    assert len(snapshot.points) == 1, snapshot.points
    return snapshot.points[0]


@pytest.mark.parametrize(("protocol", "kind", "name"), [
    ("http", model.SpanKind.SERVER, "http.server.request.duration"),
    ("http", model.SpanKind.CLIENT, "http.client.request.duration"),
    ("http2", model.SpanKind.SERVER, "http.server.request.duration"),
    ("grpc", model.SpanKind.SERVER, "rpc.server.duration"),
    ("grpc", model.SpanKind.CLIENT, "rpc.client.duration"),
    ("postgresql", model.SpanKind.CLIENT, "db.client.operation.duration"),
    ("redis", model.SpanKind.CLIENT, "db.client.operation.duration"),
    ("mysql", model.SpanKind.SERVER, "podspan.db.server.operation.duration"),
    ("kafka", model.SpanKind.CLIENT, "messaging.client.operation.duration"),
    ("dns", model.SpanKind.CLIENT, "dns.lookup.duration"),
])
def test_each_kind_of_span_counts_in_its_semantic_convention_instrument(
        protocol: str, kind: model.SpanKind, name: str) -> None:
    metrics = red.RedMetrics()
    metrics.record(span(protocol, kind), sampled=False)
    assert only_point(metrics.snapshot()).instrument.name == name


def test_series_keep_low_cardinality_attributes_and_the_workload_not_the_pod() -> None:
    metrics = red.RedMetrics()
    metrics.record(span(), sampled=False)
    point = only_point(metrics.snapshot())
    assert dict(point.labels) == {"http.request.method": "GET", "http.response.status_code": 200, "http.route": "/x"}
    assert dict(point.workload) == {"service.name": "shop", "k8s.namespace.name": "prod",
                                    "k8s.deployment.name": "shop"}


def test_durations_fall_in_upper_inclusive_buckets_in_the_instrument_unit() -> None:
    metrics = red.RedMetrics()
    for duration_ms in (1, 5, 5.001, 10_000, 20_000):
        metrics.record(span(duration_ns=int(duration_ms * MS)), sampled=False)
    histogram = only_point(metrics.snapshot()).histogram
    assert histogram.bounds == red.DURATION_BUCKETS_S
    assert histogram.counts[0] == 2  # 1 ms and exactly 5 ms are <= 0.005 s
    assert histogram.counts[1] == 1  # 5.001 ms
    assert histogram.counts[-2] == 1  # exactly 10 s: the last bound
    assert histogram.counts[-1] == 1  # above every bound
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(0.001 + 0.005 + 0.005001 + 10 + 20)


def test_rpc_durations_are_in_milliseconds() -> None:
    metrics = red.RedMetrics()
    metrics.record(span("grpc", attributes={"rpc.system": "grpc", "rpc.method": "Get"}, duration_ns=7 * MS),
                   sampled=False)
    point = only_point(metrics.snapshot())
    assert point.instrument.unit == "ms" and point.histogram.sum == pytest.approx(7.0)


def test_a_failed_span_without_a_type_gets_error_type_other() -> None:
    metrics = red.RedMetrics()
    metrics.record(span("postgresql", model.SpanKind.CLIENT, attributes={"db.system.name": "postgresql"},
                        error="ERROR 42P01"), sampled=False)
    assert dict(only_point(metrics.snapshot()).labels)["error.type"] == "_OTHER"


def test_beyond_the_series_limit_observations_fold_into_one_overflow_series_and_are_counted() -> None:
    metrics = red.RedMetrics(series_limit=3)
    for status in range(200, 210):
        metrics.record(span(attributes={"http.response.status_code": status}), sampled=False)
    metrics.record(span(attributes={"http.response.status_code": 200}), sampled=False)  # an existing series
    metrics.record(span(service="other", attributes={"http.response.status_code": 299}), sampled=False)
    snapshot = metrics.snapshot()
    shop = {point.labels: point.histogram.count for point in snapshot.points
            if dict(point.workload)["service.name"] == "shop"}
    assert len(shop) == 4 and shop[red.OVERFLOW] == 7
    assert shop[(("http.response.status_code", 200),)] == 2
    assert sum(shop.values()) == 11  # nothing lost, only folded
    workload = next(point.workload for point in snapshot.points if dict(point.workload)["service.name"] == "shop")
    assert snapshot.folded == {("http.server.request.duration", "", workload): 7}  # per workload: "other" has its own


def test_only_sampled_spans_become_exemplars() -> None:
    metrics = red.RedMetrics()
    metrics.record(span(trace_id=1, span_id=2), sampled=True)
    metrics.record(span(trace_id=3, span_id=4, duration_ns=600 * MS), sampled=False)
    histogram = only_point(metrics.snapshot()).histogram
    exemplars = [e for e in histogram.exemplars if e is not None]
    assert [(e.trace_id, e.span_id) for e in exemplars] == [(1, 2)]
    assert exemplars[0].value == pytest.approx(0.003)


def test_each_profile_counts_its_own_spans() -> None:
    metrics = red.RedMetrics()
    metrics.record(span(), sampled=False, profile="TraceProfile/shop/web")
    metrics.record(span(), sampled=False, profile="ClusterTraceProfile/all")
    metrics.record_pair(span(kind=model.SpanKind.CLIENT), span(), profile="ClusterTraceProfile/all")
    assert [p.profile for p in metrics.snapshot("TraceProfile/shop/web").points] == ["TraceProfile/shop/web"]
    only = metrics.snapshot("ClusterTraceProfile/all")
    assert [p.histogram.count for p in only.points] == [1] and len(only.edges) == 1
    assert len(metrics.snapshot().points) == 2 and metrics.snapshot("TraceProfile/shop/web").edges == []


def test_spans_no_instrument_covers_are_counted_as_unmeasured() -> None:
    metrics = red.RedMetrics()
    metrics.record(span("dns", model.SpanKind.SERVER), sampled=False)
    snapshot = metrics.snapshot()
    assert (snapshot.points, snapshot.spans, snapshot.unmeasured) == ([], 1, 1)


def test_service_graph_counts_pairs_failures_and_both_durations() -> None:
    metrics = red.RedMetrics()
    for i in range(5):
        client = span(kind=model.SpanKind.CLIENT, service="frontend", duration_ns=300 * MS,
                      error="HTTP 404" if i == 0 else None)
        server = span(service="backend", duration_ns=150 * MS)
        metrics.record_pair(client, server)
    edge, = metrics.snapshot().edges
    assert (edge.client, edge.server, edge.requests, edge.failed) == ("frontend", "backend", 5, 1)
    assert edge.server_seconds.counts[1] == 5 and edge.client_seconds.counts[2] == 5  # 0.15 <= 0.2, 0.3 <= 0.4


def test_the_service_graph_is_bounded() -> None:
    metrics = red.RedMetrics(max_edges=2)
    for i in range(4):
        metrics.record_pair(span(kind=model.SpanKind.CLIENT, service=f"c{i}"), span(service="s"))
    assert len(metrics.snapshot().edges) == 2 and metrics.edges_folded == 2


def test_snapshots_taken_while_another_thread_records_are_consistent() -> None:
    metrics = red.RedMetrics()
    done = threading.Event()

    def record() -> None:
        i = 0
        while not done.is_set():
            metrics.record(span(duration_ns=(i % 50) * MS, attributes={"http.response.status_code": 200 + i % 7}),
                           sampled=i % 3 == 0)
            i += 1

    worker = threading.Thread(target=record)
    worker.start()
    try:
        for _ in range(200):
            snapshot = metrics.snapshot()
            assert sum(point.histogram.count for point in snapshot.points) == snapshot.spans
    finally:
        done.set()
        worker.join()
