"""The event path of one agent: ring buffer -> connections -> parsers -> spans -> correlation -> sinks.

The tracer composes the stages: after each batch of events it takes the exchanges the connection table
completed and passes them through the span builder to the correlator, which releases spans to the sinks.

Single-threaded by design: the ring-buffer callback (a batch of records decoded by
`_ringbuf`), idle flushing and correlation all run on the thread that calls `run()`,
so no state is shared.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from podspan_agent import _ringbuf, connections, loader
from podspan_agent.protocols import base, registry
from podspan_agent.spans import builder, correlation, model

_POLL_MS = 50
_HOUSEKEEPING_NS = 100_000_000
_IDLE_RUN_NS = 200_000_000  # a response run quiet this long is taken as complete
_GC_THRESHOLDS = (50_000, 20, 100)
_OPEN: Final = _ringbuf.OPEN
_DATA: Final = _ringbuf.DATA
_CLOSE: Final = _ringbuf.CLOSE
_CONTINUATION: Final = _ringbuf.CONTINUATION
_EXIT: Final = _ringbuf.EXIT
_TLS: Final = _ringbuf.TLS

log = logging.getLogger(__name__)


def tune_collector() -> None:
    """Set the process's cyclic garbage collector for the event path.

    The path allocates a few objects per span and keeps tens of thousands alive for correlation; at
    CPython's default first threshold (700) the collector rescans them every few hundred spans (~2 µs
    per span in bench/pipeline_bench.py). Span objects form no cycles, so collect rarely, and never
    rescan what is alive before tracing starts (modules, bcc, the loaded program).
    """
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


class SpanSink(Protocol):
    def export(self, span: model.SpanRecord) -> None: ...

    def shutdown(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class TracerSettings:
    capture: base.CaptureSettings = dataclasses.field(default_factory=base.CaptureSettings)
    protocols: frozenset[str] | None = None  # None: every protocol the agent knows
    hold_ns: int = 1_000_000_000
    max_connections: int = 65536


class Tracer:
    def __init__(
        self,
        probes: loader.Probes,
        settings: TracerSettings,
        sinks: Sequence[SpanSink],
        resource_for: builder.ResourceLookup,
        on_pair: Callable[[model.SpanRecord, model.SpanRecord], None] | None = None,
    ) -> None:
        """`on_pair`: called with each (client span, server span) pair whose both ends this agent saw
        (the service graph)."""
        self.probes = probes
        self.sinks = sinks
        self._protocols = settings.protocols
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()
        self._builder = builder.SpanBuilder(resource_for, self._epoch_offset_ns)
        self.table = connections.ConnectionTable(
            registry.detector(settings.protocols, settings.capture),
            probes.forget_connection,
            settings.max_connections,
            probes.tls_version,
        )
        self.correlator = correlation.Correlator(self._release, self.table.busy_threads, settings.hold_ns,
                                                 on_pair=on_pair)
        self.spans_released = 0
        self.events = 0  # records taken from the ring buffer
        self.malformed_events = 0
        self.event_errors = 0  # records whose handling raised (a bug): skipped, the next ones go on
        probes.open_events(self._on_events)

    def set_sampling(self, enabled: bool) -> None:
        """Whether connections detected from now on may have exchanges skipped by the kernel (overhead budget)."""
        self.table.sample = self.probes.sample_connection if enabled else None

    def set_capture(self, capture: base.CaptureSettings) -> None:
        """Capture settings for connections opened from now on."""
        self.table.set_detector(registry.detector(self._protocols, capture))

    # ---- hot path ----
    def _on_events(self, records: list[loader.EventRecord]) -> None:
        """One batch from the ring buffer, oldest first (kinds by frequency)."""
        table = self.table
        self.events += len(records)
        for record in records:
            try:
                if record.kind == _DATA:
                    table.on_data(record, record.data)
                elif record.kind == _CLOSE:
                    table.on_close(record)
                elif record.kind == _OPEN:
                    table.on_open(record)
                elif record.kind == _CONTINUATION:
                    table.on_continuation(record, record.data)
                elif record.kind == _EXIT:
                    table.on_exit(record.tgid, self._kernel_run)
                elif record.kind == _TLS:
                    table.on_tls(record)
                else:  # too short for its kind, or of no known kind
                    self.malformed_events += 1
            except Exception:  # a bug must cost one event, never the batch or the agent
                self.event_errors += 1
                if self.event_errors & (self.event_errors - 1) == 0:  # the 1st, 2nd, 4th, ... (no flood)
                    # Not the record itself: its data may hold private bytes.
                    log.exception("handling a kind %d event failed (%d so far)", record.kind, self.event_errors)
        self._add_exchanges()

    def _add_exchanges(self) -> None:
        """What the table completed: builder -> correlator (which releases to the sinks on its ticks)."""
        now = time.monotonic_ns()
        build, add = self._builder.build, self.correlator.add
        for exchange in self.table.take_exchanges():
            add(exchange, build(exchange), now)

    def _release(self, span: model.SpanRecord) -> None:
        self.spans_released += 1
        for sink in self.sinks:
            sink.export(span)

    # ---- loop ----
    def _kernel_run(self, conn: connections.Connection) -> _ringbuf.Run | None:
        live = self.probes.connection(conn.tgid, conn.fd)
        if live is None or live.conn_id != conn.conn_id:
            return None
        run = live.run  # in the events' type, so the table sees one kind of run
        return _ringbuf.Run((run.start_ns, run.end_ns, run.bytes, run.chunks, run.direction))

    def housekeeping(self) -> None:
        now = time.monotonic_ns()
        self.table.flush_idle(now - _IDLE_RUN_NS, self._kernel_run)
        self._add_exchanges()
        self.correlator.tick(now)

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> None:
        tune_collector()
        next_housekeeping = 0
        while not stop.is_set():
            self.probes.poll(_POLL_MS)
            now = time.monotonic_ns()
            if now >= next_housekeeping:
                self.housekeeping()
                if on_tick is not None:
                    on_tick()
                next_housekeeping = now + _HOUSEKEEPING_NS
        self.drain()

    def drain(self) -> None:
        """Deliver everything still in flight: remaining events, open exchanges, held spans."""
        self.probes.poll(0)
        now = time.monotonic_ns()
        self.table.flush_idle(now, self._kernel_run)
        for conn in self.table.connections():
            # Connections still open: their last run ends where the kernel last saw it.
            self.table.finish(conn, self._kernel_run(conn))
        self._add_exchanges()
        self.correlator.tick(now, flush=True)

    def stats(self) -> dict[str, int]:
        result = {f"kernel_{k}": v for k, v in self.probes.stats().items()}
        result.update({f"conn_{k}": v for k, v in dataclasses.asdict(self.table.stats).items()})
        result.update({f"corr_{k}": v for k, v in dataclasses.asdict(self.correlator.stats).items()})
        result["spans"] = self.spans_released
        result["events"] = self.events
        result["malformed_events"] = self.malformed_events
        result["event_errors"] = self.event_errors
        result["connections"] = len(self.table)
        result["parser_drops"] = sum(self.table.parser_drops_by_cgroup().values())
        return result
