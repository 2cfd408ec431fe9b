"""Turn a connection exchange into a SpanRecord: kind, connection attributes, error policy, resource."""

from __future__ import annotations

import random
from collections.abc import Callable

from podspan_agent import bpf_events, connections
from podspan_agent.protocols import base
from podspan_agent.spans import model

ResourceLookup = Callable[[connections.Connection], dict[str, base.AttributeValue]]


class SpanBuilder:
    """Stateless apart from the clock offset: monotonic kernel times -> Unix epoch."""

    def __init__(self, resource_for: ResourceLookup, epoch_offset_ns: int) -> None:
        self._resource_for = resource_for
        self._epoch_offset_ns = epoch_offset_ns

    def build(self, exchange: connections.Exchange) -> model.SpanRecord:
        record, conn = exchange.record, exchange.connection
        kind = model.SpanKind.CLIENT if conn.role == bpf_events.Role.CLIENT else model.SpanKind.SERVER
        attributes = dict(record.attributes)
        _add_connection_attributes(attributes, conn, kind)
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
    if kind == model.SpanKind.CLIENT and isinstance(status, int) and 400 <= status < 500:
        return f"HTTP {status}"
    return None


def _add_connection_attributes(
    attributes: dict[str, base.AttributeValue], conn: connections.Connection, kind: model.SpanKind
) -> None:
    attributes["network.transport"] = "udp" if conn.datagram else "tcp"
    peer, local = conn.peer, conn.local
    if peer is not None:
        attributes["network.type"] = peer.network_type
        attributes["network.peer.address"] = peer.address
        attributes["network.peer.port"] = peer.port
        if kind == model.SpanKind.CLIENT:
            attributes.setdefault("server.address", peer.address)
            attributes.setdefault("server.port", peer.port)
        else:
            attributes["client.address"] = peer.address
            attributes["client.port"] = peer.port
    if local is not None and kind == model.SpanKind.SERVER:
        attributes["network.local.address"] = local.address
        attributes["network.local.port"] = local.port
        attributes.setdefault("server.port", local.port)
