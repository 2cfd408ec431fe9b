"""gRPC over HTTP/2 against a real grpcio client/server capture (fixtures/grpc, capture_wire.py)."""

from __future__ import annotations

from podspan_agent.protocols import base, http2
from tests.unit.protocols.fixtures import capture_db

SERVICE = "podspan.test.v1.Echo"


def records(capture_size: int = 4096) -> tuple[list[base.Record], list[base.Record], http2.Parser]:
    (connection,) = capture_db.load("grpc", "echo_session", capture_size)
    parser = http2.Parser()
    fed = [record for msg in connection for record in parser.feed(msg)]
    return fed, parser.flush(), parser


def test_unary_streaming_and_status_codes() -> None:
    recs, flushed, parser = records()
    assert [(r.name, r.attributes.get("rpc.grpc.status_code"), r.error) for r in recs] == [
        (f"{SERVICE}/Unary", 0, None),
        (f"{SERVICE}/Unary", 0, None),
        (f"{SERVICE}/Unary", 5, "NOT_FOUND"),  # trailers-only response
        (f"{SERVICE}/ServerStream", 0, None),
        (f"{SERVICE}/ServerStream", 13, "INTERNAL"),  # status after three messages
    ]
    first = recs[0]
    assert first.protocol == "grpc"
    assert first.attributes["rpc.system"] == "grpc"
    assert (first.attributes["rpc.service"], first.attributes["rpc.method"]) == (SERVICE, "Unary")
    assert first.context_headers == {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    # gRPC length-prefixed messages: 5-byte prefix + payload.
    assert (first.request_size, first.response_size) == (5 + len(b"hello"), 5 + len(b"echo:hello"))
    assert recs[3].response_size == sum(5 + len(b"item-%d:stream" % i) for i in range(3))
    assert all(r.start_ns <= r.end_ns for r in recs + flushed)
    assert parser.dropped == 0


def test_stream_timing_follows_the_runs() -> None:
    (connection,) = capture_db.load("grpc", "echo_session", 4096)
    recs, _, _ = records()
    starts = {m.start_ns for m in connection if m.from_client}
    ends = {m.end_ns for m in connection if not m.from_client}
    assert all(r.start_ns in starts and r.end_ns in ends for r in recs)


def test_large_message_cut_by_capture_size() -> None:
    # The 100 kB unary call's response run holds HEADERS, DATA and trailers; a 4 KiB capture
    # loses the trailers, so the call is only reported at flush, without a status.
    _recs, flushed, parser = records(4096)
    (big,) = flushed
    assert big.name == f"{SERVICE}/Unary" and "rpc.grpc.status_code" not in big.attributes
    assert big.request_size == 100_005 and big.error is None
    assert not parser.synchronised  # the lost tail could have changed the server's HPACK table


def test_small_capture_still_pairs_every_call() -> None:
    recs, flushed, _ = records(64)
    assert len(recs) + len(flushed) == 6
    assert all(r.name.startswith(SERVICE) or r.protocol == "http2" for r in recs + flushed)
