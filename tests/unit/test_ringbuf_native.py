"""The native ring-buffer decoder (podspan_agent._ringbuf.decode) on records laid out as the kernel writes
them (built with the ctypes mirror, itself checked against the C header by test_bpf_events_layout.py), and
on hostile bytes: any length, any kind byte, lying length fields. Every buffer is placed right before a
PROT_NONE page, so a read past its end would crash the test run. Then the tracer's dispatch of a decoded
batch. The kernel side (a real ring buffer drained by RingBuffer) is tests/agent/test_ringbuf_drain.py."""

from __future__ import annotations

import ctypes
import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podspan_agent import _ringbuf, bpf_events, tracer
from tests.support import bpf_records, guarded_memory

U64, U32 = 2**64 - 1, 2**32 - 1
PEER6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + bytes(4) + socket.inet_pton(
    socket.AF_INET6, "fd00::17") + bytes(4)
RECORD_KINDS = [kind.value for kind in bpf_events.EventKind]


def _decode_guarded(data: bytes) -> _ringbuf.Event | _ringbuf.OpenEvent | _ringbuf.Malformed:
    with GUARDED.view(data) as view:
        return _ringbuf.decode(view)


GUARDED = guarded_memory.GuardedPage()


def _header(kind: int, **fields: int) -> bpf_events.EventHeader:
    values = dict(role=bpf_events.Role.SERVER, direction=bpf_events.Direction.INGRESS, flags=bpf_events.ConnFlag.HTTP2,
                  tgid=U32, tid=4321, fd=-1, conn_id=U64, cgroup_id=2**63 + 5, ts_ns=123_456_789_000)
    values.update(fields)
    hdr = bpf_events.EventHeader(kind=kind, **values)
    hdr.prev = bpf_events.Run(start_ns=1, end_ns=U64, bytes=2**40, chunks=U32, direction=bpf_events.Direction.EGRESS)
    return hdr


def _header_tuple(hdr: bpf_events.EventHeader) -> tuple[object, ...]:
    prev = hdr.prev
    return (hdr.kind, hdr.role, hdr.direction, hdr.flags, hdr.tgid, hdr.tid, hdr.fd, hdr.conn_id, hdr.cgroup_id,
            hdr.ts_ns, (prev.start_ns, prev.end_ns, prev.bytes, prev.chunks, prev.direction))


def _expected(data: bytes) -> tuple[object, ...]:
    """What the decoder must return, from the ctypes mirror: the Python statement of the contract."""
    kind = data[0] if data else -1
    size = len(data)
    malformed = (_ringbuf.MALFORMED, kind, size)
    if kind in (bpf_events.EventKind.DATA, bpf_events.EventKind.CONTINUATION, bpf_events.EventKind.TLS):
        if size < bpf_events.DATA_OFFSET:
            return malformed
        fixed = bpf_events.DataEventFixed.from_buffer_copy(data[: bpf_events.DATA_OFFSET])
        captured = min(fixed.captured, size - bpf_events.DATA_OFFSET)
        payload = data[bpf_events.DATA_OFFSET: bpf_events.DATA_OFFSET + captured]
        return (*_header_tuple(fixed.hdr), fixed.chunk_bytes, payload)
    if kind in (bpf_events.EventKind.CLOSE, bpf_events.EventKind.EXIT):
        if size < ctypes.sizeof(bpf_events.EventHeader):
            return malformed
        hdr = bpf_events.EventHeader.from_buffer_copy(data[: ctypes.sizeof(bpf_events.EventHeader)])
        return (*_header_tuple(hdr), 0, b"")
    if kind == bpf_events.EventKind.OPEN:
        if size < ctypes.sizeof(bpf_events.OpenEvent):
            return malformed
        event = bpf_events.OpenEvent.from_buffer_copy(data[: ctypes.sizeof(bpf_events.OpenEvent)])
        return (*_header_tuple(event.hdr), event.listen_fd, bytes(event.peer)[: event.addr_len], event.listen_tgid)
    return malformed


def _check(data: bytes) -> _ringbuf.Event | _ringbuf.OpenEvent | _ringbuf.Malformed:
    record = _decode_guarded(data)
    assert record == _expected(data)
    assert _ringbuf.decode(data) == record  # bytes too, not only a memoryview
    return record


def test_sizes_and_kinds_are_the_mirrors() -> None:
    sizes = (_ringbuf.HEADER_SIZE, _ringbuf.OPEN_SIZE, _ringbuf.DATA_OFFSET)
    assert sizes == (ctypes.sizeof(bpf_events.EventHeader), ctypes.sizeof(bpf_events.OpenEvent), bpf_events.DATA_OFFSET)
    kinds = {"OPEN": _ringbuf.OPEN, "DATA": _ringbuf.DATA, "CLOSE": _ringbuf.CLOSE,
             "CONTINUATION": _ringbuf.CONTINUATION, "EXIT": _ringbuf.EXIT, "TLS": _ringbuf.TLS}
    assert kinds == {kind.name: kind.value for kind in bpf_events.EventKind}
    assert _ringbuf.MALFORMED not in kinds.values()


@pytest.mark.parametrize("kind", [bpf_events.EventKind.DATA, bpf_events.EventKind.CONTINUATION])
def test_data_events(kind: bpf_events.EventKind) -> None:
    payload = b"GET /users/7 HTTP/1.1\r\nHost: svc\r\n\r\n"
    hdr = _header(kind)
    fixed = bpf_events.DataEventFixed(hdr=hdr, chunk_bytes=70_000, captured=len(payload))
    # The kernel sends exactly the captured bytes; a longer record (padding) carries no more data.
    for tail in (b"", b"\xff" * 13):
        record = _check(bytes(fixed) + payload + tail)
        assert isinstance(record, _ringbuf.Event)
        assert (record.kind, record.data, record.chunk_bytes) == (kind, payload, 70_000)
        assert (record.tgid, record.fd, record.conn_id, record.cgroup_id) == (U32, -1, U64, 2**63 + 5)
        assert record.flags == bpf_events.ConnFlag.HTTP2 and record.direction == bpf_events.Direction.INGRESS
        prev = record.prev
        assert isinstance(prev, _ringbuf.Run)
        assert (prev.start_ns, prev.end_ns, prev.bytes, prev.chunks, prev.direction) == (
            1, U64, 2**40, U32, bpf_events.Direction.EGRESS)
    # `captured` claiming more than the record holds: only what is there.
    fixed.captured = U32
    record = _check(bytes(fixed) + payload[:5])
    assert isinstance(record, _ringbuf.Event) and record.data == payload[:5]
    # Nothing captured (sendfile, say): an empty payload, not a malformed record.
    fixed.captured = 0
    record = _check(bytes(fixed))
    assert isinstance(record, _ringbuf.Event) and record.data == b""


@pytest.mark.parametrize("kind", [bpf_events.EventKind.CLOSE, bpf_events.EventKind.EXIT])
def test_header_only_events(kind: bpf_events.EventKind) -> None:
    hdr = _header(kind, fd=7, conn_id=0 if kind == bpf_events.EventKind.EXIT else 99)
    record = _check(bytes(hdr))
    assert isinstance(record, _ringbuf.Event)
    assert (record.kind, record.fd, record.chunk_bytes, record.data) == (kind, 7, 0, b"")
    assert record.prev.bytes == 2**40


def test_open_event_peer_is_clamped_to_addr_len() -> None:
    event = bpf_events.OpenEvent(hdr=_header(bpf_events.EventKind.OPEN), listen_fd=5, addr_len=len(PEER6),
                                 listen_tgid=77)
    event.peer[:] = PEER6
    record = _check(bytes(event))
    assert isinstance(record, _ringbuf.OpenEvent)
    assert (record.kind, record.listen_fd, record.peer, record.listen_tgid) == (bpf_events.EventKind.OPEN, 5,
                                                                                PEER6, 77)
    event.addr_len = 16
    assert _check(bytes(event)).peer == PEER6[:16]  # type: ignore[union-attr]
    event.addr_len = U32  # more than the 28 bytes there are
    assert _check(bytes(event)).peer == PEER6  # type: ignore[union-attr]
    event.addr_len = 0  # accept() without an address
    assert _check(bytes(event)).peer == b""  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_a_record_too_short_for_its_kind_is_malformed(kind: int) -> None:
    full = {bpf_events.EventKind.OPEN: _ringbuf.OPEN_SIZE, bpf_events.EventKind.CLOSE: _ringbuf.HEADER_SIZE,
            bpf_events.EventKind.EXIT: _ringbuf.HEADER_SIZE}.get(bpf_events.EventKind(kind), _ringbuf.DATA_OFFSET)
    whole = bytes(_header(kind)) + bytes(full)
    for size in (1, 8, full - 1):
        record = _check(whole[:size])
        assert isinstance(record, _ringbuf.Malformed)
        assert (record.kind, record.raw_kind, record.size) == (_ringbuf.MALFORMED, kind, size)
    assert not isinstance(_check(whole[:full]), _ringbuf.Malformed)


def test_empty_and_unknown_kinds_are_malformed() -> None:
    assert _check(b"") == (_ringbuf.MALFORMED, -1, 0)
    for kind in (0, 7, 255):
        assert _check(bytes([kind]) + bytes(200)) == (_ringbuf.MALFORMED, kind, 201)


def test_decode_takes_buffers_only() -> None:
    event = bytes(_header(bpf_events.EventKind.CLOSE))
    assert _ringbuf.decode(bytearray(event)) == _ringbuf.decode(event)
    with pytest.raises(TypeError):
        _ringbuf.decode("not bytes")  # type: ignore[arg-type]


def test_ring_buffer_needs_a_ring_buffer_map() -> None:
    with pytest.raises(OSError):
        _ringbuf.RingBuffer(-1)
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(OSError):  # not a BPF object at all
            _ringbuf.RingBuffer(fd)
    finally:
        os.close(fd)


def test_records_are_plain_tuples_with_names() -> None:
    run = _ringbuf.Run((1, 2, 3, 4, 5))
    assert run == (1, 2, 3, 4, 5) and run.chunks == 4
    record = _ringbuf.decode(bytes(_header(bpf_events.EventKind.CLOSE)))
    assert isinstance(record, _ringbuf.Event) and isinstance(record, tuple)
    assert len(record) == 13 and record[10] is record.prev and record[-1] is record.data


# ---- hostile bytes ----
_lengths = st.sampled_from([0, 1, 7, 8, 71, 72, 73, 79, 80, 81, 111, 112, 113, 200, 600])


@given(st.binary(max_size=700))
def test_fuzz_any_bytes(data: bytes) -> None:
    _check(data)


@given(kind=st.one_of(st.sampled_from(RECORD_KINDS), st.integers(0, 255)), size=_lengths,
       captured=st.one_of(st.integers(0, 600), st.sampled_from([U32, 2**31, 2**31 - 1])),
       addr_len=st.one_of(st.integers(0, 40), st.just(U32)), filler=st.binary(min_size=600, max_size=600))
def test_fuzz_records_with_lying_lengths(kind: int, size: int, captured: int, addr_len: int, filler: bytes) -> None:
    """Well-formed headers around the size boundaries, with `captured` and `addr_len` saying anything."""
    data = bytearray(bytes([kind]) + filler)
    struct.pack_into("=I", data, bpf_events.DATA_OFFSET - 4, captured)
    struct.pack_into("=I", data, bpf_events.OpenEvent.addr_len.offset, addr_len)
    _check(bytes(data[:size]))


# ---- the tracer's dispatch of a drained batch ----
class _FakeProbes:
    """What the tracer asks of loader.Probes, without a kernel."""

    def __init__(self) -> None:
        self.callback: object = None
        self.lookups_fail = False

    def open_events(self, callback: object) -> None:
        self.callback = callback

    def connection(self, tgid: int, fd: int) -> None:
        if self.lookups_fail:
            raise RuntimeError("a bug in the kernel lookup")
        return None

    def forget_connection(self, tgid: int, fd: int, conn_id: int) -> None:
        pass

    def tls_version(self, conn_id: int) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {}


def test_tracer_dispatches_a_batch_by_kind(caplog: pytest.LogCaptureFixture) -> None:
    probes = _FakeProbes()
    the_tracer = tracer.Tracer(probes, tracer.TracerSettings(), [], lambda _conn: {})  # type: ignore[arg-type]
    assert probes.callback == the_tracer._on_events
    hdr = bpf_events.EventHeader(kind=bpf_events.EventKind.OPEN, role=bpf_events.Role.SERVER, tgid=10, tid=10,
                                 fd=3, conn_id=1)
    opened = bpf_records.open_event(hdr, PEER6)
    hdr.kind, hdr.direction = bpf_events.EventKind.DATA, bpf_events.Direction.INGRESS
    request = bpf_records.data_event(hdr, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    hdr.kind = bpf_events.EventKind.CONTINUATION
    more = bpf_records.data_event(hdr, b"")
    hdr.kind = bpf_events.EventKind.CLOSE
    closed = bpf_records.header_event(hdr)
    hdr.kind, hdr.conn_id, hdr.fd = bpf_events.EventKind.EXIT, 0, -1
    exited = bpf_records.header_event(hdr)
    short = _ringbuf.decode(bytes([bpf_events.EventKind.OPEN]) + bytes(20))
    the_tracer._on_events([opened, request, more, short, closed, exited])
    stats = the_tracer.stats()
    assert (stats["events"], stats["malformed_events"], stats["event_errors"]) == (6, 1, 0)
    assert (stats["conn_opened"], stats["conn_closed"], stats["conn_continuations_dropped"]) == (1, 1, 0)
    # A record whose handling raises costs that record only, and says so.
    probes.lookups_fail = True
    the_tracer._on_events([opened, exited, closed, opened])
    stats = the_tracer.stats()
    assert (stats["event_errors"], stats["conn_opened"], stats["conn_closed"]) == (1, 3, 2)
    assert "handling a kind 5 event failed (1 so far)" in caplog.text
