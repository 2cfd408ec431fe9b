"""A real OTLP trace and metrics receiver (gRPC and HTTP/protobuf on loopback) for the demos, tests and
benchmarks.

Decodes requests with opentelemetry-proto, so what it collects is what any OTLP backend would
see. Standalone: `python -m podspan_demo.otlp_receiver --grpc-port N --http-port M --jsonl FILE`
prints `grpc=PORT http=PORT` once listening and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import gzip
import http.server
import json
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TextIO

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

GRPC = "grpc"
HTTP = "http"


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as decoded from the wire; `kind` and `status_code` are the proto enum values."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    flags: int
    trace_state: str
    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    transport: str

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trace_id"] = f"{self.trace_id:032x}"
        data["span_id"] = f"{self.span_id:016x}"
        data["parent_span_id"] = None if self.parent_span_id is None else f"{self.parent_span_id:016x}"
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One export request: transport, lower-cased headers/metadata, body encoding, span count."""

    transport: str
    headers: dict[str, str]
    content_encoding: str
    span_count: int


def _any_value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in key_values}


def decode_request(
    request: trace_service_pb2.ExportTraceServiceRequest, transport: str
) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=int.from_bytes(span.trace_id, "big"),
                        span_id=int.from_bytes(span.span_id, "big"),
                        parent_span_id=int.from_bytes(span.parent_span_id, "big")
                        if span.parent_span_id
                        else None,
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        flags=span.flags,
                        trace_state=span.trace_state,
                        resource=resource,
                        scope_name=scope_spans.scope.name,
                        scope_version=scope_spans.scope.version,
                        transport=transport,
                    )
                )
    return spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        metadata = {key.lower(): str(value) for key, value in context.invocation_metadata()}
        self._receiver._collect(request, GRPC, metadata, metadata.get("grpc-encoding", "identity"))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._collect_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as collectors serve it

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path not in ("/v1/traces", "/v1/metrics"):
            self._reply(404, b"")
            return
        encoding = self.headers.get("Content-Encoding", "identity").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/metrics":
                metrics = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            else:
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        except (OSError, EOFError, zlib.error, ValueError) as error:
            self._reply(400, str(error).encode(), "text/plain")
            return
        if self.path == "/v1/metrics":
            self.server.receiver._collect_metrics(metrics)
            self._reply(200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString())
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.server.receiver._collect(request, HTTP, headers, encoding)
        self._reply(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    def _reply(self, status: int, body: bytes, content_type: str = "application/x-protobuf") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: OtlpReceiver) -> None:
        super().__init__(address, _HttpHandler)
        self.receiver = receiver
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()

    def close_connections(self) -> None:
        """Drop keep-alive connections too: a stopped receiver must look dead to clients."""
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class OtlpReceiver:
    """gRPC and HTTP/protobuf OTLP trace and metrics endpoints on loopback, collecting spans and
    metric export requests (kept as opentelemetry-proto messages).

    Ports are chosen on the first `start()` (0 = any free port) and kept, so `stop()` then
    `start()` makes the endpoint unavailable and available again at the same address.
    With `keep=False` spans are only counted (and written to `jsonl`, if given).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        keep: bool = True,
        jsonl: TextIO | None = None,
    ) -> None:
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self._keep = keep
        self._jsonl = jsonl
        self._changed = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests: list[ReceivedRequest] = []
        self._span_count = 0
        self._metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._grpc_server: grpc.Server | None = None
        self._http_server: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}/v1/traces"

    def start(self) -> OtlpReceiver:
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), server)
        self.grpc_port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        server.start()
        self._grpc_server = server
        self._http_server = _HttpServer((self.host, self.http_port), self)
        self.http_port = self._http_server.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait()
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server.close_connections()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join()
            self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _collect(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        transport: str,
        headers: dict[str, str],
        content_encoding: str,
    ) -> None:
        spans = decode_request(request, transport)
        with self._changed:
            self._span_count += len(spans)
            self._requests.append(ReceivedRequest(transport, headers, content_encoding, len(spans)))
            if self._keep:
                self._spans.extend(spans)
            if self._jsonl is not None:
                for span in spans:
                    self._jsonl.write(json.dumps(span.to_json()) + "\n")
                self._jsonl.flush()
            self._changed.notify_all()

    def _collect_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._changed:
            self._metric_requests.append(request)
            self._changed.notify_all()

    def metric_requests(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        with self._changed:
            return list(self._metric_requests)

    @property
    def span_count(self) -> int:
        with self._changed:
            return self._span_count

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def requests(self) -> list[ReceivedRequest]:
        with self._changed:
            return list(self._requests)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()
            self._requests.clear()
            self._metric_requests.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """Block until `predicate(spans)` holds; return the spans. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self._spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"predicate not met; {len(self._spans)} spans received")
                self._changed.wait(remaining)
            return list(self._spans)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--jsonl", help="append every received span to this file as one JSON line")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(args.jsonl, "a", encoding="utf-8") if args.jsonl else open("/dev/null", "w") as out:
        receiver = OtlpReceiver(
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            keep=False,
            jsonl=out if args.jsonl else None,
        )
        receiver.start()
        print(f"grpc={receiver.grpc_port} http={receiver.http_port}", flush=True)
        while not stop.wait(0.5):
            pass
        receiver.stop()
    print(f"received {receiver.span_count} spans", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
