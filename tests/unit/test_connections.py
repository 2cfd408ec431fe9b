"""Connection tracking in userspace, from hand-made kernel events: CONTINUATION events extend the
pending run, a process's exit ends its connections, and a slot opened again ends the connection a
lost CLOSE left behind (the kernel side is tests/agent)."""

from __future__ import annotations

import socket
import struct

from podspan_agent import _conntable, _ringbuf, bpf_events, connections, loader, tls
from podspan_agent.protocols import base, registry
from tests.support import bpf_records

PEER = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080) + socket.inet_aton("10.0.0.20") + bytes(8)
OUT, IN = bpf_events.Direction.EGRESS, bpf_events.Direction.INGRESS
REQUEST = b"GET /users/7 HTTP/1.1\r\nHost: svc\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Recorder:
    """The table's outputs: exchanges it completes and kernel entries it drops."""

    def __init__(self) -> None:
        self._taken: list[connections.Exchange] = []
        self.forgotten: list[tuple[int, int, int]] = []
        self.tls_lookups: list[int] = []
        self.live: dict[int, _ringbuf.Run] = {}  # conn_id -> the kernel's entry, as the tracer passes it
        self.failed_handshakes: dict[int, loader.TlsHandshake] = {}  # conn_id -> what the kernel recorded
        self.table = _conntable.Table(registry.detector(None, base.CaptureSettings()), self._forget,
                                      self._kernel_run, self._tls_version, tls_failure=self._tls_failure)

    def _kernel_run(self, _tgid: int, _fd: int, conn_id: int) -> _ringbuf.Run | None:
        return self.live.get(conn_id)

    def _tls_version(self, conn_id: int) -> str | None:
        self.tls_lookups.append(conn_id)
        return "1.3"

    def _tls_failure(self, conn_id: int) -> list[base.Record]:
        self.tls_lookups.append(conn_id)
        return tls.failed_handshake(self.failed_handshakes.get(conn_id))

    @property
    def exchanges(self) -> list[connections.Exchange]:
        """Every exchange the table completed so far (taken from it, as the tracer does)."""
        self._taken += self.table.take_exchanges()
        return self._taken

    def _forget(self, tgid: int, fd: int, conn_id: int) -> None:
        self.forgotten.append((tgid, fd, conn_id))

    def open(self, conn_id: int, tgid: int = 10, fd: int = 3) -> None:
        self.table.feed([bpf_records.open_event(_header(bpf_events.EventKind.OPEN, conn_id, tgid, fd, 0), PEER)])

    def data(self, conn_id: int, ts: int, direction: int, data: bytes, prev: bpf_events.Run | None = None,
             tgid: int = 10, fd: int = 3, kind: bpf_events.EventKind = bpf_events.EventKind.DATA) -> None:
        hdr = _header(kind, conn_id, tgid, fd, ts, direction)
        if prev is not None:
            hdr.prev = prev
        self.table.feed([bpf_records.data_event(hdr, data)])

    def paths(self) -> list[tuple[object, object]]:
        return [(e.record.attributes.get("url.path"), e.record.attributes.get("http.response.status_code"))
                for e in self.exchanges]


def _header(kind: bpf_events.EventKind, conn_id: int, tgid: int, fd: int, ts: int,
            direction: int = 0) -> bpf_events.EventHeader:
    return bpf_events.EventHeader(kind=kind, role=bpf_events.Role.CLIENT, direction=direction, tgid=tgid, tid=tgid,
                                  fd=fd, conn_id=conn_id, ts_ns=ts)


def _run(direction: int, start: int, end: int, size: int) -> bpf_events.Run:
    return bpf_events.Run(start_ns=start, end_ns=end, bytes=size, chunks=2, direction=direction)


def test_continuations_complete_the_run_before_the_parser_sees_it() -> None:
    seen = Recorder()
    seen.open(1)
    # A request line split across two writes: its first chunk alone is not even detectable.
    seen.data(1, 100, OUT, REQUEST[:2])
    seen.data(1, 110, OUT, REQUEST[2:], kind=bpf_events.EventKind.CONTINUATION)
    seen.data(1, 200, IN, RESPONSE[:16], prev=_run(OUT, 100, 110, len(REQUEST)))
    seen.data(1, 210, IN, RESPONSE[16:], kind=bpf_events.EventKind.CONTINUATION)
    close = _header(bpf_events.EventKind.CLOSE, 1, 10, 3, 300)
    close.prev = _run(IN, 200, 210, len(RESPONSE))
    seen.table.feed([bpf_records.header_event(close)])
    assert seen.paths() == [("/users/7", 200)]
    assert seen.table.stats.continuations_dropped == 0


def test_a_continuation_without_its_run_is_counted() -> None:
    seen = Recorder()
    seen.open(1)
    seen.data(1, 110, OUT, REQUEST, kind=bpf_events.EventKind.CONTINUATION)
    assert seen.table.stats.continuations_dropped == 1 and not seen.exchanges


def test_exit_ends_every_connection_of_the_process() -> None:
    seen = Recorder()
    for conn_id, tgid, fd in ((1, 10, 3), (2, 10, 4), (3, 11, 3)):
        seen.open(conn_id, tgid, fd)
        seen.data(conn_id, 100, OUT, REQUEST, tgid=tgid, fd=fd)
        seen.data(conn_id, 200, IN, RESPONSE, prev=_run(OUT, 100, 150, len(REQUEST)), tgid=tgid, fd=fd)
    # The last runs end where the kernel saw them; connection 2's slot holds another connection by now.
    seen.live = {1: bpf_records.run(200, 250, len(RESPONSE), 2, IN)}
    seen.table.feed([bpf_records.header_event(_header(bpf_events.EventKind.EXIT, 0, 10, -1, 300))])
    # Connection 1's response was delivered; connection 2's was not, so its request has no response.
    assert sorted(seen.paths(), key=str) == [("/users/7", 200), ("/users/7", None)]
    assert seen.forgotten == [(10, 3, 1), (10, 4, 2)]
    assert [c.conn_id for c in seen.table.connections()] == [3]
    assert seen.table.stats.ended_by_exit == 2


def test_reopening_a_tracked_slot_ends_the_old_connection() -> None:
    seen = Recorder()
    seen.open(1)
    seen.data(1, 100, OUT, REQUEST)
    seen.data(1, 200, IN, RESPONSE, prev=_run(OUT, 100, 150, len(REQUEST)))
    seen.open(2)  # connect() again on fd 3, and the CLOSE the kernel sent first was lost
    assert seen.paths() == [("/users/7", None)]
    assert [c.conn_id for c in seen.table.connections()] == [2]
    assert seen.table.stats.replaced == 1


def test_parser_drops_are_counted_per_cgroup_and_outlive_their_connection() -> None:
    run = Recorder()
    run.open(1)
    run.data(1, 1_000, OUT, REQUEST)
    run.data(1, 2_000, IN, b"garbage that is no status line\r\n", prev=bpf_events.Run(
        start_ns=1_000, end_ns=1_500, bytes=len(REQUEST), chunks=1, direction=OUT))
    run.data(1, 3_000, OUT, REQUEST, prev=bpf_events.Run(start_ns=2_000, end_ns=2_500, bytes=40, chunks=1,
                                                         direction=IN))
    assert run.table.parser_drops_by_cgroup() == {0: 1}  # the unparsable response, while the connection is open
    run.table.feed([bpf_records.header_event(_header(bpf_events.EventKind.CLOSE, 1, 10, 3, 4_000))])  # run unknown
    assert run.table.parser_drops_by_cgroup() == {0: 1}  # still there once it closed, and counted once
    assert sum(run.table.parser_drops_by_cgroup().values()) == 1


def _tls_event(conn_id: int, ts: int, direction: int) -> _ringbuf.Event:
    hdr = _header(bpf_events.EventKind.TLS, conn_id, 10, 3, ts, direction)
    hdr.flags, hdr.cgroup_id = bpf_events.ConnFlag.TLS, 77
    event = bpf_records.data_event(hdr, b"")
    assert event.kind == bpf_events.EventKind.TLS
    return event


def test_a_tls_connection_without_plaintext_is_counted_for_its_process() -> None:
    seen = Recorder()
    seen.open(1)
    seen.table.feed([_tls_event(1, 100, OUT)])
    close = _header(bpf_events.EventKind.CLOSE, 1, 10, 3, 300)
    seen.table.feed([bpf_records.header_event(close)])
    assert seen.exchanges == []
    assert (seen.table.stats.tls_handshakes, seen.table.stats.tls_undecrypted) == (1, 1)
    assert dict(seen.table.tls_processes) == {(77, 10): 1}
    assert seen.forgotten == []  # ciphertext never went to protocol detection


def test_a_failed_handshake_is_one_error_exchange_at_close() -> None:
    seen = Recorder()
    seen.failed_handshakes = {1: loader.TlsHandshake(100, 250, established=False, version=None),
                              2: loader.TlsHandshake(100, 250, established=True, version="1.3")}
    for conn_id in (1, 2, 3):  # failed; succeeded, then closed unused; no handshake probe saw (3)
        seen.open(conn_id, fd=conn_id)
        close = _header(bpf_events.EventKind.CLOSE, conn_id, 10, conn_id, 300)
        close.flags = bpf_events.ConnFlag.TLS  # from the syscalls inside the handshake calls: no TLS event
        seen.table.feed([bpf_records.header_event(close)])
    [failed] = seen.exchanges
    assert failed.connection.conn_id == 1 and failed.record.name == "TLS handshake"
    assert (failed.record.start_ns, failed.record.end_ns, failed.record.error) == (100, 250, "TLS handshake failed")
    assert failed.record.attributes == {"tls.established": False, "error.type": "tls_handshake_failed"}
    assert seen.tls_lookups == [1, 2, 3]
    seen.open(4, fd=4)  # a plain connection is never asked about
    seen.table.feed([bpf_records.header_event(_header(bpf_events.EventKind.CLOSE, 4, 10, 4, 300))])
    assert seen.tls_lookups == [1, 2, 3]


def test_plaintext_after_the_handshake_is_an_exchange_of_a_tls_connection() -> None:
    seen = Recorder()
    seen.open(1)
    seen.table.feed([_tls_event(1, 100, OUT)])  # the ClientHello: the run in progress (none) is unchanged
    runs = ((200, OUT, REQUEST, None), (300, IN, RESPONSE, _run(OUT, 200, 200, len(REQUEST))),
            (320, OUT, REQUEST, _run(IN, 300, 300, len(RESPONSE))),
            (340, IN, RESPONSE, _run(OUT, 320, 320, len(REQUEST))))
    for ts, direction, data, prev in runs:
        hdr = _header(bpf_events.EventKind.DATA, 1, 10, 3, ts, direction)
        hdr.flags = bpf_events.ConnFlag.TLS
        if prev is not None:
            hdr.prev = prev
        seen.table.feed([bpf_records.data_event(hdr, data)])
    close = _header(bpf_events.EventKind.CLOSE, 1, 10, 3, 400)
    close.prev = _run(IN, 340, 340, len(RESPONSE))
    seen.table.feed([bpf_records.header_event(close)])
    assert seen.paths() == [("/users/7", 200)] * 2
    assert seen.exchanges[0].connection.tls and seen.exchanges[0].connection.tls_version == "1.3"
    assert seen.tls_lookups == [1]  # once per connection, not per exchange
    assert seen.table.stats.tls_undecrypted == 0
