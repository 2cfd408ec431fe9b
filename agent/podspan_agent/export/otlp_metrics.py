"""OTLP metric export: the RED histograms and the service graph (`metrics.red`) as cumulative OTLP
histograms and sums, pushed every OTEL_METRIC_EXPORT_INTERVAL (60 s by default) and once more at
shutdown, to the same endpoint as the spans (`/v1/metrics` beside `/v1/traces`).

A few hundred data points a minute: encoded with opentelemetry-proto's messages (unlike spans, no
per-item budget to meet). Nothing is queued: every push is the whole cumulative state, so a push
that fails is simply replaced by the next one (failures are counted).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from podspan_agent.export import otlp, otlp_settings, otlp_transport
from podspan_agent.metrics import red
from podspan_agent.protocols import base

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 60.0  # the SDK's default OTEL_METRIC_EXPORT_INTERVAL
_CUMULATIVE = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def metrics_endpoint(traces_endpoint: str | None) -> str | None:
    """The metrics endpoint beside a traces endpoint: `/v1/traces` becomes `/v1/metrics`; an endpoint
    without that path is a base (host:port, or a gRPC target) and gets the signal's own path."""
    if traces_endpoint is None:
        return None
    stripped = traces_endpoint.rstrip("/")
    if stripped.endswith(otlp_settings.TRACES.http_path):
        return stripped[: -len(otlp_settings.TRACES.http_path)] + otlp_settings.METRICS.http_path
    return traces_endpoint


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    value = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if not value:
        return DEFAULT_INTERVAL_S
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL={value!r}: milliseconds, a positive integer")
    return int(value) / 1000


def _value(value: base.AttributeValue) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    return common_pb2.AnyValue(string_value=str(value))


def _attributes(items: Iterable[tuple[str, base.AttributeValue]]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=key, value=_value(value)) for key, value in items]


def _data_point(histogram: red.Histogram, labels: Iterable[tuple[str, base.AttributeValue]],
                start_ns: int, now_ns: int) -> metrics_pb2.HistogramDataPoint:
    exemplars = [metrics_pb2.Exemplar(time_unix_nano=e.time_ns, as_double=e.value,
                                      trace_id=e.trace_id.to_bytes(16, "big"), span_id=e.span_id.to_bytes(8, "big"))
                 for e in histogram.exemplars if e is not None]
    return metrics_pb2.HistogramDataPoint(
        attributes=_attributes(labels), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
        count=histogram.count, sum=histogram.sum, bucket_counts=histogram.counts,
        explicit_bounds=histogram.bounds, exemplars=exemplars)


def _histogram(name: str, unit: str, description: str,
               points: list[metrics_pb2.HistogramDataPoint]) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(name=name, unit=unit, description=description, histogram=metrics_pb2.Histogram(
        data_points=points, aggregation_temporality=_CUMULATIVE))


def _counter(name: str, description: str, points: list[metrics_pb2.NumberDataPoint]) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(name=name, unit="1", description=description, sum=metrics_pb2.Sum(
        data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=True))


def encode_request(snapshot: red.Snapshot, resource: Mapping[str, base.AttributeValue], start_ns: int,
                   now_ns: int) -> bytes:
    """One serialized ExportMetricsServiceRequest: a ResourceMetrics per workload (its attributes over
    `resource`) with one histogram per instrument, and the service graph under `resource` itself."""
    by_workload: dict[red.Labels, dict[red.Instrument, list[metrics_pb2.HistogramDataPoint]]] = {}
    for point in snapshot.points:
        by_workload.setdefault(point.workload, {}).setdefault(point.instrument, []).append(
            _data_point(point.histogram, point.labels, start_ns, now_ns))
    scope = common_pb2.InstrumentationScope(name=otlp.SCOPE_NAME, version=otlp.scope_version())
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    for workload, instruments in by_workload.items():
        metrics = [_histogram(instrument.name, instrument.unit, instrument.description, points)
                   for instrument, points in instruments.items()]
        request.resource_metrics.append(metrics_pb2.ResourceMetrics(
            resource=resource_pb2.Resource(attributes=_attributes(otlp.merged_resource(resource, dict(workload))
                                                                  .items())),
            scope_metrics=[metrics_pb2.ScopeMetrics(scope=scope, metrics=metrics)]))
    if snapshot.edges:
        totals: list[metrics_pb2.NumberDataPoint] = []
        failures: list[metrics_pb2.NumberDataPoint] = []
        servers: list[metrics_pb2.HistogramDataPoint] = []
        clients: list[metrics_pb2.HistogramDataPoint] = []
        for edge in snapshot.edges:
            labels = (("client", edge.client), ("server", edge.server))
            totals.append(metrics_pb2.NumberDataPoint(attributes=_attributes(labels), start_time_unix_nano=start_ns,
                                                      time_unix_nano=now_ns, as_int=edge.requests))
            failures.append(metrics_pb2.NumberDataPoint(attributes=_attributes(labels), start_time_unix_nano=start_ns,
                                                        time_unix_nano=now_ns, as_int=edge.failed))
            servers.append(_data_point(edge.server_seconds, labels, start_ns, now_ns))
            clients.append(_data_point(edge.client_seconds, labels, start_ns, now_ns))
        request.resource_metrics.append(metrics_pb2.ResourceMetrics(
            resource=resource_pb2.Resource(attributes=_attributes(otlp.merged_resource(resource, {}).items())),
            scope_metrics=[metrics_pb2.ScopeMetrics(scope=scope, metrics=[
                _counter("traces_service_graph_request_total", "Requests between two services.", totals),
                _counter("traces_service_graph_request_failed_total", "Failed requests between two services.",
                         failures),
                _histogram("traces_service_graph_request_server_seconds", "s",
                           "Server-side duration of requests between two services.", servers),
                _histogram("traces_service_graph_request_client_seconds", "s",
                           "Client-side duration of requests between two services.", clients),
            ])]))
    return bytes(request.SerializeToString())


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsExportStats:
    pushes: int = 0
    push_errors: int = 0  # pushes given up (each replaced by the next one)
    failing: str | None = None


class MetricsExporter:
    """Pushes `snapshot()` every `interval` seconds on a background thread, and once more at shutdown."""

    def __init__(self, snapshot: Callable[[], red.Snapshot], settings: otlp_settings.Settings,
                 resource: Mapping[str, base.AttributeValue] | None = None, interval: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        """`settings`: `otlp_settings.resolve(otlp_settings.METRICS, ...)`; `interval` defaults to
        OTEL_METRIC_EXPORT_INTERVAL."""
        self.endpoint = settings.endpoint
        self._interval = interval if interval is not None else interval_from_env(environ)
        self._snapshot = snapshot
        self._resource = dict(otlp_settings.base_resource(environ) if resource is None else resource)
        self._sender = otlp_transport.RetryingSender(settings, retry_timeout=min(10.0, self._interval),
                                                     request_timeout=10.0)
        self._start_ns = time.time_ns()
        self._pushes = self._push_errors = 0
        self._worker = threading.Thread(target=self._run, name="podspan-otlp-metrics", daemon=True)
        self._worker.start()

    def stats(self) -> MetricsExportStats:
        return MetricsExportStats(self._pushes, self._push_errors, self._sender.failing)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Push the final state (within `timeout`), then stop."""
        self._sender.stop(time.monotonic() + timeout)
        self._worker.join(timeout + 1.0)
        self._sender.close()

    def _run(self) -> None:
        while not self._sender.stopping.wait(self._interval):
            self._push()
        self._push()

    def _push(self) -> None:
        try:
            payload = encode_request(self._snapshot(), self._resource, self._start_ns, time.time_ns())
            rejected, _errors, error = self._sender.send(payload)
        except Exception:  # a bug must cost one push, never the exporter thread
            log.exception("OTLP metric push to %s failed unexpectedly", self.endpoint)
            rejected, error = None, "unexpected error"
        if rejected is None:
            self._push_errors += 1
            log.warning("OTLP metric push to %s failed: %s", self.endpoint, error)
            return
        self._pushes += 1
        if rejected:
            log.warning("OTLP receiver rejected %d metric data points", rejected)
