"""Property tests: the HTTP/1 parser never raises, stays bounded and emits well-formed records."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podspan_agent.protocols import base, http1
from tests.unit.protocols.fixtures import capture_http1

FIXTURE_RUNS = [run for name in capture_http1.names() for run in capture_http1.load(name)]
SETTINGS = [base.CaptureSettings(), base.CaptureSettings(headers=True, query=False),
            base.CaptureSettings(route_patterns=("/users/{id}",))]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bool, bytes]:
    """A real run with a few bytes replaced, inserted or deleted."""
    from_client, data = draw(st.sampled_from(FIXTURE_RUNS))
    buffer = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(buffer)))
        action = draw(st.sampled_from(("replace", "insert", "delete")))
        byte = draw(st.sampled_from((b"\r", b"\n", b" ", b":", b"0", b"9", b"\x00", b"\xff", b"H", b"G")))
        if action == "insert":
            buffer[at:at] = byte
        elif buffer:
            at = min(at, len(buffer) - 1)
            buffer[at:at + 1] = b"" if action == "delete" else byte
    return draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else from_client, bytes(buffer)


random_run = st.tuples(st.booleans(), st.binary(max_size=300))
any_run = st.one_of(st.sampled_from(FIXTURE_RUNS), mutated(), random_run)


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    """Runs joined and re-split at random points, as capture could see them."""
    stream = b"".join(data for _, data in draw(st.lists(any_run, max_size=12)))
    runs = []
    while stream:
        cut = draw(st.integers(1, max(1, len(stream))))
        runs.append((draw(st.booleans()), stream[:cut]))
        stream = stream[cut:]
    return runs


def check(runs: list[tuple[bool, bytes]], capture: int, capture_settings: base.CaptureSettings) -> None:
    parser = http1.Parser(capture_settings)
    records = []
    clock = 0
    for from_client, data in runs:
        clock += 10
        records += parser.feed(base.Message(from_client, data[:capture], len(data), clock, clock + 3))
        assert parser.pending <= http1.MAX_PENDING + 1
    records += parser.flush()
    assert parser.pending == 0
    assert parser.counters["parser_errors"] == 0  # the safety net in feed() must never be needed
    for record in records:
        assert record.protocol == "http"
        assert record.start_ns <= record.end_ns
        method = record.attributes["http.request.method"]
        assert method in http1.KNOWN_METHODS or method == "_OTHER"
        status = record.attributes.get("http.response.status_code")
        assert status is None or (isinstance(status, int) and 100 <= status <= 999)
        assert all(isinstance(value, str | int | float | bool) for value in record.attributes.values())
        assert record.request_size >= 0 and record.response_size >= 0


captures = st.sampled_from((1, 7, 32, 64, 128, 512))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_run, max_size=16), captures, st.sampled_from(SETTINGS))
def test_runs_never_break_the_parser(runs: list[tuple[bool, bytes]], capture: int,
                                     capture_settings: base.CaptureSettings) -> None:
    check(runs, capture, capture_settings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(), captures, st.sampled_from(SETTINGS))
def test_resplit_sessions_never_break_the_parser(runs: list[tuple[bool, bytes]], capture: int,
                                                 capture_settings: base.CaptureSettings) -> None:
    check(runs, capture, capture_settings)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_detect_never_raises(data: bytes) -> None:
    assert http1.detect(data) in (True, False)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3 * http1.MAX_PENDING))
def test_many_pipelined_requests_stay_bounded(count: int) -> None:
    request = b"GET /x HTTP/1.1\r\n\r\n"
    check([(True, request * count)] * 3, 1 << 20, base.CaptureSettings())
