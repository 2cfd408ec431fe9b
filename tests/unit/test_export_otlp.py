"""OTLP exporter: exact round trips to a real receiver, env parsing, dead and returning endpoints."""

from __future__ import annotations

import gc
import math
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from podspan_agent.export import otlp, otlp_settings
from podspan_agent.spans import model
from podspan_demo import otlp_receiver

T0 = 1_763_900_000_123_456_789  # ns: exactness below the microsecond matters


def make_record(i: int, **overrides: object) -> model.SpanRecord:
    fields: dict[str, object] = {
        "trace_id": 0x0AF7651916CD43DD8448EB211C80319C + i,
        "span_id": 0xB7AD6B7169203331 + i,
        "parent_span_id": None,
        "name": f"GET /items/{{id}} #{i}",
        "kind": model.SpanKind.SERVER,
        "start_ns": T0 + i,
        "end_ns": T0 + 1_500_001 + i,
        "attributes": {
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "url.path": f"/items/{i}",
            "podspan.ratio": 0.25,
            "podspan.truncated": False,
        },
        "resource": {"process.pid": 4242, "service.name": "shop", "k8s.pod.name": "shop-0"},
        "protocol": "http",
    }
    fields.update(overrides)
    return model.SpanRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[otlp_receiver.OtlpReceiver]:
    with otlp_receiver.OtlpReceiver() as running:
        yield running


def free_loopback_port() -> int:
    """A port nothing listens on: bound then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def endpoint_for(receiver: otlp_receiver.OtlpReceiver, protocol: str) -> str:
    return receiver.grpc_endpoint if protocol == otlp_settings.GRPC else receiver.http_endpoint


@pytest.mark.parametrize("protocol", otlp_settings.PROTOCOLS)
def test_round_trip_is_exact(receiver: otlp_receiver.OtlpReceiver, protocol: str) -> None:
    exporter = otlp.OtlpExporter(
        endpoint_for(receiver, protocol),
        protocol=protocol,
        headers={"x-tenant": "team-a"},
        resource={"host.name": "node-1", "service.name": "from-base", "k8s.node.name": "node-1"},
        environ={},
    )
    root = make_record(0, trace_state="vendor=abc")
    child = make_record(
        1,
        trace_id=root.trace_id,
        parent_span_id=root.span_id,
        kind=model.SpanKind.CLIENT,
        name="SELECT shop.items",
        attributes={"db.system.name": "postgresql", "db.query.text": "SELECT * FROM items WHERE id = $1"},
        error="ERROR 42P01: relation does not exist",
    )
    remote_child = make_record(2, parent_span_id=0x1122334455667788, parent_is_remote=True, resource={})
    empty_error = make_record(3, error="", kind=model.SpanKind.INTERNAL)
    for record in (root, child, remote_child, empty_error):
        exporter.export(record)
    exporter.shutdown(timeout=10)

    received = {span.span_id: span for span in receiver.wait_for(lambda spans: len(spans) == 4)}
    got_root, got_child = received[root.span_id], received[child.span_id]
    got_remote, got_empty = received[remote_child.span_id], received[empty_error.span_id]

    assert got_root.trace_id == root.trace_id
    assert (got_root.start_ns, got_root.end_ns) == (root.start_ns, root.end_ns)
    assert got_root.parent_span_id is None
    assert got_root.name == root.name
    assert got_root.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert got_root.attributes == root.attributes
    assert got_root.trace_state == "vendor=abc"
    assert got_root.status_code == trace_pb2.Status.STATUS_CODE_UNSET
    # The span's own resource wins over the base resource; the rest of the base is kept.
    assert got_root.resource == {
        "host.name": "node-1",
        "k8s.node.name": "node-1",
        "service.name": "shop",
        "process.pid": 4242,
        "k8s.pod.name": "shop-0",
    }
    assert got_root.scope_name == "podspan"

    assert got_child.trace_id == root.trace_id
    assert got_child.parent_span_id == root.span_id
    assert got_child.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert got_child.status_code == trace_pb2.Status.STATUS_CODE_ERROR
    assert got_child.status_message == child.error
    assert got_child.flags & trace_pb2.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    assert not got_child.flags & trace_pb2.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK

    assert got_remote.parent_span_id == 0x1122334455667788
    assert got_remote.flags & trace_pb2.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert got_remote.resource == {
        "host.name": "node-1",
        "service.name": "from-base",
        "k8s.node.name": "node-1",
    }

    assert got_empty.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert (got_empty.status_code, got_empty.status_message) == (trace_pb2.Status.STATUS_CODE_ERROR, "")

    requests = receiver.requests()
    assert requests and all(request.headers.get("x-tenant") == "team-a" for request in requests)
    if protocol == otlp_settings.HTTP_PROTOBUF:
        assert all(request.content_encoding == "gzip" for request in requests)
    stats = exporter.stats()
    assert (stats.spans_enqueued, stats.spans_exported, stats.spans_dropped, stats.export_errors) == (
        4,
        4,
        0,
        0,
    )


def test_spans_are_grouped_by_resource(receiver: otlp_receiver.OtlpReceiver) -> None:
    exporter = otlp.OtlpExporter(receiver.grpc_endpoint, protocol=otlp_settings.GRPC, resource={}, environ={})
    for i in range(6):
        exporter.export(make_record(i, resource={"service.name": f"svc-{i % 2}"}))
    exporter.shutdown(timeout=10)
    spans = receiver.wait_for(lambda spans: len(spans) == 6)
    assert sorted(span.resource["service.name"] for span in spans) == ["svc-0"] * 3 + ["svc-1"] * 3
    payload, invalid = otlp.encode_request([make_record(i, resource={"r": i % 2}) for i in range(6)], {})
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
    assert invalid == 0
    assert [len(rs.scope_spans[0].spans) for rs in request.resource_spans] == [3, 3]


def test_missing_service_name_falls_back_to_unknown_service() -> None:
    payload, _ = otlp.encode_request(
        [make_record(0, resource={"process.executable.name": "nginx"}), make_record(1, resource={})], {}
    )
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
    names = [
        next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name")
        for rs in request.resource_spans
    ]
    assert names == ["unknown_service:nginx", "unknown_service"]


attribute_values = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    trace_id=st.integers(min_value=1, max_value=2**128 - 1),
    span_id=st.integers(min_value=1, max_value=2**64 - 1),
    parent=st.one_of(st.none(), st.integers(min_value=1, max_value=2**64 - 1)),
    name=st.text(),
    start=st.integers(min_value=0, max_value=2**64 - 1),
    duration=st.integers(min_value=0, max_value=10**12),
    attributes=st.dictionaries(st.text(min_size=1), attribute_values, max_size=8),
    error=st.one_of(st.none(), st.text()),
)
def test_wire_encoding_decodes_with_opentelemetry_proto(
    trace_id: int,
    span_id: int,
    parent: int | None,
    name: str,
    start: int,
    duration: int,
    attributes: dict[str, object],
    error: str | None,
) -> None:
    record = make_record(
        0,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        start_ns=start,
        end_ns=min(start + duration, 2**64 - 1),
        attributes=attributes,
        error=error,
    )
    payload, invalid = otlp.encode_request([record], {"host.name": "h"})
    assert invalid == 0
    [span] = otlp_receiver.decode_request(
        trace_service_pb2.ExportTraceServiceRequest.FromString(payload), otlp_receiver.GRPC
    )
    assert (span.trace_id, span.span_id, span.parent_span_id) == (trace_id, span_id, parent)
    assert (span.start_ns, span.end_ns) == (record.start_ns, record.end_ns)
    # Lone surrogates cannot travel as UTF-8; they are replaced, everything else is exact.
    assert span.name == name.encode("utf-8", "replace").decode()
    expected = {
        k.encode("utf-8", "replace").decode(): v.encode("utf-8", "replace").decode()
        if isinstance(v, str)
        else v
        for k, v in attributes.items()
    }
    assert span.attributes == expected
    assert span.status_code == (
        trace_pb2.Status.STATUS_CODE_UNSET if error is None else trace_pb2.Status.STATUS_CODE_ERROR
    )


def test_values_outside_int64_are_sent_as_text_and_nan_survives() -> None:
    record = make_record(0, attributes={"big": 2**70, "nan": math.nan, "neg": -5})
    payload, _ = otlp.encode_request([record], {})
    [span] = otlp_receiver.decode_request(
        trace_service_pb2.ExportTraceServiceRequest.FromString(payload), otlp_receiver.GRPC
    )
    assert span.attributes["big"] == str(2**70)
    assert math.isnan(span.attributes["nan"])
    assert span.attributes["neg"] == -5


def test_unencodable_record_is_counted_not_fatal(receiver: otlp_receiver.OtlpReceiver) -> None:
    exporter = otlp.OtlpExporter(receiver.grpc_endpoint, protocol=otlp_settings.GRPC, environ={})
    exporter.export(make_record(0, kind="not-a-kind"))
    exporter.export(make_record(1))
    exporter.shutdown(timeout=10)
    receiver.wait_for(lambda spans: len(spans) == 1)
    stats = exporter.stats()
    assert (stats.spans_exported, stats.dropped_export_failed) == (1, 1)


@pytest.mark.parametrize("protocol", otlp_settings.PROTOCOLS)
def test_dead_endpoint_bounds_queue_and_counts_drops(protocol: str) -> None:
    port = free_loopback_port()
    endpoint = f"http://127.0.0.1:{port}" + ("/v1/traces" if protocol == otlp_settings.HTTP_PROTOBUF else "")
    exporter = otlp.OtlpExporter(
        endpoint,
        protocol=protocol,
        max_queue_size=100,
        max_batch_size=10,
        schedule_delay=0.01,
        retry_timeout=0.3,
        environ={},
    )
    records = (make_record(i, attributes={"payload": "x" * 1000, "i": i}) for i in range(20_000))

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for record in records:
        # Would hang (and hit the pytest timeout) if export() waited on the network.
        exporter.export(record)
        assert exporter.stats().queued <= 100
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # 20k records of >1 kB each would be >20 MB if they were all retained.
    assert grown < 4_000_000

    exporter.shutdown(timeout=1)
    stats = exporter.stats()
    assert stats.spans_exported == 0
    assert stats.dropped_queue_full >= 20_000 - 100 - 10 * (stats.export_errors + 1)
    assert stats.spans_enqueued + stats.dropped_queue_full == 20_000
    assert stats.spans_enqueued == stats.dropped_export_failed + stats.dropped_shutdown
    assert stats.export_errors >= 1
    exporter.export(make_record(0))
    assert exporter.stats().dropped_shutdown == stats.dropped_shutdown + 1


@pytest.mark.parametrize("protocol", otlp_settings.PROTOCOLS)
def test_spans_flow_again_when_endpoint_returns(protocol: str) -> None:
    receiver = otlp_receiver.OtlpReceiver().start()
    endpoint = endpoint_for(receiver, protocol)
    exporter = otlp.OtlpExporter(
        endpoint, protocol=protocol, schedule_delay=0.05, retry_timeout=0.5, environ={}
    )
    try:
        exporter.export(make_record(0))
        receiver.wait_for(lambda spans: len(spans) == 1)
        assert exporter.stats().failing is None
        receiver.stop()
        exporter.export(make_record(1))
        wait_until(lambda: exporter.stats().dropped_export_failed == 1)
        assert exporter.stats().failing  # the error a status report shows while sends fail
        receiver.start()
        # The client may still be backing off its reconnect: keep offering spans until one arrives.
        for i in range(2, 500):
            exporter.export(make_record(i))
            try:
                receiver.wait_for(lambda spans: len(spans) > 1, timeout=0.2)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("spans never flowed again after the endpoint came back")
    finally:
        exporter.shutdown(timeout=5)
        receiver.stop()
    stats = exporter.stats()
    assert stats.spans_exported >= 2
    assert stats.dropped_export_failed >= 1
    assert stats.failing is None
    assert stats.spans_enqueued == stats.spans_exported + stats.dropped_export_failed + stats.dropped_shutdown


def test_resource_attributes_env_parsing() -> None:
    resource = otlp_settings.base_resource(
        {
            "OTEL_RESOURCE_ATTRIBUTES": (
                " deployment.environment=prod , team=a%2Cb%3Dc,broken, =x,,k8s.cluster.name=c1"
            ),
            "OTEL_SERVICE_NAME": "checkout",
        },
        extra={"k8s.node.name": "node-7"},
    )
    assert resource == {
        "host.name": socket.gethostname(),
        "deployment.environment": "prod",
        "team": "a,b=c",
        "k8s.cluster.name": "c1",
        "service.name": "checkout",
        "k8s.node.name": "node-7",
    }
    assert otlp_settings.base_resource({"OTEL_RESOURCE_ATTRIBUTES": "service.name=x,host.name=h"})["host.name"] == "h"
    assert otlp_settings.base_resource({"OTEL_RESOURCE_ATTRIBUTES": "service.name=x"})["service.name"] == "x"


@pytest.mark.parametrize(
    ("endpoint", "protocol", "insecure", "env", "expected"),
    [
        ("http://collector:4317", otlp_settings.GRPC, None, {}, "http://collector:4317"),
        ("https://collector", otlp_settings.GRPC, None, {}, "https://collector:443"),
        ("collector:4317", otlp_settings.GRPC, None, {}, "https://collector:4317"),
        ("collector:4317", otlp_settings.GRPC, True, {}, "http://collector:4317"),
        ("collector", otlp_settings.GRPC, None, {"OTEL_EXPORTER_OTLP_INSECURE": "true"}, "http://collector:4317"),
        ("http://[::1]:4318", otlp_settings.HTTP_PROTOBUF, None, {}, "http://[::1]:4318/v1/traces"),
        ("http://c:4318/", otlp_settings.HTTP_PROTOBUF, None, {}, "http://c:4318/v1/traces"),
        ("http://c:4318/custom/traces", otlp_settings.HTTP_PROTOBUF, None, {}, "http://c:4318/custom/traces"),
        (None, otlp_settings.HTTP_PROTOBUF, None, {}, "http://localhost:4318/v1/traces"),
        (None, otlp_settings.GRPC, None, {}, "http://localhost:4317"),
        (
            None,
            otlp_settings.HTTP_PROTOBUF,
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base/"},
            "http://c:4318/base/v1/traces",
        ),
        (
            None,
            otlp_settings.HTTP_PROTOBUF,
            None,
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9999"},
            "http://c:9999/v1/traces",
        ),
        (
            "http://explicit:1",
            otlp_settings.GRPC,
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:2"},
            "http://explicit:1",
        ),
    ],
)
def test_endpoint_resolution(
    endpoint: str | None, protocol: str, insecure: bool | None, env: dict[str, str], expected: str
) -> None:
    exporter = otlp.OtlpExporter(endpoint, protocol=protocol, insecure=insecure, environ=env, resource={})
    try:
        assert exporter.endpoint == expected
    finally:
        exporter.shutdown(timeout=0)


def test_protocol_and_headers_from_env(receiver: otlp_receiver.OtlpReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20t0k,x-scope=a",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
    }
    assert otlp_settings.env_endpoint(otlp_settings.TRACES, env) == receiver.grpc_endpoint
    assert otlp_settings.env_endpoint(otlp_settings.TRACES, {}) is None
    exporter = otlp.OtlpExporter(environ=env)
    assert exporter.protocol == otlp_settings.GRPC
    exporter.export(make_record(0))
    exporter.shutdown(timeout=10)
    receiver.wait_for(lambda spans: len(spans) == 1)
    [request] = receiver.requests()
    assert (request.headers["authorization"], request.headers["x-scope"]) == ("Bearer t0k", "a")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "http/json"}, "protocol"),
        ({"compression": "zstd"}, "compression"),
        ({"endpoint": "ftp://c:1"}, "scheme"),
        ({"endpoint": "http://c:4317/v1/traces", "protocol": otlp_settings.GRPC}, "path"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        otlp.OtlpExporter(environ={}, **kwargs)  # type: ignore[arg-type]
