"""What only the C HTTP/1 parser (podspan_agent._http1) can get wrong: references and memory over many
messages, reads past a buffer (messages placed right before a PROT_NONE page), huge and hostile input
(10 MB heads, NUL bytes, absurd lengths and chunk sizes, lying message sizes), re-entrant callbacks and
reference cycles. Its parsing behaviour is tests/unit/protocols/test_http1*.py."""

from __future__ import annotations

import gc
import pathlib
import subprocess
import sys
import sysconfig
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podspan_agent.protocols import base, http1
from tests.support import guarded_memory

SOURCE = pathlib.Path(http1.__file__).parents[1] / "_http1.c"
DEFAULT = base.CaptureSettings()
EVERYTHING = base.CaptureSettings(headers=True, query=True, route_patterns=("/users/{id}",))
GUARDED = guarded_memory.GuardedPage()


def feed(parser: http1.Parser, from_client: bool, data: bytes, size: int | None = None) -> list[base.Record]:
    return parser.feed(base.Message(from_client, data, len(data) if size is None else size, 1, 2))


def exchange(request: bytes, response: bytes, capture: base.CaptureSettings = DEFAULT) -> list[base.Record]:
    parser = http1.Parser(capture)
    records = feed(parser, True, request) + feed(parser, False, response) + parser.flush()
    assert parser.counters["parser_errors"] == 0
    return records


def test_the_source_compiles_without_warnings(tmp_path: pathlib.Path) -> None:
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-fPIC", "-c",
                    f"-I{sysconfig.get_paths()['include']}", "-o", str(tmp_path / "_http1.o"), str(SOURCE)],
                   check=True, capture_output=True)


# -- references and memory ------------------------------------------------------------------------------

# One round touches every path that makes Python objects: context headers, queries, header capture, bodies,
# chunked framing, interim responses, gaps, unseen responses, flushes, tunnels and the error path.
ROUND = [
    (True, b"GET /users/1?token=abc&page=2 HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: t\r\n"
           b"traceparent: 00-aa-bb-01\r\nb3: x\r\nX-B3-Sampled: 1\r\nCookie: c\r\nCookie: d\r\n\r\n"),
    (False, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: s\r\n\r\nok"),
    (True, b"POST http://u:p@shop:81/orders HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcBREW /pot HTTP/1.0\r\n\r\n"),
    (False, b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n"
            b"HTTP/1.0 503 Unavailable\r\n\r\n"),
    (True, b"GET /a/very/long/path/that/was/cut"),  # cut inside the path, sent size is larger below
    (False, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    (True, b"GET /n HTTP/1.1\r\n\r\n" * (http1.MAX_PENDING + 3)),
    (False, b"HTTP/1.1 204 No Content\r\n\r\n" * 10),
]


def run_round(capture: base.CaptureSettings) -> int:
    parser = http1.Parser(capture)
    records = 0
    for index, (from_client, data) in enumerate(ROUND):
        size = len(data) + (50 if index in (4, 5) else 0)
        records += len(parser.feed(base.Message(from_client, data, size, index, index + 1)))
    records += len(parser.flush())
    tunnel = http1.Parser(capture)
    feed(tunnel, True, b"CONNECT db:5432 HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
    records += len(feed(tunnel, False, b"HTTP/1.1 200 Connection established\r\n\r\n"))
    records += len(feed(tunnel, True, b"GET / HTTP/1.1\r\n\r\n"))
    feed(parser, True, "not bytes")  # type: ignore[arg-type]  # the error path: counted, not raised
    assert parser.counters["parser_errors"] == 1
    return records


def test_two_hundred_thousand_messages_keep_memory_and_references_bounded() -> None:
    watched = [base.Record, *http1.KNOWN_METHODS, "http.request.method", "url.path", "http", "1.1", "no response"]
    for capture in (DEFAULT, EVERYTHING):  # warm caches (route templates, interned text) before measuring
        run_round(capture)
    gc.collect()
    references = [sys.getrefcount(item) for item in watched]
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        messages = records = 0
        while messages < 200_000:
            for capture in (DEFAULT, EVERYTHING):
                records += run_round(capture)
                messages += len(ROUND) + 4
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert records > 20_000
    assert grown < 256 * 1024, f"{grown} bytes still allocated after {messages} messages"
    assert [sys.getrefcount(item) for item in watched] == references


def test_a_parser_in_a_reference_cycle_is_collected() -> None:
    class Patterns(tuple[str, ...]):
        parser: http1.Parser | None = None

    def parsers() -> int:
        return sum(type(item) is http1.Parser for item in gc.get_objects())

    before = parsers()
    patterns = Patterns(("/users/{id}",))
    parser = http1.Parser(base.CaptureSettings(route_patterns=patterns))
    patterns.parser = parser  # parser -> patterns -> parser
    feed(parser, True, b"OPTIONS * HTTP/1.1\r\n\r\n")  # no route template: its cache would keep `patterns`
    assert parser.pending == 1
    del parser, patterns
    gc.collect()
    assert parsers() == before


def test_a_callback_feeding_the_same_parser_is_refused_and_counted() -> None:
    inner: list[BaseException] = []

    class Patterns(tuple[str, ...]):
        def __hash__(self) -> int:  # routes.template (an lru_cache) hashes its arguments
            try:
                feed(parser, True, b"GET /inner HTTP/1.1\r\n\r\n")
            except RuntimeError as error:
                inner.append(error)
            return 1

    parser = http1.Parser(base.CaptureSettings(route_patterns=Patterns(())))
    feed(parser, True, b"GET /outer HTTP/1.1\r\n\r\n")
    assert len(inner) == 1 and "re-entered" in str(inner[0])
    assert parser.pending == 1 and parser.counters["parser_errors"] == 0


# -- reads stay inside the buffer -------------------------------------------------------------------------

GUARDED_MESSAGES = [
    (True, b"GET /users/1?q=1 HTTP/1.1\r\nHost: h:1\r\nContent-Length: 5\r\ntraceparent: t\r\n\r\nhello"),
    (True, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: x\r\n\r\n"),
    (True, b"GET http://[::1]:80/x HTTP/1.0\n\n"),
    (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n"),
    (False, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"),
    (False, b"HTTP/1.0 101 Switching Protocols\nUpgrade: x\n\n"),
]


@pytest.mark.parametrize("capture", [DEFAULT, EVERYTHING])
@pytest.mark.parametrize(("from_client", "data"), GUARDED_MESSAGES)
def test_every_prefix_of_a_message_is_read_within_its_bytes(capture: base.CaptureSettings, from_client: bool,
                                                             data: bytes) -> None:
    for cut in range(len(data) + 1):
        parser = http1.Parser(capture)
        if not from_client:
            feed(parser, True, b"GET / HTTP/1.1\r\n\r\n")
        with GUARDED.view(data[:cut]) as view:
            parser.feed(base.Message(from_client, view, len(data), 1, 2))  # type: ignore[arg-type]
        assert parser.counters["parser_errors"] == 0
        # The body of a cut message is skipped in the next run, which is itself read up to its last byte.
        with GUARDED.view(data[cut:]) as view:
            parser.feed(base.Message(from_client, view, len(data) - cut, 3, 4))  # type: ignore[arg-type]
        assert parser.counters["parser_errors"] == 0


# -- huge and hostile input -------------------------------------------------------------------------------

TEN_MB = 10 * 1024 * 1024


def test_ten_megabytes_of_header_lines() -> None:
    lines = b"X-Filler: " + b"a" * 90 + b"\r\n"
    block = lines * (TEN_MB // len(lines))
    (record,) = exchange(b"GET /big HTTP/1.1\r\n" + block + b"Host: late:9\r\nContent-Length: 0\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\n" + block + b"Content-Length: 0\r\n\r\n")
    assert record.attributes["server.address"] == "late"
    assert record.attributes["http.response.status_code"] == 200
    (record,) = exchange(b"GET /big HTTP/1.1\r\n" + block + b"\r\n", b"HTTP/1.1 200 OK\r\n\r\n", EVERYTHING)
    assert record.attributes["http.request.header.x-filler"] == ",".join(["a" * 90] * (TEN_MB // len(lines)))


def test_ten_megabyte_values_and_lines_without_an_end() -> None:
    agent = b"x" * TEN_MB
    (record,) = exchange(b"GET / HTTP/1.1\r\nUser-Agent: " + agent + b"\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n")
    assert record.attributes["user_agent.original"] == agent.decode()
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"GET /" + b"a" * TEN_MB, size=TEN_MB + 100)  # a path the capture cut
    (record,) = parser.flush()
    assert record.attributes["http.route"] == "/..."
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"\r" * TEN_MB)
    feed(parser, False, b"HTTP/1.1 200 OK\r\n" + b"\n" * TEN_MB)
    assert parser.counters["client_runs_unparsed"] == 1 and parser.counters["responses_without_request"] == 1


def test_nul_bytes_are_text_like_any_other() -> None:
    (record,) = exchange(b"GET /a\x00b?k=\x00 HTTP/1.1\r\nHost: h\x00st:80\r\nUser-Agent: \x00\r\nX\x00: \x00\r\n\r\n",
                         b"HTTP/1.1 200 \x00\r\nContent-Length: 1\r\n\r\n\x00", EVERYTHING)
    assert record.attributes["url.path"] == "/a\x00b"
    assert record.attributes["url.query"] == "k=\x00"
    assert record.attributes["server.address"] == "h\x00st"
    assert record.attributes["user_agent.original"] == "\x00"
    assert record.attributes["http.request.header.x\x00"] == "\x00"
    assert record.attributes["http.response.body.size"] == 1
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"G\x00T / HTTP/1.1\r\n\r\n")  # not a token: not a request line
    feed(parser, True, b"\x00" * 1000)
    assert parser.counters["client_runs_unparsed"] == 2 and parser.pending == 0


@pytest.mark.parametrize("end", [b"\r\n\r\n", b"\n\n"])
def test_a_hundred_thousand_pipelined_requests(end: bytes) -> None:
    count = 100_000
    parser = http1.Parser(DEFAULT)
    feed(parser, True, (b"GET /p HTTP/1.1" + end) * count)
    assert parser.pending == http1.MAX_PENDING + 1
    assert parser.counters["requests_dropped_queue_full"] == count - http1.MAX_PENDING
    records = feed(parser, False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * count)
    assert len(records) == http1.MAX_PENDING
    assert parser.counters["responses_to_unparsed_requests"] == count - http1.MAX_PENDING
    assert parser.pending == 0


@pytest.mark.parametrize("length", [b"99999999999999999999", b"9223372036854775808", b"18446744073709551617",
                                    b"-1", b"+5", b"0x10", b"1e3", b"\xb2", b""])
def test_content_lengths_that_do_not_fit_or_are_not_numbers_leave_the_body_unknown(length: bytes) -> None:
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"POST / HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\nbody")
    feed(parser, True, b"more body")  # unknown end: skipped until a request line
    feed(parser, True, b"GET /next HTTP/1.1\r\n\r\n")
    records = feed(parser, False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2)
    assert [r.attributes["url.path"] for r in records] == ["/", "/next"]
    assert "http.request.body.size" not in records[0].attributes


def test_the_longest_content_length_is_skipped_across_runs() -> None:
    length = 10**18 - 1  # 18 digits: the longest accepted
    head = b"PUT /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % length
    parser = http1.Parser(DEFAULT)
    feed(parser, True, head)
    for _ in range(3):
        feed(parser, True, b"x" * 1000, size=10**17)
    (record,) = feed(parser, False, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert record.attributes["http.request.body.size"] == length
    assert record.request_size == len(head) + 3 * 10**17


def test_request_sizes_saturate_instead_of_overflowing() -> None:
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")  # its end is unknowable
    for _ in range(3):
        feed(parser, True, b"x" * 1000, size=2**62)  # the body goes on for exabytes
    (record,) = feed(parser, False, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert record.request_size == 2**62


@pytest.mark.parametrize("size", [b"ffffffffffffffff", b"fffffffffffffff", b"7fffffffffffffff", b"-1", b"0x5",
                                  b"1 2", b"", b";", b"5;" + b"e" * 10000])
def test_absurd_chunk_sizes_leave_the_body_unknown(size: bytes) -> None:
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"GET /a HTTP/1.1\r\n\r\n")
    (record,) = feed(parser, False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n")
    assert "http.response.body.size" not in record.attributes
    feed(parser, False, b"hello" * 100)  # skipped: the body's end was unknown
    feed(parser, True, b"GET /b HTTP/1.1\r\n\r\n")
    (record,) = feed(parser, False, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert record.attributes["url.path"] == "/b" and parser.counters["parser_errors"] == 0


@pytest.mark.parametrize("size", [-1, 2**62 + 1, 2**64, -(2**70)])
def test_message_sizes_out_of_range_are_parser_errors(size: int) -> None:
    parser = http1.Parser(DEFAULT)
    assert feed(parser, True, b"GET / HTTP/1.1\r\n\r\n", size=size) == []
    assert parser.counters["parser_errors"] == 1 and parser.pending == 0


def test_a_message_smaller_than_its_captured_bytes() -> None:
    parser = http1.Parser(DEFAULT)
    feed(parser, True, b"GET /a HTTP/1.1\r\n\r\n", size=0)
    (record,) = feed(parser, False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", size=3)
    assert (record.request_size, record.response_size) == (0, 3)


# -- any bytes at all -------------------------------------------------------------------------------------

# Pieces of HTTP/1 to reach the parser's deeper paths from random bytes.
FRAGMENTS = st.sampled_from([
    b"\r\n", b"\n", b"\r\n\r\n", b"\n\n", b" ", b":", b"HTTP/1.1 ", b"HTTP/1.0 200 ", b"GET ", b"CONNECT ", b"HEAD ",
    b"/", b"?", b"@", b"[", b"]", b"://", b"*", b"Host: ", b"user-agent:", b"Content-Length: ", b"content-length:5",
    b"Transfer-Encoding: chunked", b"traceparent: x", b"b3: 1", b"X-B3-Sampled: 1", b"0\r\n", b"5\r\nhello\r\n",
    b"101 ", b"204 ", b"304 ", b"103 ", b"503 ", b" HTTP/1.1\r\n", b"ffffffffffffffff", b"99999999999999999999",
    b"\x00", b"\xa0", b"\x85", b"\xc0",
])
random_bytes = st.one_of(st.binary(max_size=400),
                         st.lists(st.one_of(FRAGMENTS, st.binary(max_size=6)), max_size=40).map(b"".join))


# A run's size: its captured length give or take a few bytes (a lying size), or anything up to 2**62.
@st.composite
def messages(draw: st.DrawFn) -> tuple[bool, bytes, int]:
    data = draw(random_bytes)
    size = draw(st.one_of(st.integers(-3, 3).map(lambda extra: max(0, len(data) + extra)), st.integers(0, 2**62)))
    return draw(st.booleans()), data, size


@settings(max_examples=500, deadline=None)
@given(st.lists(messages(), max_size=20), st.sampled_from([DEFAULT, EVERYTHING]))
def test_random_messages_never_raise(runs: list[tuple[bool, bytes, int]], capture: base.CaptureSettings) -> None:
    parser = http1.Parser(capture)
    for clock, (from_client, data, size) in enumerate(runs):
        records = parser.feed(base.Message(from_client, data, size, clock, clock + 1))
        assert parser.pending <= http1.MAX_PENDING + 1
        assert all(isinstance(record, base.Record) for record in records)
    assert all(isinstance(record, base.Record) for record in parser.flush())
    assert parser.counters["parser_errors"] == 0
