"""Correlation rules (remote context, client->server by request bytes, thread nesting, new trace) and
the bounds that keep it linear under bursts of identical requests."""

from __future__ import annotations

from podspan_agent import bpf_events, connections
from podspan_agent.protocols import base
from podspan_agent.spans import correlation, model

MS = 1_000_000
SERVER, CLIENT = model.SpanKind.SERVER, model.SpanKind.CLIENT


def exchange(kind: model.SpanKind, start_ms: float, end_ms: float, *, tgid: int = 10, tid: int = 10,
             fingerprint: int = 7, headers: dict[str, str] | None = None) -> tuple[connections.Exchange,
                                                                                    model.SpanRecord]:
    start, end = int(start_ms * MS), int(end_ms * MS)
    record = base.Record(protocol="http", name="GET /", start_ns=start, end_ns=end, context_headers=headers or {})
    role = bpf_events.Role.SERVER if kind == SERVER else bpf_events.Role.CLIENT
    conn = connections.ConnectionInfo(conn_id=1, tgid=tgid, fd=3, role=role, cgroup_id=1, peer=None, local=None,
                                      datagram=False, tls=False, tls_version=None)
    span = model.SpanRecord(trace_id=0, span_id=int(start_ms * 1000) + (1 if kind == CLIENT else 2),
                            parent_span_id=None, name="GET /", kind=kind, start_ns=start, end_ns=end,
                            attributes={}, resource={}, protocol="http")
    return connections.Exchange((record, conn, tid, fingerprint)), span


class Collect:
    def __init__(self, **options: int) -> None:
        self.released: list[model.SpanRecord] = []
        self.busy: set[tuple[int, int]] = set()  # threads serving a request, as the connection table says
        self.correlator = correlation.Correlator(self.released.append, lambda: self.busy, **options)

    def add(self, *pairs: tuple[connections.Exchange, model.SpanRecord]) -> list[model.SpanRecord]:
        for ex, span in pairs:
            self.correlator.add(ex, span, now_ns=span.end_ns)
        return [span for _, span in pairs]


def test_remote_context_client_server_and_thread_rules() -> None:
    run = Collect()
    incoming = exchange(SERVER, 0, 10, tgid=1, tid=1, headers={
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    call = exchange(CLIENT, 2, 8, tgid=1, tid=1, fingerprint=99)
    served = exchange(SERVER, 3, 7, tgid=2, tid=2, fingerprint=99)
    alone = exchange(SERVER, 20, 21, tgid=3, tid=3, fingerprint=5)
    front, client, back, other = run.add(incoming, call, served, alone)
    run.correlator.tick(0, flush=True)
    assert front.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736 and front.parent_is_remote
    assert (client.trace_id, client.parent_span_id) == (front.trace_id, front.span_id)  # thread rule
    assert (back.trace_id, back.parent_span_id) == (front.trace_id, client.span_id)  # request-bytes rule
    assert other.trace_id not in (0, front.trace_id) and other.parent_span_id is None
    assert len(run.released) == 4


def test_identical_requests_pair_with_the_call_that_contains_them() -> None:
    run = Collect()
    # A client repeating one request: every server span has the same fingerprint as every call.
    pairs = []
    for i in range(2000):
        base_ms = i * 2.0
        pairs += [exchange(CLIENT, base_ms, base_ms + 1.5, tgid=1, tid=1),
                  exchange(SERVER, base_ms + 0.2, base_ms + 1.2, tgid=2, tid=2)]
    spans = run.add(*pairs)
    run.correlator.tick(0, flush=True)
    for client, server in zip(spans[::2], spans[1::2], strict=True):
        assert server.parent_span_id == client.span_id and server.trace_id == client.trace_id


def test_back_to_back_identical_requests_within_the_clock_slack_find_their_own_call() -> None:
    run = Collect()
    pairs = []
    for i in range(50):  # 0.7 ms apart, closer than the 1 ms containment slack; the server's read returns
        base_ms = i * 0.7  # 5 µs before the client's write (different CPUs)
        pairs += [exchange(CLIENT, base_ms, base_ms + 0.3, tgid=1, tid=1),
                  exchange(SERVER, base_ms - 0.005, base_ms + 0.25, tgid=2, tid=2)]
    spans = run.add(*pairs)
    run.correlator.tick(0, flush=True)
    for client, server in zip(spans[::2], spans[1::2], strict=True):
        assert server.parent_span_id == client.span_id


def test_memory_is_bounded_by_count_as_well_as_time() -> None:
    run = Collect(hold_ns=0, max_entries=100, max_recent=50)
    for i in range(1000):
        run.add(exchange(SERVER, i, i + 0.5, tgid=2, tid=2, fingerprint=i))
        run.correlator.tick(int((i + 0.5) * MS))
    assert len(run.released) == 1000
    assert (run.correlator.stats.held, run.correlator.stats.recent) == (0, 50)


def test_the_callers_sampling_decision_reaches_the_whole_trace() -> None:
    run = Collect()
    incoming = exchange(SERVER, 0, 10, tgid=1, tid=1, headers={
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"})
    call = exchange(CLIENT, 2, 8, tgid=1, tid=1, fingerprint=99)
    served = exchange(SERVER, 3, 7, tgid=2, tid=2, fingerprint=99)
    alone = exchange(SERVER, 20, 21, tgid=3, tid=3, fingerprint=5)
    front, client, back, other = run.add(incoming, call, served, alone)
    run.correlator.tick(0, flush=True)
    assert (front.sampled, client.sampled, back.sampled) == (False, False, False)
    assert other.sampled is None  # a new trace: the profile's ratio decides


def test_a_client_span_waiting_for_its_busy_thread_does_not_hold_back_later_spans() -> None:
    run = Collect(hold_ns=100 * MS)
    run.busy = {(1, 1)}  # thread 1/1 received a request and is still answering it
    call, = run.add(exchange(CLIENT, 0, 5, tgid=1, tid=1))
    later = run.add(*(exchange(SERVER, 10 + i, 11 + i, tgid=2, tid=2, fingerprint=i + 100) for i in range(3)))
    run.correlator.tick(200 * MS)
    assert run.released == later  # released at their own deadline, not after the waiting call
    assert run.correlator.stats.held == 1
    served, = run.add(exchange(SERVER, -1, 20, tgid=1, tid=1, fingerprint=55))
    run.busy = set()  # the thread answered: its server span arrived
    run.correlator.tick(400 * MS)
    assert run.released[3:] == [call, served]
    assert (call.trace_id, call.parent_span_id) == (served.trace_id, served.span_id)


def test_a_client_span_waits_for_a_busy_thread_at_most_ten_seconds() -> None:
    run = Collect(hold_ns=100 * MS)
    run.busy = {(1, 1)}
    call, = run.add(exchange(CLIENT, 0, 5, tgid=1, tid=1))
    run.correlator.tick(9_000 * MS)
    assert run.released == []
    run.correlator.tick(10_006 * MS)
    assert run.released == [call] and call.parent_span_id is None and call.trace_id
