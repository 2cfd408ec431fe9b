"""The native connection table (podspan_agent._conntable) through its binding: request fingerprints, LRU
eviction, detection attempts, idle flushing, Python parsers behind base.Parser, failing callbacks; then
hostile event streams (random kinds, sizes, conn ids, slots, orders, batch splits, records of the wrong types)
fuzzed with hypothesis: never a crash, counters consistent, no references or memory kept. Behaviour from
the tracer's side is tests/unit/test_connections.py; the kernel's is tests/agent."""

from __future__ import annotations

import gc
import socket
import struct
import sys
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podspan_agent import _conntable, _ringbuf, bpf_events, connections
from podspan_agent.protocols import base, registry
from tests.support import bpf_records

PEER = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 40000) + socket.inet_aton("10.0.0.7") + bytes(8)
IN, OUT, NONE = bpf_events.Direction.INGRESS, bpf_events.Direction.EGRESS, bpf_events.Direction.NONE
SERVER, CLIENT = bpf_events.Role.SERVER, bpf_events.Role.CLIENT
REQUEST = b"GET /items/1 HTTP/1.1\r\nHost: svc\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
Record = _ringbuf.Event | _ringbuf.OpenEvent | _ringbuf.Malformed


class Table:
    """A table with recording callbacks; `live` is the kernel's runs by conn_id."""

    def __init__(self, max_connections: int = 65536, detect: registry.Detector | None = None,
                 forget: Callable[[int, int, int], None] | None = None) -> None:
        self.forgotten: list[tuple[int, int, int]] = []
        self.live: dict[int, _ringbuf.Run] = {}
        self.taken: list[connections.Exchange] = []
        self.table = _conntable.Table(detect or registry.detector(None, base.CaptureSettings()),
                                      forget or self._forget, self._kernel_run, lambda _conn_id: None,
                                      max_connections)

    def _forget(self, tgid: int, fd: int, conn_id: int) -> None:
        self.forgotten.append((tgid, fd, conn_id))

    def _kernel_run(self, _tgid: int, _fd: int, conn_id: int) -> _ringbuf.Run | None:
        return self.live.get(conn_id)

    def feed(self, *records: Record) -> list[connections.Exchange]:
        self.table.feed(list(records))
        taken = self.table.take_exchanges()
        self.taken += taken
        return taken


def _hdr(kind: int, conn_id: int, ts: int = 0, direction: int = 0, role: int = SERVER, tgid: int = 10,
         fd: int = 3, prev: tuple[int, int, int, int] | None = None, flags: int = 0) -> bpf_events.EventHeader:
    hdr = bpf_events.EventHeader(kind=kind, role=role, direction=direction, flags=flags, tgid=tgid, tid=tgid + 1,
                                 fd=fd, conn_id=conn_id, cgroup_id=77, ts_ns=ts)
    if prev is not None:  # (direction, start, end, bytes) of the run the event ends
        hdr.prev = bpf_events.Run(direction=prev[0], start_ns=prev[1], end_ns=prev[2], bytes=prev[3], chunks=1)
    return hdr


def _open(conn_id: int, role: int = SERVER, tgid: int = 10, fd: int = 3) -> _ringbuf.OpenEvent:
    return bpf_records.open_event(_hdr(bpf_events.EventKind.OPEN, conn_id, role=role, tgid=tgid, fd=fd), PEER)


def _data(conn_id: int, ts: int, direction: int, data: bytes, prev: tuple[int, int, int, int] | None = None,
          **fields: int) -> _ringbuf.Event:
    return bpf_records.data_event(_hdr(bpf_events.EventKind.DATA, conn_id, ts, direction, prev=prev, **fields), data)


def _close(conn_id: int, prev: tuple[int, int, int, int] | None = None, **fields: int) -> _ringbuf.Event:
    return bpf_records.header_event(_hdr(bpf_events.EventKind.CLOSE, conn_id, prev=prev, **fields))


def _exchange_stream(conn_id: int, role: int = SERVER) -> list[Record]:
    request_dir, response_dir = (IN, OUT) if role == SERVER else (OUT, IN)
    return [_open(conn_id, role), _data(conn_id, 100, request_dir, REQUEST),
            _data(conn_id, 200, response_dir, RESPONSE, prev=(request_dir, 100, 150, len(REQUEST))),
            _close(conn_id, prev=(response_dir, 200, 250, len(RESPONSE)))]


def _check_counters(stats: _conntable.TableStats, length: int, exchanges: int) -> None:
    """Every connection tracked ends exactly once, and every record counted became one exchange."""
    assert stats.opened + stats.unknown_connections == length + stats.closed + stats.evicted + stats.undetected
    assert stats.records == exchanges
    assert stats.ended_by_exit + stats.replaced <= stats.closed


@pytest.mark.parametrize("role", [SERVER, CLIENT])
def test_an_exchange_carries_the_request_fingerprint_and_its_connection(role: int) -> None:
    table = Table()
    [exchange] = table.feed(*_exchange_stream(1, role))
    assert exchange.fingerprint == zlib.crc32(REQUEST[:_conntable.FINGERPRINT_BYTES])
    assert exchange.tid == 11 and exchange.record.attributes["url.path"] == "/items/1"
    info = exchange.connection
    assert isinstance(info, connections.ConnectionInfo)
    assert (info.conn_id, info.tgid, info.fd, info.role, info.cgroup_id) == (1, 10, 3, role, 77)
    assert info.peer is not None and (info.peer.address, info.peer.port) == ("10.0.0.7", 40000)
    assert (info.datagram, info.tls, info.tls_version) == (False, False, None)
    _check_counters(table.table.stats, len(table.table), 1)


def test_a_request_longer_than_the_fingerprint_is_hashed_on_its_first_bytes_across_continuations() -> None:
    table = Table()
    request = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: svc\r\n\r\n"
    more = bpf_records.data_event(_hdr(bpf_events.EventKind.CONTINUATION, 1, 110, IN), request[20:])
    [exchange] = table.feed(_open(1), _data(1, 100, IN, request[:20]), more,
                            _data(1, 200, OUT, RESPONSE, prev=(IN, 100, 150, len(request))),
                            _close(1, prev=(OUT, 200, 250, len(RESPONSE))))
    assert exchange.fingerprint == zlib.crc32(request[:_conntable.FINGERPRINT_BYTES])


def test_the_least_recently_used_connection_is_evicted_and_forgotten() -> None:
    table = Table(max_connections=2)
    table.feed(_open(1, fd=3), _open(2, fd=4), _data(1, 100, IN, REQUEST, fd=3), _open(3, fd=5))
    assert [c.conn_id for c in table.table.connections()] == [1, 3]  # 2 was the least recently used
    assert table.forgotten == [(10, 4, 2)] and table.table.stats.evicted == 1
    _check_counters(table.table.stats, len(table.table), 0)


def test_a_connection_no_parser_matches_is_dropped_after_three_runs() -> None:
    table = Table()
    runs = [_open(1)] + [_data(1, ts, IN if ts % 200 else OUT, b"\x00\x01 not a protocol",
                               prev=None if ts == 100 else (OUT if ts % 200 else IN, ts - 100, ts - 50, 17))
                         for ts in (100, 200, 300, 400)]
    table.feed(*runs)
    assert table.forgotten == [(10, 3, 1)] and len(table.table) == 0
    stats = table.table.stats
    assert (stats.undetected, stats.unknown_connections) == (1, 0)  # the last run went with it
    _check_counters(stats, 0, 0)


def test_an_idle_response_is_delivered_once_the_kernel_says_it_ended() -> None:
    table = Table()
    table.feed(_open(1), _data(1, 100, IN, REQUEST), _data(1, 200, OUT, RESPONSE, prev=(IN, 100, 150, len(REQUEST))))
    assert table.table.busy_threads() == set()  # answering: no request waits
    table.live[1] = bpf_records.run(200, 260, len(RESPONSE), 1, OUT)
    table.table.flush_idle(250)  # the kernel's run went on after the idle limit: a chunk is still in flight
    assert table.table.take_exchanges() == []
    table.table.flush_idle(300)
    [exchange] = table.table.take_exchanges()
    assert (exchange.record.end_ns, exchange.record.attributes["http.response.status_code"]) == (260, 200)
    table.table.flush_idle(400)  # delivered once
    table.feed(_close(1, prev=(OUT, 200, 260, len(RESPONSE))))
    assert table.table.take_exchanges() == [] and table.table.stats.records == 1


def test_busy_threads_are_servers_with_an_unanswered_request() -> None:
    table = Table()
    table.feed(_open(1), _data(1, 100, IN, REQUEST), _open(2, CLIENT, fd=4), _data(2, 100, OUT, REQUEST, fd=4))
    assert table.table.busy_threads() == {(10, 11)}


def test_python_parsers_get_messages_and_their_failures_cost_one_run() -> None:
    table = Table()
    ping, pong = b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"
    [exchange] = table.feed(_open(1, CLIENT), _data(1, 100, OUT, ping),
                            _data(1, 200, IN, pong, prev=(OUT, 100, 150, len(ping))),
                            _close(1, prev=(IN, 200, 250, len(pong))))
    assert exchange.record.protocol == "redis" and exchange.record.name == "PING"

    class Failing:
        dropped = 3

        def feed(self, message: base.Message) -> list[base.Record]:
            raise ValueError(message.data)

        def flush(self) -> list[base.Record]:
            return [base.Record("test", "flushed", 1, 2)]

    failing = Table(detect=lambda _data, _datagram: ("test", Failing()))
    failing.feed(_open(1), _data(1, 100, IN, b"x"), _data(1, 200, OUT, b"y", prev=(IN, 100, 150, 1)), _close(1))
    stats = failing.table.stats
    assert (stats.parser_errors, stats.records, stats.event_errors) == (1, 1, 0)
    assert failing.table.parser_drops_by_cgroup() == {77: 3}


def test_failing_callbacks_cost_their_event_and_calling_back_in_is_refused() -> None:
    def forget(_tgid: int, _fd: int, _conn_id: int) -> None:
        raise OSError("the kernel map is gone")

    table = Table(max_connections=1, forget=forget)
    table.feed(_open(1, fd=3), _open(2, fd=4), _data(2, 100, IN, REQUEST, fd=4))
    stats = table.table.stats
    assert (stats.event_errors, stats.evicted, stats.opened) == (1, 1, 2)
    assert [c.conn_id for c in table.table.connections()] == [2]  # the open went through; its eviction's call failed

    def detect(data: bytes, _datagram: bool) -> None:
        reentrant.table.feed([])

    reentrant = Table(detect=detect)
    reentrant.feed(_open(1), _data(1, 100, IN, REQUEST), _data(1, 200, OUT, RESPONSE, prev=(IN, 100, 150, 40)))
    assert reentrant.table.stats.event_errors == 1  # RuntimeError: re-entered


def test_records_of_the_wrong_type_or_values_are_counted_not_fatal() -> None:
    table = Table()
    good = _data(1, 100, IN, REQUEST)
    fields = list(good)
    wrong_data = _ringbuf.Event((*fields[:-1], "not bytes"))
    huge_conn = _ringbuf.Event((*fields[:7], 2**80, *fields[8:]))
    bad_role = _ringbuf.Event((fields[0], 9, *fields[2:]))
    bad_prev = _ringbuf.Event((*fields[:10], (1, 2, 3, 4, 5), *fields[11:]))
    unknown_kind = _ringbuf.Event((42, *fields[1:]))
    table.table.feed([wrong_data, huge_conn, bad_role, bad_prev, "a str", unknown_kind, good])  # type: ignore[list-item]
    stats = table.table.stats
    assert (stats.events, stats.event_errors, stats.malformed_events, stats.unknown_connections) == (7, 5, 1, 1)
    with pytest.raises(TypeError):
        table.table.feed((good,))  # type: ignore[arg-type]


# ---- hostile streams ----
KINDS = [kind.value for kind in bpf_events.EventKind]
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([REQUEST, RESPONSE, REQUEST[:7], RESPONSE[:9], b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n",
                     b"HTTP/1.1 100 Continue\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: 99\r\n\r\nab"]),
)
RUNS = st.tuples(st.integers(0, 2), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@st.composite
def records(draw: st.DrawFn) -> Record:
    kind = draw(st.sampled_from([*KINDS, 0, 99]))
    hdr = _hdr(kind if kind in KINDS else bpf_events.EventKind.DATA, draw(st.integers(0, 6)),
               ts=draw(st.integers(0, 2**64 - 1)), direction=draw(st.integers(0, 3)), role=draw(st.integers(0, 2)),
               tgid=draw(st.integers(1, 3)), fd=draw(st.integers(-1, 4)), prev=draw(st.none() | RUNS),
               flags=draw(st.integers(0, 15)))
    if kind == bpf_events.EventKind.OPEN:
        return bpf_records.open_event(hdr, draw(st.binary(max_size=28)), listen_fd=draw(st.integers(-1, 3)),
                                      listen_tgid=draw(st.integers(0, 3)))
    if kind in (bpf_events.EventKind.CLOSE, bpf_events.EventKind.EXIT):
        return bpf_records.header_event(hdr)
    if kind in KINDS:
        return bpf_records.data_event(hdr, draw(PAYLOADS))
    raw = bytes([kind]) + draw(st.binary(max_size=80))  # no kind, or too short for its kind
    return _ringbuf.decode(raw)


STREAMS = st.lists(records(), max_size=60)


def _run_stream(stream: list[Record], splits: list[int], live: dict[int, _ringbuf.Run], max_connections: int
                ) -> tuple[_conntable.TableStats, int]:
    table = Table(max_connections)
    table.live = live
    start = 0
    for split in [*splits, len(stream)]:
        table.feed(*stream[start:start + split])
        start += split
    taken = len(table.taken)
    stats = table.table.stats
    assert stats.events == len(stream) and stats.event_errors == 0
    assert stats.malformed_events == sum(isinstance(r, _ringbuf.Malformed) for r in stream)
    assert len(table.table) <= max_connections
    assert all(isinstance(e.record, base.Record) and isinstance(e.connection, connections.ConnectionInfo)
               for e in table.taken)
    _check_counters(stats, len(table.table), taken)
    table.table.flush_idle(2**64 - 1)
    table.table.finish_all()
    taken += len(table.table.take_exchanges())
    stats = table.table.stats
    assert len(table.table) == 0 and table.table.busy_threads() == set()
    _check_counters(stats, 0, taken)
    return stats, taken


@settings(max_examples=400, deadline=None)
@given(STREAMS, st.lists(st.integers(0, 20), max_size=5), st.dictionaries(st.integers(0, 6), RUNS, max_size=4),
       st.integers(1, 5))
def test_hostile_streams_keep_the_table_consistent(stream: list[Record], splits: list[int],
                                                   live: dict[int, tuple[int, int, int, int]],
                                                   max_connections: int) -> None:
    runs = {conn_id: bpf_records.run(start, end, size, 1, direction)
            for conn_id, (direction, start, end, size) in live.items()}
    _run_stream(stream, splits, runs, max_connections)


@settings(max_examples=20, deadline=None)
@given(STREAMS.filter(lambda stream: len(stream) > 20))  # a hostile stream between two whole exchanges
def test_hostile_streams_keep_no_references_or_memory(hostile: list[Record]) -> None:
    stream = _exchange_stream(9) + hostile + _exchange_stream(10, CLIENT)  # some exchanges for sure
    datas = [r.data for r in stream if isinstance(r, _ringbuf.Event) and len(r.data) > 1]  # not singletons
    gc.collect()
    refs = [sys.getrefcount(d) for d in datas]
    _run_stream(stream, [], {}, 3)  # once to warm caches (interned strings, the listen cache's first entries)
    gc.collect()
    # Only what is allocated under this file's frames (the table's own allocations included): the session's
    # tracer threads allocate meanwhile.
    here = [tracemalloc.Filter(True, __file__)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(here)
        for _ in range(30):
            _run_stream(stream, [7], {}, 3)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(here)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 4096, grown  # a leak of one object per run would be 30 of them at least
    assert [sys.getrefcount(d) for d in datas] == refs


def test_on_detected_is_told_each_stream_connection_once_and_can_be_switched_off() -> None:
    told: list[tuple[int, int, int, str]] = []
    t = Table()
    t.table.on_detected = lambda tgid, fd, conn_id, protocol: told.append((tgid, fd, conn_id, protocol))
    t.feed(_open(1, fd=3), _data(1, 10, IN, REQUEST), _data(1, 20, OUT, RESPONSE, prev=(IN, 10, 15, len(REQUEST))),
           _data(1, 30, IN, REQUEST, prev=(OUT, 20, 25, len(RESPONSE))))
    assert told == [(10, 3, 1, "http")]  # at its first delivered run, not again
    t.table.on_detected = None
    t.feed(_open(2, fd=4), _data(2, 10, IN, REQUEST), _data(2, 20, OUT, RESPONSE, prev=(IN, 10, 15, len(REQUEST))))
    assert told == [(10, 3, 1, "http")]
    with pytest.raises(TypeError):
        t.table.on_detected = 42  # type: ignore[assignment]


def test_a_tls_connection_closing_without_plaintext_asks_for_its_failed_handshake() -> None:
    asked: list[int] = []
    failed = base.Record("tls", "TLS handshake", 100, 250, {"tls.established": False}, error="TLS handshake failed")

    def tls_failure(conn_id: int) -> list[base.Record]:
        asked.append(conn_id)
        return [failed] if conn_id == 1 else []

    table = _conntable.Table(registry.detector(None, base.CaptureSettings()), lambda *_: None, lambda *_: None,
                             lambda _conn_id: None, tls_failure=tls_failure)
    tls = int(bpf_events.ConnFlag.TLS)
    table.feed([_open(1, fd=3), _open(2, fd=4), _open(3, fd=5), _close(1, flags=tls), _close(2, flags=tls),
                _close(3)])
    (exchange,) = table.take_exchanges()
    assert exchange.record is failed and exchange.connection.conn_id == 1
    assert asked == [1, 2]  # a plain connection is never asked about
