"""spans.builder: span kind, connection attributes and the error rule, from records and connections."""

from __future__ import annotations

import socket

from podspan_agent import bpf_events, connections, sockaddr
from podspan_agent.protocols import base
from podspan_agent.spans import builder, model

PEER = sockaddr.Endpoint("10.0.0.7", 40000, socket.AF_INET)
LOCAL = sockaddr.Endpoint("10.0.0.9", 8080, socket.AF_INET)


def _build(role: bpf_events.Role, record: base.Record, flags: int = 0, tls_version: str | None = None
           ) -> model.SpanRecord:
    conn = connections.ConnectionInfo(1, 100, 5, role, 42, PEER, LOCAL, bool(flags & bpf_events.ConnFlag.DATAGRAM),
                                      bool(flags & bpf_events.ConnFlag.TLS), tls_version)
    exchange = connections.Exchange((record, conn, 100, 0))
    return builder.SpanBuilder(lambda _conn: {"service.name": "svc"}, epoch_offset_ns=1000).build(exchange)


def _http(status: int, error: str | None = None) -> base.Record:
    return base.Record("http", "GET /", 10, 20, {"http.response.status_code": status}, error=error)


def test_kind_and_connection_attributes() -> None:
    client = _build(bpf_events.Role.CLIENT, _http(200))
    assert client.kind == model.SpanKind.CLIENT and (client.start_ns, client.end_ns) == (1010, 1020)
    assert client.attributes["server.address"] == "10.0.0.7" and client.attributes["server.port"] == 40000
    server = _build(bpf_events.Role.SERVER, _http(200))
    assert server.kind == model.SpanKind.SERVER
    assert server.attributes["client.address"] == "10.0.0.7" and server.attributes["server.port"] == 8080
    assert server.attributes["network.local.address"] == "10.0.0.9" and "server.address" not in server.attributes


def test_http_errors_carry_error_type() -> None:
    # A 5xx fails both ends; a 4xx only the client, which made the mistake.
    failed = _build(bpf_events.Role.SERVER, _http(503, error="HTTP 503"))
    assert failed.error == "HTTP 503" and failed.attributes["error.type"] == "503"
    refused = _build(bpf_events.Role.CLIENT, _http(404))
    assert refused.error == "HTTP 404" and refused.attributes["error.type"] == "404"
    served = _build(bpf_events.Role.SERVER, _http(404))
    assert served.error is None and "error.type" not in served.attributes
    # A parser's own error.type is kept, and records without a status get none from the builder.
    db = base.Record("postgresql", "SELECT t", 1, 2, {"error.type": "42P01"}, error="no such table")
    assert _build(bpf_events.Role.CLIENT, db).attributes["error.type"] == "42P01"
    silent = _build(bpf_events.Role.CLIENT, base.Record("http", "GET /", 1, 2, error="no response"))
    assert "error.type" not in silent.attributes
    reset = _build(bpf_events.Role.CLIENT, _http(200, error="RST_STREAM CANCEL"))
    assert reset.error == "RST_STREAM CANCEL" and "error.type" not in reset.attributes


def test_http_over_tls_has_the_https_scheme() -> None:
    record = base.Record("http", "GET /", 10, 20, {"url.scheme": "http", "http.response.status_code": 200})
    assert _build(bpf_events.Role.SERVER, record, flags=bpf_events.ConnFlag.TLS).attributes["url.scheme"] == "https"
    assert _build(bpf_events.Role.SERVER, record).attributes["url.scheme"] == "http"
    # A scheme the request named itself (an absolute-form target, HTTP/2's :scheme) is left as it is.
    proxied = base.Record("http", "GET /", 10, 20, {"url.scheme": "ftp"})
    assert _build(bpf_events.Role.CLIENT, proxied, flags=bpf_events.ConnFlag.TLS).attributes["url.scheme"] == "ftp"


def test_the_tls_version_when_known() -> None:
    record = _http(200)
    known = _build(bpf_events.Role.SERVER, record, flags=bpf_events.ConnFlag.TLS, tls_version="1.2").attributes
    assert (known["tls.protocol.name"], known["tls.protocol.version"]) == ("tls", "1.2")
    unknown = _build(bpf_events.Role.SERVER, record, flags=bpf_events.ConnFlag.TLS).attributes
    assert "tls.protocol.version" not in unknown and "tls.protocol.name" not in unknown
