"""The agent's Prometheus endpoint: RED histograms and the service graph (`metrics.red`) and the
agent's own health, in prometheus_client's standard exposition (OpenMetrics, with exemplars, when the
scraper asks for it), plus prometheus_client's process metrics (CPU seconds, resident memory)."""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Iterator

import prometheus_client
from prometheus_client import core, samples

from podspan_agent.export import otlp
from podspan_agent.metrics import red

DEFAULT_PORT = 9464  # the port OpenTelemetry's Prometheus exporters use by default
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds"}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    """The agent's own counters, published by the tracer's thread (the endpoint's thread only reads)."""

    events: int = 0
    events_lost: int = 0
    malformed_events: int = 0
    spans: int = 0
    spans_exported: int = 0
    spans_dropped: int = 0
    export_errors: int = 0
    export_queue: int = 0
    connections: int = 0
    tracepoints_attached: int = 0
    exchanges_skipped: int = 0
    exchanges_uncounted: int = 0
    capture_fraction: float = 1.0
    cost_percent: float = 0.0

    @classmethod
    def of(cls, tracer_stats: dict[str, int], exports: Iterable[otlp.ExportStats], tracepoints: int,
           capture_fraction: float = 1.0, cost_percent: float = 0.0) -> Health:
        exports = list(exports)
        return cls(
            events=tracer_stats.get("events", 0),
            events_lost=tracer_stats.get("kernel_events_lost", 0),
            malformed_events=tracer_stats.get("malformed_events", 0),
            spans=tracer_stats.get("spans", 0),
            spans_exported=sum(stats.spans_exported for stats in exports),
            spans_dropped=sum(stats.spans_dropped for stats in exports),
            export_errors=sum(stats.export_errors for stats in exports),
            export_queue=sum(stats.queued + stats.in_flight for stats in exports),
            connections=tracer_stats.get("connections", 0),
            tracepoints_attached=tracepoints,
            exchanges_skipped=tracer_stats.get("kernel_skipped", 0),
            exchanges_uncounted=(tracer_stats.get("kernel_skipped_uncounted", 0)
                                 + tracer_stats.get("kernel_skips_forgotten", 0)),
            capture_fraction=capture_fraction,
            cost_percent=cost_percent,
        )


# Health field -> (Prometheus type, help). Counters get the `_total` suffix.
_HEALTH_METRICS = {
    "events": ("counter", "Ring-buffer records the agent took."),
    "events_lost": ("counter", "Records the kernel could not write because the ring buffer was full."),
    "malformed_events": ("counter", "Ring-buffer records too short for their kind."),
    "spans": ("counter", "Spans produced, before sampling."),
    "spans_exported": ("counter", "Spans the OTLP endpoints accepted."),
    "spans_dropped": ("counter", "Spans dropped by the exporters (queue full, endpoint failing, shutdown)."),
    "export_errors": ("counter", "Failed OTLP send attempts."),
    "export_queue": ("gauge", "Spans queued or in flight to the OTLP endpoints."),
    "connections": ("gauge", "Connections the agent tracks."),
    "tracepoints_attached": ("gauge", "Kernel tracepoints the capture programs are attached to."),
    "exchanges_skipped": ("counter", "Exchanges the kernel counted without capturing them (overhead budget)."),
    "exchanges_uncounted": ("counter", "Skipped exchanges missing from the RED metrics (the kernel's series table was "
                            "full, or their connection was dropped from the table mid-exchange)."),
    "capture_fraction": ("gauge", "Fraction of HTTP/1 and Redis exchanges captured in full (below 1: over budget)."),
    "cost_percent": ("gauge", "The agent's cost over the last second with a budget set (percent of one CPU)."),
}


def metric_name(instrument: red.Instrument) -> str:
    """OpenTelemetry -> Prometheus: dots become underscores and the unit a suffix
    (`http.server.request.duration`, s -> `http_server_request_duration_seconds`)."""
    return f"{_INVALID.sub('_', instrument.name)}_{_UNIT_SUFFIX[instrument.unit]}"


def label_name(attribute: str) -> str:
    return _INVALID.sub("_", attribute)


def _label_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _labels(profile: str, *groups: red.Labels) -> dict[str, str]:
    labels = {"podspan_profile": profile} if profile else {}
    labels.update((label_name(key), _label_value(value)) for group in groups for key, value in group)
    return labels


def _add_histogram(family: core.Metric, name: str, labels: dict[str, str], histogram: red.Histogram) -> None:
    cumulative = 0
    bounds = [*histogram.bounds, float("inf")]
    for bound, count, exemplar in zip(bounds, histogram.counts, histogram.exemplars, strict=True):
        cumulative += count
        sample_exemplar = None
        if exemplar is not None:
            sample_exemplar = samples.Exemplar(
                {"trace_id": f"{exemplar.trace_id:032x}", "span_id": f"{exemplar.span_id:016x}"},
                exemplar.value, exemplar.time_ns / 1e9)
        le = "+Inf" if bound == float("inf") else prometheus_client.utils.floatToGoString(bound)
        family.add_sample(f"{name}_bucket", {**labels, "le": le}, cumulative, exemplar=sample_exemplar)
    family.add_sample(f"{name}_count", labels, cumulative)
    family.add_sample(f"{name}_sum", labels, histogram.sum)


class Collector:
    """prometheus_client collector over the RED metrics' snapshot and the last published Health."""

    def __init__(self, red_metrics: red.RedMetrics) -> None:
        self._red = red_metrics
        self._health = Health()

    def publish(self, health: Health) -> None:
        """The tracer's thread hands over its latest counters (one reference swap: no lock needed)."""
        self._health = health

    def collect(self) -> Iterator[core.Metric]:
        snapshot = self._red.snapshot()
        yield from self._histograms(snapshot.points)
        yield from self._service_graph(snapshot.edges)
        folded = core.CounterMetricFamily(
            "podspan_metric_series_folded", "Observations folded into the overflow series of a workload's "
            "instrument because it reached its series limit.", labels=None)
        for (instrument_name, profile, workload), count in snapshot.folded.items():
            folded.add_sample("podspan_metric_series_folded_total",
                              {"metric": instrument_name, **_labels(profile, workload)}, count)
        yield folded
        health = self._health
        for field, (kind, help_text) in _HEALTH_METRICS.items():
            value = getattr(health, field)
            name = f"podspan_agent_{field}"
            yield (core.CounterMetricFamily(name, help_text, value=value) if kind == "counter"
                   else core.GaugeMetricFamily(name, help_text, value=value))

    @staticmethod
    def _histograms(points: list[red.Point]) -> Iterator[core.Metric]:
        by_instrument: dict[red.Instrument, list[red.Point]] = collections.defaultdict(list)
        for point in points:
            by_instrument[point.instrument].append(point)
        for instrument, group in by_instrument.items():
            name = metric_name(instrument)
            family = core.Metric(name, instrument.description, "histogram")
            for point in group:
                _add_histogram(family, name, _labels(point.profile, point.workload, point.labels), point.histogram)
            yield family

    @staticmethod
    def _service_graph(edges: list[red.EdgePoint]) -> Iterator[core.Metric]:
        # Tempo's service-graph metric names, so its dashboards and Grafana's service graph read them.
        total = core.Metric("traces_service_graph_request", "Requests between two services.", "counter")
        failed = core.Metric("traces_service_graph_request_failed", "Failed requests between two services.",
                             "counter")
        server = core.Metric("traces_service_graph_request_server_seconds",
                             "Server-side duration of requests between two services.", "histogram")
        client = core.Metric("traces_service_graph_request_client_seconds",
                             "Client-side duration of requests between two services.", "histogram")
        for edge in edges:
            labels = {**_labels(edge.profile), "client": edge.client, "server": edge.server}
            total.add_sample("traces_service_graph_request_total", labels, edge.requests)
            failed.add_sample("traces_service_graph_request_failed_total", labels, edge.failed)
            _add_histogram(server, server.name, labels, edge.server_seconds)
            _add_histogram(client, client.name, labels, edge.client_seconds)
        yield from (total, failed, server, client)


class Endpoint:
    """`GET /metrics` on (address, port) in a daemon thread of prometheus_client; port 0 picks a free one."""

    def __init__(self, address: str, port: int, collector: Collector) -> None:
        registry = prometheus_client.CollectorRegistry()
        registry.register(collector)
        prometheus_client.ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory
        self._server, self._thread = prometheus_client.start_http_server(port, address, registry)
        self.address = address
        self.port = self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
