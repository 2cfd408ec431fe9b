"""The event path of one agent: ring buffer -> connections -> parsers -> spans -> correlation -> sinks.

The tracer composes the stages: it hands each batch of events to the native connection table
(`_conntable.Table`, one call per batch), takes the exchanges it completed and passes them through the span
builder to the correlator, which releases spans to the sinks.

Single-threaded by design: the ring-buffer callback (a batch of records decoded by
`_ringbuf`), idle flushing and correlation all run on the thread that calls `run()`,
so no state is shared.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from podspan_agent import _conntable, _ringbuf, bpf_events, loader, tls
from podspan_agent.protocols import base, registry
from podspan_agent.spans import builder, correlation, model

_POLL_MS = 50
_HOUSEKEEPING_NS = 100_000_000
_IDLE_RUN_NS = 200_000_000  # a response run quiet this long is taken as complete
_GC_THRESHOLDS = (50_000, 20, 100)
# Protocols whose parsers keep no state from one exchange to the next: the kernel may skip whole exchanges of theirs.
_SAMPLED: Final = {"http": bpf_events.SampleProtocol.HTTP1, "redis": bpf_events.SampleProtocol.REDIS}
# The table's counters the tracer reports under their own names; the others are prefixed conn_.
_EVENT_STATS: Final = frozenset({"events", "malformed_events", "event_errors"})


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
        self.table = _conntable.Table(
            registry.detector(settings.protocols, settings.capture),
            probes.forget_connection,
            self._kernel_run,
            probes.tls_version,
            settings.max_connections,
            tls_failure=lambda conn_id: tls.failed_handshake(probes.tls_handshake(conn_id)),
        )
        self.correlator = correlation.Correlator(self._release, self.table.busy_threads, settings.hold_ns,
                                                 on_pair=on_pair)
        self.spans_released = 0
        probes.open_events(self._on_events)

    def set_sampling(self, enabled: bool) -> None:
        """Whether connections detected from now on may have exchanges skipped by the kernel (overhead budget)."""
        self.table.on_detected = self._sample_connection if enabled else None

    def _sample_connection(self, tgid: int, fd: int, conn_id: int, protocol: str) -> None:
        sampled = _SAMPLED.get(protocol)
        if sampled is not None:
            self.probes.sample_connection(tgid, fd, conn_id, sampled)

    def set_capture(self, capture: base.CaptureSettings) -> None:
        """Capture settings for connections opened from now on."""
        self.table.set_detector(registry.detector(self._protocols, capture))

    # ---- hot path ----
    def _on_events(self, records: list[loader.EventRecord]) -> None:
        """One batch from the ring buffer, oldest first: the table handles it in one call (a record whose
        handling fails costs that record only, counted as event_errors)."""
        self.table.feed(records)
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
    def _kernel_run(self, tgid: int, fd: int, conn_id: int) -> _ringbuf.Run | None:
        live = self.probes.connection(tgid, fd)
        if live is None or live.conn_id != conn_id:
            return None
        run = live.run  # in the events' type, so the table sees one kind of run
        return _ringbuf.Run((run.start_ns, run.end_ns, run.bytes, run.chunks, run.direction))

    def housekeeping(self) -> None:
        now = time.monotonic_ns()
        self.table.flush_idle(now - _IDLE_RUN_NS)
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
        self.table.flush_idle(now)
        self.table.finish_all()  # connections still open: their last run ends where the kernel last saw it
        self._add_exchanges()
        self.correlator.tick(now, flush=True)

    def stats(self) -> dict[str, int]:
        result = {f"kernel_{k}": v for k, v in self.probes.stats().items()}
        table_stats = self.table.stats
        result.update({name if name in _EVENT_STATS else f"conn_{name}": value
                       for name, value in zip(table_stats.__match_args__, table_stats, strict=True)})
        result.update({f"corr_{k}": v for k, v in dataclasses.asdict(self.correlator.stats).items()})
        result["spans"] = self.spans_released
        result["connections"] = len(self.table)
        result["parser_drops"] = sum(self.table.parser_drops_by_cgroup().values())
        return result
