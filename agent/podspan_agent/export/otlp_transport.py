"""OTLP transports (gRPC, HTTP/protobuf) for serialized export requests of any signal, and the
bounded retry with backoff the OTLP spec asks for; shared by the span and metric exporters."""

from __future__ import annotations

import gzip
import http.client
import math
import random
import ssl
import threading
import time
from collections.abc import Callable

import grpc
from google.protobuf import message
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from podspan_agent.export import otlp_settings

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


def _rejected_spans(data: bytes) -> int:
    return int(trace_service_pb2.ExportTraceServiceResponse.FromString(data).partial_success.rejected_spans)


def _rejected_points(data: bytes) -> int:
    reply = metrics_service_pb2.ExportMetricsServiceResponse.FromString(data)
    return int(reply.partial_success.rejected_data_points)


# How many items (spans, data points) a signal's response says the receiver rejected.
_REJECTED: dict[otlp_settings.Signal, Callable[[bytes], int]] = {
    otlp_settings.TRACES: _rejected_spans,
    otlp_settings.METRICS: _rejected_points,
}


class SendError(Exception):
    def __init__(self, text: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.retryable = retryable
        self.retry_after = retry_after


class GrpcTransport:
    def __init__(self, settings: otlp_settings.Settings) -> None:
        options = [
            # grpc's default reconnect backoff grows to 120 s; a collector that comes back
            # should receive data again within seconds.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        target = settings.target
        compression = grpc.Compression.Gzip if settings.gzip else grpc.Compression.NoCompression
        if target.secure:
            self._channel = grpc.secure_channel(
                target.netloc, grpc.ssl_channel_credentials(), options=options, compression=compression
            )
        else:
            self._channel = grpc.insecure_channel(target.netloc, options=options, compression=compression)
        # No serializers: the payload is already a serialized request; the reply is decoded on demand.
        self._export = self._channel.unary_unary(settings.signal.grpc_method, request_serializer=None,
                                                 response_deserializer=None)
        self._rejected = _REJECTED[settings.signal]
        self._metadata = tuple((key.lower(), value) for key, value in settings.headers.items())

    def send(self, payload: bytes, timeout: float) -> int:
        """Send one request; return the items the receiver reports as rejected."""
        try:
            reply = self._export(payload, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            code = error.code()
            raise SendError(f"gRPC {code.name}: {error.details()}", retryable=code in _GRPC_RETRYABLE) from None
        try:
            return self._rejected(reply) if reply else 0
        except message.DecodeError:
            return 0  # accepted; an unreadable reply cannot name rejections

    def close(self) -> None:
        self._channel.close()


class HttpTransport:
    def __init__(self, settings: otlp_settings.Settings) -> None:
        self._target = settings.target
        self._gzip = settings.gzip
        self._rejected = _REJECTED[settings.signal]
        self._headers = {**settings.headers, "Content-Type": "application/x-protobuf"}
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._ssl_context = ssl.create_default_context() if self._target.secure else None
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._ssl_context is not None:
                self._connection = http.client.HTTPSConnection(
                    self._target.host, self._target.port, timeout=timeout, context=self._ssl_context
                )
            else:
                self._connection = http.client.HTTPConnection(self._target.host, self._target.port, timeout=timeout)
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
            raise SendError(f"HTTP {type(error).__name__}: {error}", retryable=True) from None
        if 200 <= response.status < 300:
            if data and "protobuf" in response.getheader("Content-Type", ""):
                try:
                    return self._rejected(data)
                except message.DecodeError:
                    return 0
            return 0
        retry_after = None
        header = response.getheader("Retry-After")
        if header is not None and header.strip().isdigit():
            retry_after = float(header.strip())
        raise SendError(
            f"HTTP {response.status} {response.reason}",
            retryable=response.status in _HTTP_RETRYABLE,
            retry_after=retry_after,
        )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class RetryingSender:
    """One transport plus bounded retries: a request is retried with exponential backoff and jitter
    for at most `retry_timeout` seconds, and never past the deadline `stop()` sets."""

    def __init__(self, settings: otlp_settings.Settings, retry_timeout: float, request_timeout: float) -> None:
        self._transport: GrpcTransport | HttpTransport = (
            GrpcTransport(settings) if settings.protocol == otlp_settings.GRPC else HttpTransport(settings))
        self._retry_timeout = retry_timeout
        self._request_timeout = request_timeout
        self.stopping = threading.Event()
        self.stop_deadline = math.inf
        self.failing: str | None = None  # the last send error while sends fail, None once one succeeds

    def stop(self, deadline: float) -> None:
        if not self.stopping.is_set():
            self.stop_deadline = deadline
            self.stopping.set()

    def send(self, payload: bytes) -> tuple[int | None, int, str]:
        """(items rejected, or None when the request was given up; failed attempts; the last error)."""
        request_deadline = time.monotonic() + self._retry_timeout
        backoff = _INITIAL_BACKOFF_S
        retry_at = time.monotonic()
        errors = 0
        last_error = "shutting down"
        while True:
            deadline = min(request_deadline, self.stop_deadline)
            now = time.monotonic()
            if retry_at >= deadline:
                return None, errors, f"gave up retrying: {last_error}"
            if retry_at > now:
                if self.stopping.is_set():
                    time.sleep(retry_at - now)
                else:
                    # Shutdown sets the event and moves the deadline closer: re-check it.
                    self.stopping.wait(retry_at - now)
                continue
            try:
                rejected = self._transport.send(payload, min(self._request_timeout, deadline - now))
            except SendError as error:
                errors += 1
                last_error = self.failing = str(error)
                if not error.retryable:
                    return None, errors, last_error
                delay = error.retry_after if error.retry_after is not None else backoff
                # Jitter: agents restarted together must not retry in lockstep.
                retry_at = time.monotonic() + delay * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            self.failing = None
            return rejected, errors, ""

    def close(self) -> None:
        self._transport.close()
