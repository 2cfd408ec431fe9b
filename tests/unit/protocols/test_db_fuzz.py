"""Fuzzing the database parsers: no exception escapes, state stays bounded, no misdetection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podspan_agent.protocols import base, mysql, postgresql, redis
from tests.unit.protocols.fixtures import capture_db

PARSERS: dict[str, Any] = {"redis": redis, "postgresql": postgresql, "mysql": mysql}
FIXTURES = {
    "redis": ["resp2_session", "resp3_types", "pipeline"],
    "postgresql": ["simple_session", "pgbench_prepared", "ssl_refused"],
    "mysql": ["cli_session", "prepared_session"],
}
LIMITS = {
    "redis": redis.MAX_PENDING,
    "postgresql": postgresql.MAX_PENDING + postgresql.MAX_STATEMENTS + postgresql.MAX_PORTALS,
    "mysql": mysql.MAX_PENDING + mysql.MAX_STATEMENTS,
}


def corpus(protocol: str) -> list[base.Message]:
    return [m for name in FIXTURES[protocol] for conn in capture_db.load(protocol, name, 4096) for m in conn]


def check(protocol: str, messages: list[base.Message]) -> None:
    parser = PARSERS[protocol].Parser(base.CaptureSettings(statement_parameters=True))
    for message in messages:
        for record in parser.feed(message):
            assert record.start_ns <= record.end_ns
            assert isinstance(record.name, str) and record.name
        assert parser.state_size <= LIMITS[protocol]
    parser.flush()


def mutate(draw: Callable[..., Any], message: base.Message) -> base.Message:
    data = bytearray(message.data)
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    size = max(cut, message.size + draw(st.integers(-5, 5)))
    start = draw(st.integers(0, 10**6))
    end = start + draw(st.integers(0, 1000))
    return base.Message(message.from_client, bytes(data[:cut]), size, start, end)


@pytest.mark.parametrize("protocol", sorted(PARSERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_frames(protocol: str, data: st.DataObject) -> None:
    messages = corpus(protocol)
    start = data.draw(st.integers(0, len(messages) - 1))
    picked = messages[start : start + data.draw(st.integers(1, 40))]
    check(protocol, [mutate(data.draw, m) for m in picked])


@pytest.mark.parametrize("protocol", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(runs=st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 5000)), max_size=30))
def test_random_bytes(protocol: str, runs: list[tuple[bool, bytes, int]]) -> None:
    check(protocol, [base.Message(c, d, len(d) + extra, i, i + 1) for i, (c, d, extra) in enumerate(runs)])


@pytest.mark.parametrize("protocol", sorted(PARSERS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_resplit_runs(protocol: str, data: st.DataObject) -> None:
    """A run split at an arbitrary point (as a capture that lost a direction change would)."""
    messages = corpus(protocol)
    out: list[base.Message] = []
    for m in messages[: data.draw(st.integers(1, len(messages)))]:
        cut = data.draw(st.integers(0, len(m.data)))
        out.append(base.Message(m.from_client, m.data[:cut], cut, m.start_ns, m.end_ns))
        out.append(base.Message(m.from_client, m.data[cut:], m.size - cut, m.start_ns, m.end_ns))
    check(protocol, out)


def test_state_stays_bounded_under_a_flood_of_requests() -> None:
    for protocol, frame in (
        ("redis", b"*1\r\n$4\r\nPING\r\n" * 200),
        ("postgresql", b"Q\x00\x00\x00\rSELECT 1\x00" * 200),
        ("mysql", b"\x09\x00\x00\x00\x03SELECT 1" * 200),
    ):
        parser = PARSERS[protocol].Parser(base.CaptureSettings())
        for index in range(20):
            parser.feed(base.Message(True, frame, len(frame), index, index))
        assert parser.state_size <= LIMITS[protocol]
        assert parser.dropped > 0


HTTP1 = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"POST /api HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n"]


@pytest.mark.parametrize("protocol", sorted(PARSERS))
def test_cross_protocol_detection(protocol: str) -> None:
    detect = PARSERS[protocol].detect
    for other in PARSERS:
        openings = [conn[0].data for name in FIXTURES[other] for conn in capture_db.load(other, name)]
        client_first = [m.data for name in FIXTURES[other] for conn in capture_db.load(other, name)
                        for m in conn if m.from_client][:20]
        if other == protocol:
            assert any(detect(o) for o in openings)
        else:
            for sample in openings + client_first:
                assert not detect(sample), (other, sample[:40])
    for sample in HTTP1:
        assert not detect(sample)
