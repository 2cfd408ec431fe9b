"""Human output for standalone mode: a waterfall per trace once it goes quiet, and a live summary line."""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from podspan_agent.spans import model

# Shown after the name when present, in this order; the name already carries method/route/operation.
_KEY_ATTRIBUTES = (
    "http.response.status_code",
    "url.path",
    "rpc.system",
    "rpc.method",
    "db.system.name",
    "db.query.text",
    "messaging.destination.name",
    "dns.question.name",
    "server.address",
    "error.type",
)
_VALUE_WIDTH = 60
_BAR_WIDTH = 30
_MAX_DEPTH = 32
_RESET = "\033[0m"
_RED = "\033[31m"
_DIM = "\033[2m"
_CYAN = "\033[36m"
_BOLD = "\033[1m"


@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleStats:
    traces_printed: int = 0
    spans_printed: int = 0
    traces_dropped: int = 0
    spans_dropped: int = 0
    pending_traces: int = 0


@dataclasses.dataclass(slots=True)
class _Trace:
    spans: list[model.SpanRecord]
    last_seen: float
    dropped: int = 0


def _shorten(value: object, width: int = _VALUE_WIDTH) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def _duration(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} µs"


def _origin(span: model.SpanRecord) -> str:
    """Where the span was produced: service and pod, else the process."""
    resource = span.resource
    service = resource.get("service.name")
    place = resource.get("k8s.pod.name")
    if place is None and "process.pid" in resource:
        place = f"pid {resource['process.pid']}"
    return "/".join(str(part) for part in (service, place) if part is not None)


def render_trace(spans: list[model.SpanRecord], *, color: bool = False, dropped: int = 0) -> str:
    """A waterfall of one trace: children indented under their parents, bars scaled to the trace.

    Spans whose parent is not in the list (a remote parent, or one never seen) are roots.
    """
    start = min(span.start_ns for span in spans)
    total = max(max(span.end_ns for span in spans) - start, 1)
    by_id = {span.span_id: span for span in spans}
    children: dict[int, list[model.SpanRecord]] = collections.defaultdict(list)
    roots = []
    for span in spans:
        if (
            span.parent_span_id is not None
            and span.parent_span_id in by_id
            and span.parent_span_id != span.span_id
        ):
            children[span.parent_span_id].append(span)
        else:
            roots.append(span)

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    errors = sum(span.is_error for span in spans)
    header = f"trace {spans[0].trace_id:032x}  {len(spans)} spans  {_duration(total)}"
    if errors:
        header += "  " + paint(f"{errors} error{'s' if errors > 1 else ''}", _RED)
    if dropped:
        header += f"  ({dropped} spans not shown: trace too large)"
    lines = [paint(header, _BOLD)]
    fill = "█" if color else "#"
    seen: set[int] = set()

    def walk(span: model.SpanRecord, depth: int) -> None:
        # Ids come from the wire: guard against duplicates and cycles.
        if id(span) in seen:
            return
        seen.add(id(span))
        offset = span.start_ns - start
        left = min(_BAR_WIDTH - 1, offset * _BAR_WIDTH // total)
        width = max(1, min(_BAR_WIDTH - left, span.duration_ns * _BAR_WIDTH // total))
        bar = " " * left + fill * width + " " * (_BAR_WIDTH - left - width)
        bar = paint(bar, _RED if span.is_error else _CYAN)
        details = [paint(span.kind.value.upper(), _DIM), _origin(span)]
        details += [
            f"{key}={_shorten(span.attributes[key])}" for key in _KEY_ATTRIBUTES if key in span.attributes
        ]
        if span.is_error:
            details.append(paint(f"ERROR {_shorten(span.error)}" if span.error else "ERROR", _RED))
        lines.append(
            f"{_duration(offset):>10} |{bar}| {_duration(span.duration_ns):>10}  "
            f"{'  ' * depth}{span.name}  {'  '.join(part for part in details if part)}"
        )
        for child in sorted(children.get(span.span_id, ()), key=lambda child: child.start_ns):
            walk(child, min(depth + 1, _MAX_DEPTH))

    for root in sorted(roots, key=lambda root: root.start_ns):
        walk(root, 0)
    # Spans in a parent cycle have no root above them; show them rather than lose them.
    for span in sorted(spans, key=lambda span: span.start_ns):
        walk(span, 0)
    return "\n".join(lines) + "\n"


class ConsoleExporter:
    """Collects spans per trace and prints each trace's waterfall once it has been quiet.

    Memory is bounded: at most `max_pending_traces` traces of at most `max_spans_per_trace`
    spans wait; spans beyond either cap are dropped and counted. A background thread prints
    quiet traces every `poll_interval` seconds; with `poll_interval=None` the caller drives
    `poll()` (tests do, with their own clock).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet_period: float = 1.0,
        max_pending_traces: int = 1000,
        max_spans_per_trace: int = 200,
        color: bool | None = None,
        poll_interval: float | None = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = sys.stdout if stream is None else stream
        self._color = self._stream.isatty() if color is None else color
        self._quiet_period = quiet_period
        self._max_pending = max_pending_traces
        self._max_spans = max_spans_per_trace
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order = first-seen order, so quiet traces print roughly in arrival order.
        self._pending: dict[int, _Trace] = {}
        self._counts = dict.fromkeys(
            ("traces_printed", "spans_printed", "traces_dropped", "spans_dropped"), 0
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if poll_interval is not None:
            self._thread = threading.Thread(
                target=self._poll_loop, args=(poll_interval,), name="podspan-console", daemon=True
            )
            self._thread.start()

    def export(self, span: model.SpanRecord) -> None:
        now = self._clock()
        with self._lock:
            trace = self._pending.get(span.trace_id)
            if trace is None:
                if len(self._pending) >= self._max_pending:
                    self._counts["traces_dropped"] += 1
                    self._counts["spans_dropped"] += 1
                    return
                trace = self._pending[span.trace_id] = _Trace(spans=[], last_seen=now)
            trace.last_seen = now
            if len(trace.spans) >= self._max_spans:
                trace.dropped += 1
                self._counts["spans_dropped"] += 1
                return
            trace.spans.append(span)

    def poll(self, now: float | None = None) -> int:
        """Print every trace quiet for `quiet_period`; return how many were printed."""
        now = self._clock() if now is None else now
        with self._lock:
            quiet = [
                tid for tid, trace in self._pending.items() if now - trace.last_seen >= self._quiet_period
            ]
            ready = [self._pending.pop(tid) for tid in quiet]
        return self._print(ready)

    def stats(self) -> ConsoleStats:
        with self._lock:
            return ConsoleStats(**self._counts, pending_traces=len(self._pending))

    def shutdown(self, timeout: float = 1.0) -> None:
        """Stop the poller and print every pending trace, quiet or not."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            ready = list(self._pending.values())
            self._pending.clear()
        self._print(ready)
        self._stream.flush()

    def _print(self, traces: list[_Trace]) -> int:
        for trace in traces:
            self._stream.write(render_trace(trace.spans, color=self._color, dropped=trace.dropped) + "\n")
        if traces:
            self._stream.flush()
            with self._lock:
                self._counts["traces_printed"] += len(traces)
                self._counts["spans_printed"] += sum(len(trace.spans) for trace in traces)
        return len(traces)

    def _poll_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.poll()


@dataclasses.dataclass(frozen=True, slots=True)
class LiveStats:
    """What the live summary shows; the caller gathers it from capture and the exporter."""

    elapsed_s: float
    spans: int
    traces: int
    spans_dropped: int
    events_lost: int
    spans_exported: int | None = None  # OTLP: delivered to the endpoint (spans = exported + dropped + queued)
    parser_drops: int = 0  # exchanges the parsers could not report (before any span existed)


def summary_line(current: LiveStats, previous: LiveStats | None = None) -> str:
    """One line for a live status display; the rate is since `previous`, else since the start."""
    if previous is not None and current.elapsed_s > previous.elapsed_s:
        rate = (current.spans - previous.spans) / (current.elapsed_s - previous.elapsed_s)
    else:
        rate = current.spans / current.elapsed_s if current.elapsed_s > 0 else 0.0
    return (
        f"{current.elapsed_s:7.1f}s  {rate:9.1f} spans/s  {current.spans} spans  {current.traces} traces  "
        + (f"{current.spans_exported} exported  " if current.spans_exported is not None else "")
        + f"{current.spans_dropped} dropped  {current.events_lost} events lost"
        + (f"  {current.parser_drops} parser drops" if current.parser_drops else "")
    )
