"""Correlation: give each span its trace and parent, then release it to the exporters.

Rules, first match wins:
1. a server span whose request carried W3C/B3 context adopts it (remote parent);
2. a server span whose request bytes match a client span this agent saw (both
   ends of one connection) becomes that client span's child;
3. a client span sent by a thread while it served a request becomes that server
   span's child;
4. anything else starts a new trace.
Spans are held briefly so parents that finish later (a server span ends after
the client calls it made) can still be found; each is released at its own deadline: a
client span whose thread is still serving a request waits aside (up to 10 s) without
holding back the spans that arrived after it. Lookups scan an index bucket from
its newest entry and stop at the first one that ended before the span began, so
a burst of identical requests costs what overlaps it, not what the bucket holds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random
from collections.abc import Callable
from typing import TypeVar

from podspan_agent import connections
from podspan_agent.spans import model, propagation

# A client span whose thread is still serving a request may wait this long for its parent.
_MAX_HOLD_NS = 10_000_000_000
# Released spans stay findable as parents for this long.
_RECENT_NS = 30_000_000_000
# Tolerance for clock order between the two ends of one request (same host, same clock).
_SLACK_NS = 1_000_000
# How late a span may arrive after spans that ended after it: a connection's last exchange waits for the
# tracer's idle flush (200 ms) before it is added.
_REORDER_NS = 250_000_000

K = TypeVar("K")
# Plain names on the per-span path: an Enum member looked up on its class costs ~150 ns in 3.11.
_CLIENT, _SERVER = model.SpanKind.CLIENT, model.SpanKind.SERVER


@dataclasses.dataclass(slots=True, eq=False)  # identity: index buckets remove the very entry
class _Entry:
    span: model.SpanRecord
    tgid: int
    tid: int
    fingerprint: int
    remote: propagation.RemoteContext | None
    arrived_ns: int
    resolving: bool = False
    released: bool = False


_EMPTY: collections.deque[_Entry] = collections.deque()


@dataclasses.dataclass(slots=True)
class CorrelationStats:
    held: int = 0
    recent: int = 0  # released spans still findable as parents
    released: int = 0
    released_early: int = 0  # the hold buffer was full: released before its parents could be found (not lost)
    linked_remote: int = 0
    linked_client_server: int = 0
    linked_thread: int = 0
    new_traces: int = 0


class Correlator:
    def __init__(
        self,
        release: Callable[[model.SpanRecord], None],
        busy_threads: Callable[[], set[tuple[int, int]]],
        hold_ns: int = 1_000_000_000,
        max_entries: int = 50_000,
        max_recent: int = 10_000,
        on_pair: Callable[[model.SpanRecord, model.SpanRecord], None] | None = None,
    ) -> None:
        self._release = release
        self._on_pair = on_pair  # (client span, server span) linked by rule 2: both ends seen here
        self._busy_threads = busy_threads
        self._hold_ns = hold_ns
        self._max_entries = max_entries
        self._max_recent = max_recent
        self._held: collections.deque[_Entry] = collections.deque()  # in arrival order: deadline order
        # Client spans past their hold whose thread still serves a request (their parent may end later).
        self._waiting: collections.deque[_Entry] = collections.deque()
        self._recent: collections.deque[_Entry] = collections.deque()
        self._clients_by_fingerprint: dict[int, collections.deque[_Entry]] = collections.defaultdict(
            collections.deque)
        self._servers_by_thread: dict[tuple[int, int], collections.deque[_Entry]] = collections.defaultdict(
            collections.deque)
        self.stats = CorrelationStats()

    def add(self, exchange: connections.Exchange, span: model.SpanRecord, now_ns: int) -> None:
        if len(self._held) + len(self._waiting) >= self._max_entries:
            # Bounded: release the oldest unresolved as its own trace rather than grow.
            self._release_entry((self._waiting or self._held).popleft())
            self.stats.released_early += 1
        remote = None
        if span.kind is _SERVER:
            remote = propagation.extract(exchange.record.context_headers)
        entry = _Entry(span, exchange.connection.tgid, exchange.tid, exchange.fingerprint, remote, now_ns)
        self._held.append(entry)
        if span.kind is _CLIENT:
            if entry.fingerprint:
                self._clients_by_fingerprint[entry.fingerprint].append(entry)
        else:
            self._servers_by_thread[(entry.tgid, entry.tid)].append(entry)

    def tick(self, now_ns: int, flush: bool = False) -> None:
        """Release every span whose hold time is over (all of them when flushing)."""
        held, waiting = self._held, self._waiting
        due = list(waiting)
        waiting.clear()
        hold_until = now_ns - self._hold_ns
        while held and (flush or held[0].arrived_ns <= hold_until):
            due.append(held.popleft())
        busy: set[tuple[int, int]] | None = None  # threads serving a request: looked up once per tick
        for entry in due:
            span = entry.span
            if (not flush and span.kind is _CLIENT and span.parent_span_id is None
                    and now_ns - entry.arrived_ns < _MAX_HOLD_NS):
                if busy is None:
                    busy = self._busy_threads()
                if (entry.tgid, entry.tid) in busy:
                    # Its thread still serves a request: that server span, its parent, ends later.
                    waiting.append(entry)
                    continue
            self._release_entry(entry)
        while self._recent and (flush or len(self._recent) > self._max_recent
                                or now_ns - self._recent[0].arrived_ns > _RECENT_NS):
            self._forget(self._recent.popleft())
        self.stats.held, self.stats.recent = len(held) + len(waiting), len(self._recent)

    def _release_entry(self, entry: _Entry) -> None:
        self._resolve(entry)
        entry.released = True
        self._recent.append(entry)
        self.stats.released += 1
        self._release(entry.span)

    def _forget(self, entry: _Entry) -> None:
        if entry.span.kind is _CLIENT:
            _remove(self._clients_by_fingerprint, entry.fingerprint, entry)
        else:
            _remove(self._servers_by_thread, (entry.tgid, entry.tid), entry)

    def _resolve(self, entry: _Entry) -> None:
        span = entry.span
        if span.trace_id or entry.resolving:
            return
        entry.resolving = True
        parent = self._parent_of(entry)
        if entry.remote is not None:
            span.trace_id, span.parent_span_id = entry.remote.trace_id, entry.remote.span_id
            span.parent_is_remote, span.trace_state = True, entry.remote.trace_state
            span.sampled = entry.remote.sampled
            self.stats.linked_remote += 1
        elif parent is not None:
            self._resolve(parent)
            span.trace_id, span.parent_span_id = parent.span.trace_id, parent.span.span_id
            span.trace_state, span.sampled = parent.span.trace_state, parent.span.sampled
        if not span.trace_id:
            span.trace_id = random.getrandbits(128) or 1
            span.parent_span_id = None
            self.stats.new_traces += 1
        entry.resolving = False

    def _parent_of(self, entry: _Entry) -> _Entry | None:
        span = entry.span
        if entry.remote is not None:
            return None
        if span.kind is _SERVER:
            best = _innermost(self._clients_by_fingerprint.get(entry.fingerprint, _EMPTY), span, skip=entry)
            if best is not None:
                self.stats.linked_client_server += 1
                if self._on_pair is not None:
                    self._on_pair(best.span, span)
            return best
        best = _innermost(self._servers_by_thread.get((entry.tgid, entry.tid), _EMPTY), span)
        if best is not None:
            self.stats.linked_thread += 1
        return best


def _remove(index: dict[K, collections.deque[_Entry]], key: K, entry: _Entry) -> None:
    bucket = index.get(key)
    if not bucket:
        return
    if bucket[0] is entry:  # entries leave roughly in the order they came
        bucket.popleft()
    else:
        with contextlib.suppress(ValueError):
            bucket.remove(entry)
    if not bucket:
        del index[key]


def _innermost(candidates: collections.deque[_Entry], span: model.SpanRecord,
               skip: _Entry | None = None) -> _Entry | None:
    """The candidate whose interval contains `span` most exactly, the one that started last among equals.

    Containment may miss by up to _SLACK_NS (the two ends' syscalls return on different CPUs), so the
    candidate that misses by least wins: back-to-back identical requests then each find their own client
    span, not the previous one that contains them within the slack.
    Buckets are in arrival order, which is about the order spans ended in: scanning from the newest,
    a candidate that ended well before `span` started ends the search (older ones ended earlier still).
    """
    best: _Entry | None = None
    best_key = (0, 0)
    for candidate in reversed(candidates):
        outer = candidate.span
        if outer.end_ns + _REORDER_NS < span.start_ns:
            break
        if candidate is skip:
            continue
        early, late = outer.start_ns - span.start_ns, span.end_ns - outer.end_ns  # > 0: outside
        if early > _SLACK_NS or late > _SLACK_NS:
            continue
        key = (max(early, 0) + max(late, 0), -outer.start_ns)
        if best is None or key < best_key:
            best, best_key = candidate, key
    return best
