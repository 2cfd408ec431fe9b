"""Userspace cost per span of the agent's event path, by stage, without the kernel.

Feeds the tracer's pipeline (_conntable.Table -> protocol parser -> spans.builder ->
spans.correlation -> OTLP encoding) with the event stream a keep-alive HTTP/1.1 server produces under
`wrk -c16` (OPEN, then alternating request/response DATA events, each carrying the summary of the run
it ends), in the ring-buffer consumer's batches of 256 records, and times cumulative stages in turn on the
same events:
  table   : events -> connections -> HTTP/1 parser -> exchanges (discarded)
  build   : + SpanRecord building
  correl. : + correlation (trace ids, parents, hold and release)
  encode  : + OTLP protobuf encoding of the released spans in batches of 512 (the exporter's work
            before the transport)
Process CPU time, one thread, best of --repeat runs, the garbage collector tuned as the agent tunes it.
Nothing is asserted.
Run: `.venv/bin/python bench/pipeline_bench.py [--requests 200000] [--connections 16] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from podspan_agent import _conntable, _ringbuf, bpf_events, connections, tracer
from podspan_agent.export import otlp
from podspan_agent.protocols import base, registry
from podspan_agent.spans import builder, correlation, model

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\n"
            b"Content-Type: text/html\r\nContent-Length: 200\r\nLast-Modified: Wed, 02 Dec 2026 11:00:00 GMT\r\n"
            b"Connection: keep-alive\r\nETag: \"6553c8f8-c8\"\r\nAccept-Ranges: bytes\r\n\r\n")
TGID, TID, CGROUP = 4242, 4242, 77
PEER = bytes([2, 0, 0x9C, 0x40, 127, 0, 0, 1]) + bytes(8)  # sockaddr_in 127.0.0.1:40000


def _header(kind: int, direction: int, conn_id: int, ts_ns: int, prev: bpf_events.Run) -> bpf_events.EventHeader:
    return bpf_events.EventHeader(kind=kind, role=bpf_events.Role.SERVER, direction=direction, tgid=TGID, tid=TID,
                                  fd=10 + conn_id, conn_id=conn_id, cgroup_id=CGROUP, ts_ns=ts_ns, prev=prev)


_BATCH = 256  # records per ring-buffer drain (loader._DRAIN_BATCH)


def events(requests: int, conns: int) -> list[_ringbuf.Event]:
    """DATA events of `requests` exchanges spread round-robin over `conns` server connections, as the
    ring-buffer consumer delivers them (kernel-layout bytes decoded by _ringbuf)."""
    out: list[_ringbuf.Event] = []
    last: dict[int, bpf_events.Run] = {}
    now = 1_000_000_000
    for i in range(requests):
        conn_id = 1 + i % conns
        for direction, data in ((bpf_events.Direction.INGRESS, REQUEST), (bpf_events.Direction.EGRESS, RESPONSE)):
            now += 5_000
            hdr = _header(bpf_events.EventKind.DATA, direction, conn_id, now, last.get(conn_id, bpf_events.Run()))
            record = _ringbuf.decode(bytes(bpf_events.DataEventFixed(hdr, len(data), len(data))) + data)
            assert isinstance(record, _ringbuf.Event)
            out.append(record)
            size = len(data) + (200 if direction == bpf_events.Direction.EGRESS else 0)
            last[conn_id] = bpf_events.Run(start_ns=now, end_ns=now + 2_000, bytes=size, chunks=1, direction=direction)
    return out


def opens(conns: int) -> list[_ringbuf.OpenEvent]:
    out = []
    for c in range(1, conns + 1):
        event = bpf_events.OpenEvent(hdr=_header(bpf_events.EventKind.OPEN, 0, c, 0, bpf_events.Run()), listen_fd=3,
                                     addr_len=len(PEER), listen_tgid=TGID)
        event.peer[: len(PEER)] = PEER
        record = _ringbuf.decode(bytes(event))
        assert isinstance(record, _ringbuf.OpenEvent)
        out.append(record)
    return out


class _Encoder:
    """The exporter's encoding step: released spans in batches, encoded as one OTLP request each."""

    def __init__(self) -> None:
        self.batch: list[model.SpanRecord] = []
        self.bytes = 0

    def add(self, span: model.SpanRecord) -> None:
        self.batch.append(span)
        if len(self.batch) >= 512:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.bytes += len(otlp.encode_request(self.batch, {"host.name": "bench"})[0])
            self.batch.clear()


def run_stage(stage: str, stream: list[_ringbuf.Event], open_events: list[_ringbuf.OpenEvent]
              ) -> tuple[float, int]:
    """CPU seconds and spans produced for the pipeline up to `stage`."""
    resource: dict[str, base.AttributeValue] = {"service.name": "nginx", "process.pid": TGID}
    span_builder = builder.SpanBuilder(lambda _conn: resource, 0)
    encoder = _Encoder()
    produced = 0

    def release(span: model.SpanRecord) -> None:
        nonlocal produced
        produced += 1
        if stage == "encode":
            encoder.add(span)

    correlator = correlation.Correlator(release, set, hold_ns=0)
    on_exchange: Callable[[connections.Exchange], None]
    if stage == "table":
        def on_exchange(_exchange: connections.Exchange) -> None:
            nonlocal produced
            produced += 1
    elif stage == "build":
        def on_exchange(exchange: connections.Exchange) -> None:
            nonlocal produced
            span_builder.build(exchange)
            produced += 1
    else:
        def on_exchange(exchange: connections.Exchange) -> None:
            correlator.add(exchange, span_builder.build(exchange), 0)

    table = _conntable.Table(registry.detector(None, base.CaptureSettings()), lambda _tgid, _fd, _conn_id: None,
                             lambda _tgid, _fd, _conn_id: None, lambda _conn_id: None)
    table.feed(list(open_events))
    batches = [stream[i:i + _BATCH] for i in range(0, len(stream), _BATCH)]
    started = time.process_time()
    for count, batch in enumerate(batches, start=1):
        table.feed(batch)
        for exchange in table.take_exchanges():  # as the tracer: exchanges taken after each batch
            on_exchange(exchange)
        if count % (4096 // _BATCH) == 0 and stage in ("correlate", "encode"):
            correlator.tick(1)
    correlator.tick(1, flush=True)
    encoder.flush()
    return time.process_time() - started, produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    stream = events(args.requests, args.connections)
    tracer.tune_collector()  # as Tracer.run() does
    print(f"{args.requests} HTTP/1.1 exchanges on {args.connections} server connections, "
          f"{len(stream)} DATA events; best of {args.repeat}")
    print("| stage (cumulative) | CPU s | spans | µs per span | spans per CPU-s | stage's own µs/span |")
    print("|---|---|---|---|---|---|")
    previous = 0.0
    for stage in ("table", "build", "correlate", "encode"):
        best = min((run_stage(stage, stream, opens(args.connections)) for _ in range(args.repeat)),
                   key=lambda result: result[0])
        seconds, spans = best
        per_span = 1e6 * seconds / max(1, spans)
        print(f"| {stage} | {seconds:.2f} | {spans} | {per_span:.2f} | {spans / seconds:.0f} | "
              f"{per_span - previous:.2f} |")
        previous = per_span
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
