"""DNS parser against dnspython lookups of the loopback responder (fixtures/dns)."""

from __future__ import annotations

import struct

import dns.message

from podspan_agent.protocols import base
from podspan_agent.protocols import dns as dns_parser
from tests.unit.protocols.fixtures import capture_db


def feed(parser: dns_parser.Parser, connection: list[base.Message]) -> list[base.Record]:
    return [record for msg in connection for record in parser.feed(msg)]


def test_udp_lookups() -> None:
    (connection,) = capture_db.load("dns", "udp_lookups", 512)
    parser = dns_parser.Parser()
    recs = feed(parser, connection)
    assert parser.transport == "udp"
    assert [
        (
            r.attributes["dns.question.name"],
            r.attributes["dns.question.type"],
            r.attributes["dns.response_code"],
            r.error,
        )
        for r in recs
    ] == [
        ("api.test", "A", "NOERROR", None),
        ("api.test", "AAAA", "NOERROR", None),
        ("nosuch.example", "A", "NXDOMAIN", None),  # not an error: search-domain expansion
        ("fail.test", "A", "SERVFAIL", "SERVFAIL"),
    ]
    assert all(r.name == "dns.query" and r.protocol == "dns" and r.start_ns <= r.end_ns for r in recs)
    assert parser.dropped == 0 and parser.state_size == 0


def test_tcp_lookups() -> None:
    recs = []
    for connection in capture_db.load("dns", "tcp_lookups", 512):
        parser = dns_parser.Parser()
        recs += feed(parser, connection)
        assert parser.transport == "tcp"
    assert [r.attributes["dns.question.name"] for r in recs] == ["db.test", "missing.test.invalid"]


def test_compression_pointer_loops_and_forward_pointers_are_rejected() -> None:
    header = struct.pack(">HHHHHH", 1, 0x8180, 1, 0, 0, 0)
    looping = header + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # points at itself
    assert dns_parser.parse(looping) is None
    forward = header + b"\xc0\x20" + b"\x00\x01\x00\x01" + b"\x00" * 20
    assert dns_parser.parse(forward) is None
    query = dns.message.make_query("a.b.example", "MX").to_wire()
    question = dns_parser.parse(query)
    assert question is not None and (question.name, question.qtype) == ("a.b.example", 15)


def test_detect_and_pending_bound() -> None:
    query = dns.message.make_query("x.test", "A").to_wire()
    assert dns_parser.detect(query)
    assert dns_parser.detect(struct.pack(">H", len(query)) + query)
    response = dns.message.make_response(dns.message.from_wire(query)).to_wire()
    assert not dns_parser.detect(response)
    parser = dns_parser.Parser(transport="udp", max_pending=2)
    for index in range(5):
        wire = dns.message.make_query(f"n{index}.test", "A").to_wire()
        parser.feed(base.Message(True, wire, len(wire), index, index))
    assert parser.state_size == 2 and parser.dropped == 3
    parser.flush()
    assert parser.unanswered == 2 and parser.state_size == 0
