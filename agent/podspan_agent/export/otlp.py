"""OTLP export: encodes SpanRecords as OTLP/protobuf and ships them, batched, over gRPC or HTTP.

The only module in Podspan that produces OpenTelemetry data. Spans are encoded straight to the
OTLP protobuf wire format (no SDK objects) by the C extension `podspan_agent._otlp_encode`
(agent/podspan_agent/_otlp_encode.c): ~0.4 µs per span, ~1 µs with the resource grouping done here
(bench/export_bench.py), against ~4 µs for the Python encoder it replaced, ~13 µs for
opentelemetry-proto messages and ~45 µs for SDK ReadableSpan + encode_spans, which matters at the
agent's 50k spans/s/core target. The bytes are the messages of opentelemetry-proto 1.45
(`ExportTraceServiceRequest`): a test compares them with protobuf's own serialization, and the round
trip is tested against a receiver that decodes them with opentelemetry-proto.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import http.client
import importlib.metadata
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from podspan_agent import _otlp_encode
from podspan_agent.protocols import base
from podspan_agent.spans import model

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)
DEFAULT_PROTOCOL = HTTP_PROTOBUF  # the OTLP exporter spec's default

_SCOPE_NAME = "podspan"
_GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_HTTP_TRACES_PATH = "/v1/traces"
_DEFAULT_PORTS = {GRPC: 4317, HTTP_PROTOBUF: 4318}
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Codes the OTLP spec lists as retryable for gRPC and HTTP.
_GRPC_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})

_INITIAL_BACKOFF_S = 0.25
_MAX_BACKOFF_S = 4.0
# A dead collector would otherwise log once per batch.
_LOG_INTERVAL_S = 10.0


# --------------------------------------------------------------------------- configuration


def parse_key_value_list(value: str) -> dict[str, str]:
    """Parse the `k=v,k2=v2` format of OTEL_RESOURCE_ATTRIBUTES / OTEL_EXPORTER_OTLP_HEADERS.

    Keys and values are percent-decoded and stripped; members without `=` or with an empty key
    are skipped with a warning (as the OpenTelemetry Python SDK does) so one typo does not lose
    the rest.
    """
    result: dict[str, str] = {}
    for member in value.split(","):
        if not member.strip():
            continue
        key, sep, raw = member.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not key:
            log.warning("ignoring malformed key=value member %r", member)
            continue
        result[key] = urllib.parse.unquote(raw.strip())
    return result


def base_resource(
    environ: Mapping[str, str] | None = None,
    extra: Mapping[str, base.AttributeValue] | None = None,
) -> dict[str, base.AttributeValue]:
    """The exporter's base resource, merged under every span's own `record.resource`.

    Precedence, lowest first: detected `host.name`, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME,
    then `extra` (what the agent itself is told, e.g. `k8s.node.name` or a profile's
    resourceAttributes). Per-process attributes (`process.pid`, ...) come with each span.
    """
    env = os.environ if environ is None else environ
    resource: dict[str, base.AttributeValue] = {"host.name": socket.gethostname()}
    resource.update(parse_key_value_list(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        resource["service.name"] = service_name
    if extra:
        resource.update(extra)
    return resource


def env_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The traces endpoint the OTEL_EXPORTER_OTLP_* environment configures, if any.

    Standalone mode uses this to choose between OTLP and printing spans.
    """
    return _env(os.environ if environ is None else environ, "ENDPOINT")


def _env(env: Mapping[str, str], suffix: str) -> str | None:
    """Signal-specific OTEL_EXPORTER_OTLP_TRACES_* first, then the generic variable."""
    for name in (f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    secure: bool
    host: str
    port: int
    path: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, protocol: str) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.netloc}{self.path if protocol == HTTP_PROTOBUF else ''}"


def _resolve_target(
    endpoint: str | None, protocol: str, insecure: bool | None, env: Mapping[str, str]
) -> _Target:
    """Apply the OTLP exporter spec's endpoint rules.

    `http://`/`https://` decide transport security; a bare `host:port` is secure unless
    `insecure` (or OTEL_EXPORTER_OTLP_INSECURE) says otherwise. For HTTP, an explicit or
    signal-specific endpoint without a path gets `/v1/traces`; the generic
    OTEL_EXPORTER_OTLP_ENDPOINT is a base URL that `/v1/traces` is always appended to.
    """
    is_base_url = False
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() or None
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None
        is_base_url = endpoint is not None
    if endpoint is None:
        endpoint = f"http://localhost:{_DEFAULT_PORTS[protocol]}"
    if insecure is None:
        env_insecure = _env(env, "INSECURE")
        insecure = env_insecure is not None and env_insecure.lower() == "true"

    has_scheme = _SCHEME_RE.match(endpoint) is not None
    parts = urllib.parse.urlsplit(endpoint if has_scheme else f"//{endpoint}")
    if has_scheme and parts.scheme not in ("http", "https"):
        raise ValueError(f"OTLP endpoint {endpoint!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"OTLP endpoint {endpoint!r}: no host")
    secure = parts.scheme == "https" if has_scheme else not insecure
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"OTLP endpoint {endpoint!r}: {error}") from None
    if port is None:
        port = (443 if secure else 80) if has_scheme else _DEFAULT_PORTS[protocol]

    path = parts.path
    if protocol == GRPC:
        if path not in ("", "/"):
            raise ValueError(f"OTLP/gRPC endpoint {endpoint!r} must not have a path")
    elif is_base_url:
        path = path.rstrip("/") + _HTTP_TRACES_PATH
    elif path in ("", "/"):
        path = _HTTP_TRACES_PATH
    return _Target(secure=secure, host=parts.hostname, port=port, path=path)


# --------------------------------------------------------------------------- wire encoding
#
# The bytes come from the C extension podspan_agent._otlp_encode (agent/podspan_agent/_otlp_encode.c):
# each span as its ScopeSpans.spans field, then one ResourceSpans per resource around them. What stays
# here is which spans share a resource.


@functools.cache
def _scope_version() -> str:
    try:
        return importlib.metadata.version("podspan")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _merged_resource(
    base_attributes: Mapping[str, base.AttributeValue], own: Mapping[str, base.AttributeValue]
) -> dict[str, base.AttributeValue]:
    merged = {**base_attributes, **own}
    if "service.name" not in merged:
        # The resource semantic conventions' fallback for a missing service.name.
        executable = merged.get("process.executable.name")
        merged["service.name"] = f"unknown_service:{executable}" if executable else "unknown_service"
    return merged


def encode_request(
    records: Iterable[model.SpanRecord], base_attributes: Mapping[str, base.AttributeValue]
) -> tuple[bytes, int]:
    """Encode spans as one serialized `ExportTraceServiceRequest`, one ResourceSpans per resource.

    Each span's `record.resource` is merged over `base_attributes` (the span's own values win).
    Returns the payload and how many spans could not be encoded (left out, not raised, so one
    malformed record cannot sink its batch).
    """
    batch = list(records)
    groups: dict[tuple[tuple[str, base.AttributeValue], ...], list[bytes]] = {}
    invalid = 0
    for record, span in zip(batch, _otlp_encode.encode_spans(batch), strict=True):
        try:
            if isinstance(span, Exception):
                raise span
            # Grouping by the record's own items (not the merged set) keeps the per-span cost
            # to one tuple; the merge runs once per group below.
            spans = groups.setdefault(tuple(record.resource.items()), [])
        except Exception:
            log.warning("cannot encode span %r", record.name, exc_info=True)
            invalid += 1
            continue
        spans.append(span)
    payload = b"".join(
        _otlp_encode.resource_spans(
            _merged_resource(base_attributes, dict(key)), _SCOPE_NAME, _scope_version(), spans
        )
        for key, spans in groups.items()
    )
    return payload, invalid


# --------------------------------------------------------------------------- transports


class _SendError(Exception):
    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class _GrpcTransport:
    def __init__(self, target: _Target, headers: Mapping[str, str], gzip_enabled: bool) -> None:
        options = [
            # grpc's default reconnect backoff grows to 120 s; a collector that comes back
            # should receive spans again within seconds.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        compression = grpc.Compression.Gzip if gzip_enabled else grpc.Compression.NoCompression
        if target.secure:
            self._channel = grpc.secure_channel(
                target.netloc, grpc.ssl_channel_credentials(), options=options, compression=compression
            )
        else:
            self._channel = grpc.insecure_channel(target.netloc, options=options, compression=compression)
        # No request serializer: the payload is already a serialized ExportTraceServiceRequest.
        self._export = self._channel.unary_unary(
            _GRPC_METHOD,
            request_serializer=None,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        self._metadata = tuple((key.lower(), value) for key, value in headers.items())

    def send(self, payload: bytes, timeout: float) -> int:
        """Send one request; return the spans the receiver reports as rejected."""
        try:
            response = self._export(payload, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            code = error.code()
            raise _SendError(
                f"gRPC {code.name}: {error.details()}",
                retryable=code in _GRPC_RETRYABLE,
            ) from None
        return int(response.partial_success.rejected_spans)

    def close(self) -> None:
        self._channel.close()


class _HttpTransport:
    def __init__(self, target: _Target, headers: Mapping[str, str], gzip_enabled: bool) -> None:
        self._target = target
        self._gzip = gzip_enabled
        self._headers = {**headers, "Content-Type": "application/x-protobuf"}
        if gzip_enabled:
            self._headers["Content-Encoding"] = "gzip"
        self._ssl_context = ssl.create_default_context() if target.secure else None
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._ssl_context is not None:
                self._connection = http.client.HTTPSConnection(
                    self._target.host, self._target.port, timeout=timeout, context=self._ssl_context
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._target.host, self._target.port, timeout=timeout
                )
        else:
            self._connection.timeout = timeout
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout)
        return self._connection

    def send(self, payload: bytes, timeout: float) -> int:
        # Level 1: most of gzip's gain on repetitive protobuf at a fraction of level 9's CPU.
        body = gzip.compress(payload, compresslevel=1) if self._gzip else payload
        connection = self._connect(timeout)
        try:
            connection.request("POST", self._target.path, body=body, headers=self._headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise _SendError(f"HTTP {type(error).__name__}: {error}", retryable=True) from None
        if 200 <= response.status < 300:
            if data and "protobuf" in response.getheader("Content-Type", ""):
                reply = trace_service_pb2.ExportTraceServiceResponse.FromString(data)
                return int(reply.partial_success.rejected_spans)
            return 0
        retry_after = None
        header = response.getheader("Retry-After")
        if header is not None and header.strip().isdigit():
            retry_after = float(header.strip())
        raise _SendError(
            f"HTTP {response.status} {response.reason}",
            retryable=response.status in _HTTP_RETRYABLE,
            retry_after=retry_after,
        )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# --------------------------------------------------------------------------- exporter


@dataclasses.dataclass(frozen=True, slots=True)
class ExportStats:
    """Counters since the exporter started; at any snapshot
    `spans_enqueued == spans_exported + dropped_export_failed + dropped_shutdown + queued + in_flight`.

    `export_errors` counts failed send attempts (a batch retried three times counts three);
    `failing` is the last send error while sends fail, None once one succeeds.
    """

    spans_enqueued: int = 0
    spans_exported: int = 0
    dropped_queue_full: int = 0
    dropped_export_failed: int = 0
    dropped_shutdown: int = 0
    export_errors: int = 0
    queued: int = 0
    in_flight: int = 0
    failing: str | None = None

    @property
    def spans_dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_export_failed + self.dropped_shutdown


DEFAULT_MAX_QUEUE_SIZE = 8192  # spans held while the endpoint is slow or down


class OtlpExporter:
    """Batches spans on a background thread and exports them over OTLP.

    `export()` never blocks on the network: it appends to a bounded queue and, when the queue is
    full, drops the *newest* span (counted as `dropped_queue_full`), like the OpenTelemetry SDK's
    BatchSpanProcessor — the queue is never reordered under the worker and the cost stays O(1).
    A batch that cannot be sent is retried with exponential backoff for at most `retry_timeout`
    seconds, then dropped and counted (`dropped_export_failed`); memory is bounded by
    `max_queue_size` plus one batch whatever the endpoint does.

    Arguments left as None fall back to the OTEL_EXPORTER_OTLP_[TRACES_]* environment
    (ENDPOINT, PROTOCOL, HEADERS, COMPRESSION, INSECURE), then to the spec's defaults, except
    compression, which defaults to gzip. `resource` defaults to `base_resource(environ)`.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        protocol: str | None = None,
        headers: Mapping[str, str] | None = None,
        insecure: bool | None = None,
        compression: str | None = None,
        resource: Mapping[str, base.AttributeValue] | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_batch_size: int = 512,
        schedule_delay: float = 0.5,
        retry_timeout: float = 10.0,
        request_timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        chosen = protocol or _env(env, "PROTOCOL")
        protocol = chosen or DEFAULT_PROTOCOL
        if protocol not in PROTOCOLS:
            raise ValueError(f"OTLP protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        compression = (compression or _env(env, "COMPRESSION") or "gzip").lower()
        if compression not in ("gzip", "none"):
            raise ValueError(f"OTLP compression {compression!r} is not gzip or none")
        if max_queue_size < 1 or max_batch_size < 1:
            raise ValueError("max_queue_size and max_batch_size must be positive")
        if headers is None:
            headers = parse_key_value_list(_env(env, "HEADERS") or "")
        target = _resolve_target(endpoint, protocol, insecure, env)
        if chosen is None and target.port == _DEFAULT_PORTS[GRPC]:
            log.warning("OTLP endpoint %s is on the OTLP/gRPC port but no protocol was set, so %s is used: "
                        "pass --otlp-protocol grpc (or set OTEL_EXPORTER_OTLP_PROTOCOL=grpc) if it speaks gRPC",
                        target.netloc, DEFAULT_PROTOCOL)

        self.protocol = protocol
        self.endpoint = target.url(protocol)
        self._resource = dict(base_resource(env) if resource is None else resource)
        self._transport: _GrpcTransport | _HttpTransport
        if protocol == GRPC:
            self._transport = _GrpcTransport(target, headers, compression == "gzip")
        else:
            self._transport = _HttpTransport(target, headers, compression == "gzip")
        self._max_queue_size = max_queue_size
        self._max_batch_size = min(max_batch_size, max_queue_size)
        self._schedule_delay = schedule_delay
        self._retry_timeout = retry_timeout
        self._request_timeout = request_timeout

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._queue: collections.deque[model.SpanRecord] = collections.deque()
        self._stop_deadline = math.inf
        self._counts = dict.fromkeys(
            (
                "spans_enqueued",
                "spans_exported",
                "dropped_queue_full",
                "dropped_export_failed",
                "dropped_shutdown",
                "export_errors",
            ),
            0,
        )
        self._in_flight = 0
        self._failing: str | None = None
        self._last_log = -math.inf
        self._worker = threading.Thread(target=self._run, name="podspan-otlp-export", daemon=True)
        self._worker.start()

    def export(self, span: model.SpanRecord) -> None:
        """Queue one span; never blocks on I/O."""
        with self._lock:
            if self._stopping.is_set():
                self._counts["dropped_shutdown"] += 1
                return
            if len(self._queue) >= self._max_queue_size:
                self._counts["dropped_queue_full"] += 1
                return
            self._queue.append(span)
            self._counts["spans_enqueued"] += 1
            if len(self._queue) == self._max_batch_size:
                self._wakeup.notify()

    def stats(self) -> ExportStats:
        with self._lock:
            return ExportStats(**self._counts, queued=len(self._queue), in_flight=self._in_flight,
                               failing=self._failing)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is queued for up to `timeout` seconds, count the rest as dropped, stop."""
        with self._lock:
            if not self._stopping.is_set():
                self._stop_deadline = time.monotonic() + timeout
                self._stopping.set()
            self._wakeup.notify()
        # The worker bounds every wait and request by the deadline; the margin covers the
        # last request's teardown.
        self._worker.join(timeout + 1.0)
        self._transport.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stopping.is_set() and len(self._queue) < self._max_batch_size:
                    self._wakeup.wait(self._schedule_delay)
                if self._stopping.is_set() and (not self._queue or time.monotonic() >= self._stop_deadline):
                    self._counts["dropped_shutdown"] += len(self._queue)
                    self._queue.clear()
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch_size))]
                self._in_flight = len(batch)
            if batch:
                try:
                    exported, failed, errors = self._send(batch)
                except Exception:
                    log.exception("OTLP export of %d spans failed unexpectedly", len(batch))
                    exported, failed, errors = 0, len(batch), 1
                with self._lock:
                    self._in_flight = 0
                    self._counts["spans_exported"] += exported
                    self._counts["dropped_export_failed"] += failed
                    self._counts["export_errors"] += errors

    def _send(self, batch: Sequence[model.SpanRecord]) -> tuple[int, int, int]:
        """Send one batch with bounded retries; return (exported, dropped, failed attempts)."""
        payload, invalid = encode_request(batch, self._resource)
        count = len(batch) - invalid
        if count == 0:
            return 0, invalid, 0
        batch_deadline = time.monotonic() + self._retry_timeout
        backoff = _INITIAL_BACKOFF_S
        retry_at = time.monotonic()
        errors = 0
        last_error = "shutting down"
        while True:
            deadline = min(batch_deadline, self._stop_deadline)
            now = time.monotonic()
            if retry_at >= deadline:
                self._log_drop(count, f"gave up retrying: {last_error}")
                return 0, len(batch), errors
            if retry_at > now:
                if self._stopping.is_set():
                    time.sleep(retry_at - now)
                else:
                    # Shutdown sets the event and moves the deadline closer: re-check it.
                    self._stopping.wait(retry_at - now)
                continue
            try:
                rejected = self._transport.send(payload, min(self._request_timeout, deadline - now))
            except _SendError as error:
                errors += 1
                last_error = self._failing = str(error)
                if not error.retryable:
                    self._log_drop(count, last_error)
                    return 0, len(batch), errors
                delay = error.retry_after if error.retry_after is not None else backoff
                # Jitter: agents restarted together must not retry in lockstep.
                retry_at = time.monotonic() + delay * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            self._failing = None
            if rejected:
                log.warning("OTLP receiver rejected %d of %d spans", rejected, count)
            rejected = min(rejected, count)
            return count - rejected, invalid + rejected, errors

    def _log_drop(self, count: int, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_INTERVAL_S:
            self._last_log = now
            log.warning("OTLP export to %s dropped %d spans: %s", self.endpoint, count, reason)
