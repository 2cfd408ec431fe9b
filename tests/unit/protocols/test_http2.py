"""HTTP/2 parser against real curl -> nginx h2c captures and hand-built frame sequences."""

from __future__ import annotations

import struct

from podspan_agent.protocols import base, http2
from tests.unit.protocols.fixtures import capture_db


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def literal(name: str, value: str) -> bytes:
    """HPACK literal without indexing, new name, no Huffman (names and values < 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def block(*headers: tuple[str, str]) -> bytes:
    return b"".join(literal(name, value) for name, value in headers)


def message(from_client: bool, data: bytes, start: int, size: int | None = None) -> base.Message:
    return base.Message(from_client, data, len(data) if size is None else size, start, start + 1)


def feed_all(parser: http2.Parser, messages: list[base.Message]) -> list[base.Record]:
    return [record for msg in messages for record in parser.feed(msg)]


def test_curl_nginx_requests() -> None:
    recs = []
    for connection in capture_db.load("http2", "curl_nginx", 4096):
        parser = http2.Parser()
        recs += feed_all(parser, connection) + parser.flush()
        assert parser.synchronised and parser.state_size == 0 and parser.dropped == 0
    assert [(r.name, r.attributes["url.path"], r.attributes["http.response.status_code"]) for r in recs] == [
        ("GET", "/index.html", 200),
        ("GET", "/fail", 503),
        ("POST", "/index.html", 405),
    ]
    ok, fail, post = recs
    assert ok.protocol == "http2" and ok.attributes["network.protocol.version"] == "2"
    assert ok.context_headers == {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert ok.error is None and post.error is None and fail.error == "503"
    assert post.request_size == len("a=1&b=2")
    assert all(r.start_ns <= r.end_ns for r in recs)


def test_detect() -> None:
    connection = capture_db.load("http2", "curl_nginx", 4096)[0]
    assert http2.detect(connection[0].data)
    assert http2.detect(connection[1].data, from_client=False)  # server SETTINGS, HEADERS, DATA
    assert http2.detect(frame(http2.HEADERS, 0x5, 1, block((":method", "GET"))))
    assert not http2.detect(frame(http2.HEADERS, 0x5, 2, b"\x82"))  # clients never open even streams
    assert not http2.detect(frame(http2.DATA, 0x1, 1, b"x"))  # one DATA frame alone proves little
    assert not http2.detect(frame(http2.PING, 0, 0, b"1234567"))  # PING is 8 bytes
    assert not http2.detect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_multiplexed_streams_trailers_and_timing() -> None:
    parser = http2.Parser()
    request = block((":method", "POST"), (":path", "/a"), (":scheme", "http"), ("b3", "abc-def-1"))
    request_b = block((":method", "GET"), (":path", "/b?q=secret"))
    msgs = [
        message(True, http2.PREFACE + frame(http2.SETTINGS, 0, 0, b""), 10),
        message(True, frame(http2.HEADERS, 0x4, 1, request) + frame(http2.HEADERS, 0x5, 3, request_b), 20),
        message(False, frame(http2.HEADERS, 0x4, 3, block((":status", "200"))), 30),
        message(True, frame(http2.DATA, 0x1, 1, b"body"), 40),
        message(False, frame(http2.HEADERS, 0x4, 1, block((":status", "100"))), 50),
        message(
            False,
            frame(http2.HEADERS, 0x4, 1, block((":status", "201"))) + frame(http2.DATA, 0, 1, b"xy"),
            60,
        ),
        message(False, frame(http2.DATA, 0x1, 3, b"done"), 70),
        message(False, frame(http2.HEADERS, 0x5, 1, block(("x-trailer", "1"))), 80),
    ]
    recs = feed_all(parser, msgs)
    assert [(r.attributes["url.path"], r.start_ns, r.end_ns) for r in recs] == [
        ("/b", 20, 71),
        ("/a", 20, 81),
    ]
    second, first = recs
    assert first.attributes["http.response.status_code"] == 201
    assert first.context_headers == {"b3": "abc-def-1"}
    assert (first.request_size, first.response_size, second.response_size) == (4, 2, 4)
    assert parser.state_size == 0


def test_continuation_padding_priority_and_rst() -> None:
    parser = http2.Parser()
    headers = block((":method", "GET"), (":path", "/long"))
    padded = bytes([3]) + b"\x00\x00\x00\x01\x10" + headers[:5] + b"pad"  # PADDED | PRIORITY
    msgs = [
        message(True, http2.PREFACE, 1),
        message(
            True,
            frame(http2.HEADERS, 0x8 | 0x20, 5, padded) + frame(http2.CONTINUATION, 0x4, 5, headers[5:]),
            2,
        ),
        message(False, frame(http2.RST_STREAM, 0, 5, struct.pack(">I", 8)), 3),
    ]
    (rec,) = feed_all(parser, msgs)
    assert rec.attributes["url.path"] == "/long" and rec.error == "RST_STREAM CANCEL"


def test_frame_split_across_runs_is_reassembled() -> None:
    parser = http2.Parser()
    data = frame(http2.HEADERS, 0x5, 1, block((":method", "GET"), (":path", "/split")))
    response = frame(http2.HEADERS, 0x4, 1, block((":status", "204"))) + frame(http2.DATA, 0x1, 1, b"z" * 50)
    msgs = [
        message(True, http2.PREFACE, 1),
        message(True, data[:7], 2),
        message(True, data[7:], 3),
        message(False, response[:30], 4),
        message(False, response[30:], 5),
    ]
    (rec,) = feed_all(parser, msgs)
    assert rec.attributes["url.path"] == "/split" and rec.attributes["http.response.status_code"] == 204
    assert rec.response_size == 50 and parser.synchronised


def test_truncated_run_keeps_data_end_stream_and_skips_payload() -> None:
    parser = http2.Parser()
    big = frame(http2.HEADERS, 0x4, 1, block((":status", "200"))) + frame(http2.DATA, 0x1, 1, b"x" * 5000)
    msgs = [
        message(
            True,
            http2.PREFACE + frame(http2.HEADERS, 0x5, 1, block((":method", "GET"), (":path", "/big"))),
            1,
        ),
        message(
            False, big[:100], 2, size=len(big)
        ),  # capture kept 100 bytes; the DATA header says END_STREAM
    ]
    (rec,) = feed_all(parser, msgs)
    assert rec.response_size == 5000 and rec.end_ns == 3
    assert parser.synchronised  # nothing but DATA payload was lost


def test_lost_frames_desynchronise_instead_of_inventing() -> None:
    parser = http2.Parser()
    indexed = b"\x40\x05:path\x04/one"  # literal with incremental indexing -> dynamic index 62
    first = frame(http2.HEADERS, 0x5, 1, b"\x82" + indexed)
    lost = frame(http2.HEADERS, 0x5, 3, b"\x82\x40\x05:path\x04/two")  # also indexed, but never captured
    msgs = [
        message(True, http2.PREFACE + first, 1),
        message(True, frame(http2.PING, 0, 0, b"12345678")[:9], 2, size=17 + len(lost)),
        message(True, frame(http2.HEADERS, 0x5, 5, b"\x82\xbe"), 3),  # index 62 is now "/two", unknown to us
        message(False, frame(http2.HEADERS, 0x5, 5, block((":status", "200"))), 4),
        message(False, frame(http2.HEADERS, 0x5, 1, block((":status", "200"))), 5),
    ]
    recs = feed_all(parser, msgs)
    assert [r.attributes.get("url.path") for r in recs] == [None, "/one"]
    assert not parser.synchronised and parser.lost_runs == 1


def test_joined_mid_connection_reports_only_what_it_can_resolve() -> None:
    connection = capture_db.load("grpc", "echo_session", 4096)[0]
    parser = http2.Parser()
    recs = feed_all(parser, connection[6:]) + parser.flush()  # preface and first exchange missed
    assert recs and not parser.synchronised
    for rec in recs:
        # grpcio put :path and content-type in the dynamic table on the first request, so
        # they are unknown here: the records are HTTP/2 ones without invented attributes.
        assert rec.attributes.get("url.path") in (
            None,
            "/podspan.test.v1.Echo/Unary",
            "/podspan.test.v1.Echo/ServerStream",
        )


def test_streams_are_bounded_and_drops_counted() -> None:
    parser = http2.Parser(max_streams=4)
    msgs = [message(True, http2.PREFACE, 0)] + [
        message(True, frame(http2.HEADERS, 0x5, sid, block((":method", "GET"), (":path", f"/{sid}"))), sid)
        for sid in range(1, 21, 2)
    ]
    feed_all(parser, msgs)
    assert parser.state_size == 4 and parser.dropped == 6
    flushed = parser.flush()
    assert [r.attributes["url.path"] for r in flushed] == ["/13", "/15", "/17", "/19"]
    assert all(r.error == "no response" for r in flushed) and parser.state_size == 0


def test_goaway_ends_refused_streams() -> None:
    parser = http2.Parser()
    msgs = [
        message(
            True,
            http2.PREFACE
            + frame(http2.HEADERS, 0x5, 1, block((":path", "/a")))
            + frame(http2.HEADERS, 0x5, 3, block((":path", "/b"))),
            1,
        ),
        message(False, frame(http2.GOAWAY, 0, 0, struct.pack(">II", 1, 0)), 2),
    ]
    (rec,) = feed_all(parser, msgs)
    assert rec.attributes["url.path"] == "/b" and rec.error == "GOAWAY" and parser.state_size == 1
