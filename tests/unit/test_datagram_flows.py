"""UDP flows in userspace: one event per datagram becomes one message, only datagram protocols are
tried on them, and their spans say `udp` (the kernel side is tests/agent/test_trace_dns.py)."""

from __future__ import annotations

import socket
import struct

import dns.message

from podspan_agent import _conntable, bpf_events
from podspan_agent.protocols import base, registry
from podspan_agent.spans import builder
from tests.support import bpf_records

PEER = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53) + socket.inet_aton("10.0.0.10") + bytes(8)
DATAGRAM_CLIENT = int(bpf_events.ConnFlag.DATAGRAM | bpf_events.ConnFlag.UNCONNECTED)


def _header(kind: bpf_events.EventKind, ts: int, direction: int = 0,
            prev: tuple[int, int] | None = None) -> bpf_events.EventHeader:
    hdr = bpf_events.EventHeader(kind=kind, role=bpf_events.Role.CLIENT, direction=direction,
                                 flags=DATAGRAM_CLIENT, tgid=10, tid=10, fd=3, conn_id=7, ts_ns=ts)
    if prev is not None:  # (direction, bytes) of the datagram the event ends
        hdr.prev = bpf_events.Run(start_ns=ts - 10, end_ns=ts - 10, bytes=prev[1], chunks=1, direction=prev[0])
    return hdr


def test_datagrams_of_one_direction_stay_separate_messages() -> None:
    table = _conntable.Table(registry.detector(None, base.CaptureSettings()), lambda _tgid, _fd, _conn_id: None,
                             lambda _tgid, _fd, _conn_id: None, lambda _conn_id: None)
    table.feed([bpf_records.open_event(_header(bpf_events.EventKind.OPEN, 100), PEER)])
    # glibc: A and AAAA in one sendmmsg (two events in a row), answers in either order.
    query_a = dns.message.make_query("svc.test.", "A").to_wire()
    query_aaaa = dns.message.make_query("svc.test.", "AAAA").to_wire()
    answer_aaaa = dns.message.make_response(dns.message.from_wire(query_aaaa)).to_wire()
    answer_a = dns.message.make_response(dns.message.from_wire(query_a)).to_wire()
    out, into = bpf_events.Direction.EGRESS, bpf_events.Direction.INGRESS
    events = [(query_a, out, None), (query_aaaa, out, (out, len(query_a))),
              (answer_aaaa, into, (out, len(query_aaaa))), (answer_a, into, (into, len(answer_aaaa)))]
    for ts, (data, direction, prev) in enumerate(events, start=1):
        table.feed([bpf_records.data_event(_header(bpf_events.EventKind.DATA, ts * 100, direction, prev), data)])
    table.feed([bpf_records.header_event(_header(bpf_events.EventKind.CLOSE, 900, prev=(into, len(answer_a))))])

    exchanges = table.take_exchanges()
    assert sorted(e.record.attributes["dns.question.type"] for e in exchanges) == ["A", "AAAA"]
    span = builder.SpanBuilder(lambda _conn: {}, 0).build(exchanges[0])
    assert span.attributes["network.transport"] == "udp"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("10.0.0.10", 53)


def test_only_datagram_protocols_are_tried_on_udp() -> None:
    detect = registry.detector(None, base.CaptureSettings())
    redis_ping = b"*1\r\n$4\r\nPING\r\n"
    found = detect(redis_ping, False)
    assert found is not None and found[0] == "redis"
    assert detect(redis_ping, True) is None
    dns_found = detect(dns.message.make_query("a.test.", "A").to_wire(), True)
    assert dns_found is not None and dns_found[0] == "dns"
