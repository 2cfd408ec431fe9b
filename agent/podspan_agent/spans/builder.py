"""Turn a connection exchange into a SpanRecord: kind, connection attributes, error policy, resource."""

from __future__ import annotations

import random
from collections.abc import Callable

from podspan_agent import bpf_events, connections
from podspan_agent.protocols import base
from podspan_agent.spans import model

ResourceLookup = Callable[[connections.ConnectionInfo], dict[str, base.AttributeValue]]
Attributes = dict[str, base.AttributeValue]
# Connections whose attributes are kept ready (cleared when full: a connection costs one rebuild).
_MAX_CACHED_CONNECTIONS = 65536
# Plain names on the per-span path: an Enum member looked up on its class costs ~150 ns in 3.11.
_CLIENT, _SERVER = model.SpanKind.CLIENT, model.SpanKind.SERVER
_ROLE_CLIENT = int(bpf_events.Role.CLIENT)


class SpanBuilder:
    """Stateless apart from the clock offset (monotonic kernel times -> Unix epoch) and a cache of
    each connection's attributes, which every exchange on it shares."""

    def __init__(self, resource_for: ResourceLookup, epoch_offset_ns: int) -> None:
        self._resource_for = resource_for
        self._epoch_offset_ns = epoch_offset_ns
        self._by_connection: dict[int, tuple[Attributes, Attributes]] = {}

    def build(self, exchange: connections.Exchange) -> model.SpanRecord:
        record, conn = exchange.record, exchange.connection
        kind = _CLIENT if conn.role == _ROLE_CLIENT else _SERVER
        cached = self._by_connection.get(conn.conn_id)
        if cached is None:
            if len(self._by_connection) >= _MAX_CACHED_CONNECTIONS:
                self._by_connection.clear()
            cached = self._by_connection[conn.conn_id] = _connection_attributes(conn, kind)
        defaults, forced = cached
        attributes = {**defaults, **record.attributes, **forced}
        if conn.tls and attributes.get("url.scheme") == "http":
            attributes["url.scheme"] = "https"  # HTTP/1 has no scheme of its own: the connection's TLS is it
        error = _error(record, kind)
        status = attributes.get("http.response.status_code")
        if error is not None and isinstance(status, int) and status >= 400:
            # Semantic conventions: an HTTP exchange failed by its status names it in error.type
            # (one failed otherwise, e.g. reset after a 200, has no such code).
            attributes.setdefault("error.type", str(status))
        return model.SpanRecord(
            trace_id=0,
            span_id=random.getrandbits(64) or 1,
            parent_span_id=None,
            name=record.name,
            kind=kind,
            start_ns=record.start_ns + self._epoch_offset_ns,
            end_ns=max(record.end_ns, record.start_ns) + self._epoch_offset_ns,
            attributes=attributes,
            resource=self._resource_for(conn),
            protocol=record.protocol,
            error=error,
        )


def _error(record: base.Record, kind: model.SpanKind) -> str | None:
    if record.error is not None:
        return record.error
    status = record.attributes.get("http.response.status_code")
    # Semantic conventions: 4xx is the client's fault, so it marks only client spans.
    if kind is _CLIENT and isinstance(status, int) and 400 <= status < 500:
        return f"HTTP {status}"
    return None


def _connection_attributes(conn: connections.ConnectionInfo, kind: model.SpanKind) -> tuple[Attributes, Attributes]:
    """What a connection adds to its spans: (defaults a record's own attributes override, attributes that
    override the record's)."""
    defaults: Attributes = {}
    forced: Attributes = {"network.transport": "udp" if conn.datagram else "tcp"}
    if conn.tls_version is not None:
        forced["tls.protocol.name"] = "tls"
        forced["tls.protocol.version"] = conn.tls_version
    peer, local = conn.peer, conn.local
    if peer is not None:
        forced["network.type"] = peer.network_type
        forced["network.peer.address"] = peer.address
        forced["network.peer.port"] = peer.port
        if kind is _CLIENT:
            defaults["server.address"] = peer.address
            defaults["server.port"] = peer.port
        else:
            forced["client.address"] = peer.address
            forced["client.port"] = peer.port
    if local is not None and kind is _SERVER:
        forced["network.local.address"] = local.address
        forced["network.local.port"] = local.port
        defaults["server.port"] = local.port
    return defaults, forced
