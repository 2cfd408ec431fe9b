"""Fuzzing the HTTP/2, Kafka, MongoDB and DNS parsers: random and mutated captures never raise,
state stays bounded, and no detector claims another protocol's opening bytes."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podspan_agent.protocols import base, dns, hpack, http2, kafka, mongodb
from tests.unit.protocols.fixtures import capture_db

LIMIT = 8
FACTORIES: dict[str, Callable[[], object]] = {
    "http2": lambda: http2.Parser(max_streams=LIMIT),
    "kafka": lambda: kafka.Parser(max_pending=LIMIT),
    "mongodb": lambda: mongodb.Parser(max_pending=LIMIT),
    "dns-udp": lambda: dns.Parser(transport="udp", max_pending=LIMIT),
    "dns-tcp": lambda: dns.Parser(transport="tcp", max_pending=LIMIT),
}
FIXTURES = {
    "http2": [("http2", "curl_nginx"), ("grpc", "echo_session")],
    "kafka": [("kafka", "client_latest"), ("kafka", "legacy_versions")],
    "mongodb": [("mongodb", "crud_session")],
    "dns-udp": [("dns", "udp_lookups")],
    "dns-tcp": [("dns", "tcp_lookups")],
}
CONNECTIONS = {
    kind: [conn for protocol, name in names for conn in capture_db.load(protocol, name, 1 << 20)]
    for kind, names in FIXTURES.items()
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(parser: object, messages: list[base.Message]) -> None:
    records = [record for msg in messages for record in parser.feed(msg)]  # type: ignore[attr-defined]
    assert parser.state_size <= LIMIT  # type: ignore[attr-defined]
    records += parser.flush()  # type: ignore[attr-defined]
    for record in records:
        assert record.start_ns <= record.end_ns
        assert isinstance(record.name, str) and record.name


messages_strategy = st.lists(
    st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 2000)), max_size=12
).map(
    lambda runs: [
        base.Message(c, d, len(d) + extra, i * 10, i * 10 + 5) for i, (c, d, extra) in enumerate(runs)
    ]
)


@pytest.mark.parametrize("kind", FACTORIES)
@FUZZ
@given(messages=messages_strategy)
def test_random_bytes(kind: str, messages: list[base.Message]) -> None:
    check(FACTORIES[kind](), messages)


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> list[base.Message]:
    connection = draw(st.sampled_from(CONNECTIONS[kind]))
    out = []
    for index, msg in enumerate(connection[:20]):
        data = bytearray(msg.data)
        for _ in range(draw(st.integers(0, 3))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        if draw(st.booleans()):  # split the run in two at `cut`, both complete
            out.append(base.Message(msg.from_client, bytes(data[:cut]), cut, index * 10, index * 10 + 1))
            out.append(
                base.Message(
                    msg.from_client, bytes(data[cut:]), len(data) - cut, index * 10 + 2, index * 10 + 3
                )
            )
        elif draw(st.booleans()):  # truncate as a small capture size would
            out.append(base.Message(msg.from_client, bytes(data[:cut]), msg.size, index * 10, index * 10 + 3))
        elif draw(st.booleans()):
            out.append(base.Message(msg.from_client, bytes(data), msg.size, index * 10, index * 10 + 3))
        # else: the run is lost entirely
    return out


@pytest.mark.parametrize("kind", FACTORIES)
@FUZZ
@given(data=st.data())
def test_mutated_captures(kind: str, data: st.DataObject) -> None:
    check(FACTORIES[kind](), data.draw(mutated(kind)))


@FUZZ
@given(blocks=st.lists(st.binary(max_size=200), max_size=8), synchronised=st.booleans())
def test_hpack_never_raises_and_stays_bounded(blocks: list[bytes], synchronised: bool) -> None:
    decoder = hpack.Decoder(synchronised=synchronised)
    for block in blocks:
        decoder.decode(block)
        assert decoder.table_size <= decoder.max_size <= hpack.MAX_TABLE_SIZE


def _pg_startup() -> bytes:
    body = struct.pack(">i", 196608) + b"user\0app\0database\0shop\0\0"
    return struct.pack(">i", len(body) + 4) + body


def _first_client_bytes(protocol: str, name: str) -> bytes:
    connection = capture_db.load(protocol, name, 4096)[0]
    return next(msg.data for msg in connection if msg.from_client)


OPENINGS: dict[str, list[bytes]] = {
    "http1": [b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"],
    "redis": [b"*1\r\n$4\r\nPING\r\n", _first_client_bytes("redis", "pipeline")],
    "postgresql": [
        _pg_startup(),
        struct.pack(">ii", 8, 80877103),
        _first_client_bytes("postgresql", "simple_session"),
    ],
    "mysql": [_first_client_bytes("mysql", "cli_session"), _first_client_bytes("mysql", "prepared_session")],
    "http2": [_first_client_bytes("http2", "curl_nginx"), _first_client_bytes("grpc", "echo_session")],
    "kafka": [_first_client_bytes("kafka", "client_latest"), _first_client_bytes("kafka", "legacy_versions")],
    "mongodb": [_first_client_bytes("mongodb", "crud_session")],
    "dns": [_first_client_bytes("dns", "udp_lookups"), _first_client_bytes("dns", "tcp_lookups")],
}
DETECTORS = {"http2": http2.detect, "kafka": kafka.detect, "mongodb": mongodb.detect, "dns": dns.detect}


@pytest.mark.parametrize("detector", DETECTORS)
def test_cross_protocol_detection(detector: str) -> None:
    for protocol, openings in OPENINGS.items():
        for opening in openings:
            assert DETECTORS[detector](opening) == (protocol == detector), (detector, protocol, opening[:40])


@pytest.mark.parametrize("detector", DETECTORS)
@FUZZ
@given(data=st.binary(max_size=64))
def test_detectors_never_raise(detector: str, data: bytes) -> None:
    assert DETECTORS[detector](data) in (True, False)
    assert DETECTORS[detector](data, False) in (True, False)
