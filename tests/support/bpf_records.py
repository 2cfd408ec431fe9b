"""Ring-buffer records as the tracer receives them: kernel-layout bytes built with the ctypes mirror
(podspan_agent.bpf_events), decoded by the native consumer's decoder (podspan_agent._ringbuf)."""

from __future__ import annotations

from podspan_agent import _ringbuf, bpf_events


def data_event(hdr: bpf_events.EventHeader, data: bytes, chunk_bytes: int | None = None) -> _ringbuf.Event:
    """A DATA, CONTINUATION or TLS event (its kind is `hdr.kind`) carrying `data`."""
    fixed = bpf_events.DataEventFixed(hdr=hdr, chunk_bytes=len(data) if chunk_bytes is None else chunk_bytes,
                                      captured=len(data))
    record = _ringbuf.decode(bytes(fixed) + data)
    assert isinstance(record, _ringbuf.Event), record
    return record


def header_event(hdr: bpf_events.EventHeader) -> _ringbuf.Event:
    """A CLOSE or EXIT event: the header alone."""
    record = _ringbuf.decode(bytes(hdr))
    assert isinstance(record, _ringbuf.Event), record
    return record


def open_event(hdr: bpf_events.EventHeader, peer: bytes, listen_fd: int = -1, listen_tgid: int = 0
               ) -> _ringbuf.OpenEvent:
    event = bpf_events.OpenEvent(hdr=hdr, listen_fd=listen_fd, addr_len=len(peer), listen_tgid=listen_tgid)
    event.peer[: len(peer)] = peer
    record = _ringbuf.decode(bytes(event))
    assert isinstance(record, _ringbuf.OpenEvent), record
    return record


def run(start_ns: int, end_ns: int, size: int, chunks: int, direction: int) -> _ringbuf.Run:
    """A run as the tracer hands the table the kernel's live one (`Tracer._kernel_run`)."""
    return _ringbuf.Run((start_ns, end_ns, size, chunks, direction))
