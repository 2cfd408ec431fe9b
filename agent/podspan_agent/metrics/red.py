"""RED metrics: OpenTelemetry semantic-convention duration histograms per workload from every span
the agent produces (before any sampling), and the Tempo-compatible service graph of the client/server
pairs it links.

Only low-cardinality attributes become series attributes, and each workload holds at most
`series_limit` series per instrument: the excess folds into one `otel.metric.overflow` series and is
counted. The tracer's thread records; the metrics endpoint's thread takes snapshots; a lock keeps
every snapshot consistent (a histogram's count always equals its buckets' sum).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
from collections.abc import Callable, Iterable

from podspan_agent import bpf_events
from podspan_agent.protocols import base
from podspan_agent.spans import model

Labels = tuple[tuple[str, base.AttributeValue], ...]

# Explicit bucket boundaries the semantic conventions advise for these instruments (seconds).
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# rpc.*.duration is in milliseconds; these are the SDK's default explicit boundaries.
RPC_BUCKETS_MS = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
                  7500.0, 10000.0)
# Tempo's service-graph processor's default histogram buckets (seconds).
SERVICE_GRAPH_BUCKETS_S = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)

DEFAULT_SERIES_LIMIT = 2000  # per workload and instrument: the OpenTelemetry SDK's default cardinality limit
OVERFLOW: Labels = (("otel.metric.overflow", True),)
# Resource attributes that name a workload (never a pod: pods come and go, their series would pile up).
WORKLOAD_ATTRIBUTES = ("service.name", "service.namespace", "k8s.namespace.name", "k8s.deployment.name",
                       "k8s.statefulset.name", "k8s.daemonset.name", "k8s.replicaset.name", "k8s.job.name",
                       "k8s.cronjob.name")
_DB_PROTOCOLS = frozenset({"postgresql", "mysql", "redis", "mongodb"})
_NS_PER_UNIT = {"s": 1e9, "ms": 1e6}


@dataclasses.dataclass(frozen=True, slots=True)
class Instrument:
    """One histogram: its semantic-convention name and the span attributes that become its series'."""

    name: str
    unit: str  # UCUM: "s" or "ms"
    description: str
    attributes: tuple[str, ...]
    buckets: tuple[float, ...]


_HTTP = ("http.request.method", "http.response.status_code", "error.type", "network.protocol.version",
         "url.scheme")
_PEER = ("server.address", "server.port")
HTTP_SERVER = Instrument("http.server.request.duration", "s", "Duration of HTTP server requests.",
                         (*_HTTP, "http.route"), DURATION_BUCKETS_S)
HTTP_CLIENT = Instrument("http.client.request.duration", "s", "Duration of HTTP client requests.",
                         (*_HTTP, *_PEER), DURATION_BUCKETS_S)
_RPC = ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "error.type")
RPC_SERVER = Instrument("rpc.server.duration", "ms", "Duration of inbound RPCs.", _RPC, RPC_BUCKETS_MS)
RPC_CLIENT = Instrument("rpc.client.duration", "ms", "Duration of outbound RPCs.", (*_RPC, *_PEER),
                        RPC_BUCKETS_MS)
_DB = ("db.system.name", "db.operation.name", "db.collection.name", "db.namespace", "db.response.status_code",
       "error.type")
DB_CLIENT = Instrument("db.client.operation.duration", "s", "Duration of database client operations.",
                       (*_DB, *_PEER), DB_BUCKETS_S)
# A traced database server: the conventions define no server-side metric, so it carries Podspan's name.
DB_SERVER = Instrument("podspan.db.server.operation.duration", "s",
                       "Duration of operations a traced database server answered.", _DB, DB_BUCKETS_S)
_MESSAGING = ("messaging.system", "messaging.operation.name", "messaging.operation.type",
              "messaging.destination.name", "error.type")
MESSAGING_CLIENT = Instrument("messaging.client.operation.duration", "s", "Duration of messaging operations.",
                              (*_MESSAGING, *_PEER), DURATION_BUCKETS_S)
MESSAGING_SERVER = Instrument("podspan.messaging.server.operation.duration", "s",
                              "Duration of operations a traced message broker answered.", _MESSAGING,
                              DURATION_BUCKETS_S)
DNS_CLIENT = Instrument("dns.lookup.duration", "s", "Duration of DNS lookups.",
                        ("dns.question.name", "dns.question.type", "error.type"), DURATION_BUCKETS_S)
_CLIENT, _SERVER = model.SpanKind.CLIENT, model.SpanKind.SERVER
INSTRUMENTS: dict[tuple[str, model.SpanKind], Instrument] = {
    ("http", _SERVER): HTTP_SERVER, ("http", _CLIENT): HTTP_CLIENT,
    ("http2", _SERVER): HTTP_SERVER, ("http2", _CLIENT): HTTP_CLIENT,
    ("grpc", _SERVER): RPC_SERVER, ("grpc", _CLIENT): RPC_CLIENT,
    ("kafka", _SERVER): MESSAGING_SERVER, ("kafka", _CLIENT): MESSAGING_CLIENT,
    ("dns", _CLIENT): DNS_CLIENT,
    **{(protocol, _CLIENT): DB_CLIENT for protocol in _DB_PROTOCOLS},
    **{(protocol, _SERVER): DB_SERVER for protocol in _DB_PROTOCOLS},
}


def instrument_for(span: model.SpanRecord) -> Instrument | None:
    """The histogram a span counts in (None for a kind of span no instrument covers)."""
    return INSTRUMENTS.get((span.protocol, span.kind))


def workload_of(resource: dict[str, base.AttributeValue]) -> Labels:
    return tuple((key, resource[key]) for key in WORKLOAD_ATTRIBUTES if key in resource)


def series_labels(instrument: Instrument, span: model.SpanRecord) -> Labels:
    return _labels(instrument, span.attributes, span.error is not None)


def _labels(instrument: Instrument, attributes: dict[str, base.AttributeValue], failed: bool) -> Labels:
    labels = [(key, attributes[key]) for key in instrument.attributes if key in attributes]
    if failed and "error.type" not in attributes:
        labels.append(("error.type", "_OTHER"))  # failed without a more specific type
    return tuple(labels)


_HTTP_VERSIONS = {bpf_events.Version.V10: "1.0", bpf_events.Version.V11: "1.1"}


def skipped_series(series: bpf_events.SkipSeries) -> tuple[Instrument, Labels] | None:
    """The histogram and series of exchanges the kernel skipped: what the kernel read of them (HTTP method, status
    code and version; a Redis error reply), as the span builder would name it. No route, path or Redis command:
    the kernel does not read that far. None for a protocol without an instrument."""
    kind = _CLIENT if series.role == bpf_events.Role.CLIENT else _SERVER
    attributes: dict[str, base.AttributeValue] = {}
    if series.protocol == bpf_events.SampleProtocol.HTTP1:
        instrument = INSTRUMENTS[("http", kind)]
        method = bpf_events.Method(series.method)
        attributes["http.request.method"] = "_OTHER" if method is bpf_events.Method.OTHER else method.name
        if series.version in _HTTP_VERSIONS:
            attributes["network.protocol.version"] = _HTTP_VERSIONS[bpf_events.Version(series.version)]
        failed = bool(series.error)
        if series.status:
            attributes["http.response.status_code"] = series.status
            # As spans.builder decides: 5xx fails either side, 4xx only a client.
            if series.status >= 500 or (kind is _CLIENT and series.status >= 400):
                attributes["error.type"], failed = str(series.status), True
    elif series.protocol == bpf_events.SampleProtocol.REDIS:
        instrument = INSTRUMENTS[("redis", kind)]
        attributes["db.system.name"] = "redis"
        failed = bool(series.error)
    else:
        return None
    return instrument, _labels(instrument, attributes, failed)


@dataclasses.dataclass(frozen=True, slots=True)
class Exemplar:
    """The last sampled span that fell in a bucket: links the histogram to a trace that was kept."""

    value: float  # in the instrument's unit
    time_ns: int
    trace_id: int
    span_id: int


class Histogram:
    """Explicit-bucket histogram, cumulative since the agent started (OTLP's cumulative temporality)."""

    __slots__ = ("bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)

    def observe(self, value: float, exemplar: Exemplar | None = None) -> None:
        # OTLP and Prometheus buckets are upper-inclusive: a value equal to a bound counts in that bucket.
        index = bisect.bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        if exemplar is not None:
            self.exemplars[index] = exemplar

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        other = Histogram(self.bounds)
        other.counts, other.sum, other.exemplars = list(self.counts), self.sum, list(self.exemplars)
        return other


@dataclasses.dataclass(slots=True)
class _Series:
    by_labels: dict[Labels, Histogram] = dataclasses.field(default_factory=dict)
    folded: int = 0  # observations that went to the overflow series


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    instrument: Instrument
    profile: str  # the profile that traced it ("" in standalone mode)
    workload: Labels
    labels: Labels
    histogram: Histogram  # a copy: the caller may keep it


@dataclasses.dataclass(frozen=True, slots=True)
class EdgePoint:
    """One service-graph edge (client workload -> server workload)."""

    profile: str
    client: str
    server: str
    requests: int
    failed: int
    server_seconds: Histogram
    client_seconds: Histogram


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    points: list[Point]
    edges: list[EdgePoint]
    folded: dict[tuple[str, str, Labels], int]  # (instrument name, profile, workload) -> observations folded
    spans: int  # spans recorded
    unmeasured: int  # spans of a kind no instrument covers


class _Edge:
    __slots__ = ("client_seconds", "failed", "requests", "server_seconds")

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.server_seconds = Histogram(SERVICE_GRAPH_BUCKETS_S)
        self.client_seconds = Histogram(SERVICE_GRAPH_BUCKETS_S)


class RedMetrics:
    """Histograms of every span recorded; bounded by `series_limit` per workload and instrument."""

    def __init__(self, series_limit: int = DEFAULT_SERIES_LIMIT, max_edges: int = 10_000) -> None:
        self._series_limit = series_limit
        self._max_edges = max_edges
        self._lock = threading.Lock()
        self._series: dict[tuple[Instrument, str, Labels], _Series] = collections.defaultdict(_Series)
        self._edges: dict[tuple[str, str, str], _Edge] = {}
        self.edges_folded = 0  # pairs not counted because the graph reached max_edges
        self.spans = 0
        self.unmeasured = 0
        self.skipped = 0  # exchanges the kernel skipped, counted from its totals

    def record(self, span: model.SpanRecord, sampled: bool, profile: str = "") -> None:
        """Count one span for `profile` (a span two profiles trace counts once in each); `sampled`: it was
        kept for export, so its ids may serve as an exemplar."""
        instrument = instrument_for(span)
        with self._lock:
            self.spans += 1
            if instrument is None:
                self.unmeasured += 1
                return
            value = span.duration_ns / _NS_PER_UNIT[instrument.unit]
            labels = series_labels(instrument, span)
            histogram = self._histogram(instrument, profile, workload_of(span.resource), labels)
            exemplar = Exemplar(value, span.end_ns, span.trace_id, span.span_id) if sampled else None
            histogram.observe(value, exemplar)

    def record_skipped(self, instrument: Instrument, labels: Labels, workload: Labels, profile: str,
                       totals: bpf_events.SkipTotals) -> None:
        """Exchanges the kernel counted without capturing them: `totals.buckets` are over `instrument`'s bounds."""
        with self._lock:
            observed = sum(totals.buckets)
            self.skipped += observed
            histogram = self._histogram(instrument, profile, workload, labels, observed)
            for index in range(len(histogram.counts)):
                histogram.counts[index] += totals.buckets[index]
            histogram.sum += totals.sum_ns / _NS_PER_UNIT[instrument.unit]

    def _histogram(self, instrument: Instrument, profile: str, workload: Labels, labels: Labels,
                   observations: int = 1) -> Histogram:
        """The series' histogram, made on first use; past the series limit the overflow series' (with the lock)."""
        series = self._series[(instrument, profile, workload)]
        histogram = series.by_labels.get(labels)
        if histogram is None:
            if len(series.by_labels) >= self._series_limit:
                series.folded += observations
                labels = OVERFLOW
                histogram = series.by_labels.get(labels)
            if histogram is None:
                histogram = series.by_labels[labels] = Histogram(instrument.buckets)
        return histogram

    def record_pair(self, client: model.SpanRecord, server: model.SpanRecord, profile: str = "") -> None:
        """A client span and the server span it caused, both seen by this agent: one service-graph request."""
        key = (profile, str(client.resource.get("service.name", "")), str(server.resource.get("service.name", "")))
        with self._lock:
            edge = self._edges.get(key)
            if edge is None:
                if len(self._edges) >= self._max_edges:
                    self.edges_folded += 1
                    return
                edge = self._edges[key] = _Edge()
            edge.requests += 1
            if client.error is not None or server.error is not None:
                edge.failed += 1
            edge.server_seconds.observe(server.duration_ns / 1e9)
            edge.client_seconds.observe(client.duration_ns / 1e9)

    def snapshot(self, profile: str | None = None) -> Snapshot:
        """Everything recorded so far, or only what `profile` traced."""
        with self._lock:
            points = [Point(instrument, owner, workload, labels, histogram.copy())
                      for (instrument, owner, workload), series in self._series.items()
                      if profile is None or owner == profile
                      for labels, histogram in series.by_labels.items()]
            edges = [EdgePoint(owner, client, server, edge.requests, edge.failed, edge.server_seconds.copy(),
                               edge.client_seconds.copy())
                     for (owner, client, server), edge in self._edges.items() if profile is None or owner == profile]
            folded = {(instrument.name, owner, workload): series.folded
                      for (instrument, owner, workload), series in self._series.items()
                      if series.folded and (profile is None or owner == profile)}
            return Snapshot(points, edges, folded, self.spans, self.unmeasured)


class SkippedFolder:
    """Folds the kernel's cumulative counts of skipped exchanges into the histograms, each count once."""

    def __init__(self, metrics: RedMetrics) -> None:
        self._metrics = metrics
        self._seen: dict[bpf_events.SkipSeries, bpf_events.SkipTotals] = {}

    def fold(self, totals: dict[bpf_events.SkipSeries, bpf_events.SkipTotals],
             owners: Callable[[bpf_events.SkipSeries], Iterable[tuple[str, Labels]]]) -> collections.Counter[str]:
        """Record what is new in `totals` for every (profile, workload) `owners` names for its series; returns the
        new exchanges per profile."""
        added: collections.Counter[str] = collections.Counter()
        for series, total in totals.items():
            seen = self._seen.get(series)
            self._seen[series] = total
            if seen is not None and seen.exchanges <= total.exchanges:
                total = bpf_events.SkipTotals(total.exchanges - seen.exchanges, total.sum_ns - seen.sum_ns,
                                              tuple(n - s for n, s in zip(total.buckets, seen.buckets, strict=True)))
            # else: new, or a reloaded program counting from zero again
            point = skipped_series(series)
            # The buckets are the count: a read may catch the kernel between its increments, and the next read's
            # difference brings what this one missed.
            exchanges = sum(total.buckets)
            if point is None or (exchanges == 0 and total.sum_ns == 0):
                continue
            for profile, workload in owners(series):
                self._metrics.record_skipped(*point, workload, profile, total)
                added[profile] += exchanges
        return added


class Recorder:
    """Standalone mode's span sink: every span counts, and every span is exported, so any may be an
    exemplar."""

    def __init__(self, metrics: RedMetrics) -> None:
        self.metrics = metrics

    def export(self, span: model.SpanRecord) -> None:
        self.metrics.record(span, sampled=True)

    def shutdown(self) -> None:
        """Nothing to flush: the endpoint reads the histograms directly."""
