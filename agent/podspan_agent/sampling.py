"""Which spans a profile exports: head sampling by trace id (ratio, parentBased) and `smart` tail
sampling on the node, which keeps or drops each local trace as a whole: every trace with an error, every
trace with a latency outlier for its operation, and a baseline share of the rest.

Pure apart from the clock the caller passes; owned by the node agent's Router (one SmartSampler per
profile in smart mode). Kept spans carry `podspan.sampling.reason`.
"""

from __future__ import annotations

import array
import collections
import dataclasses
from collections.abc import Callable

from podspan_agent.spans import model
from podspan_api import models

REASON_ATTRIBUTE = "podspan.sampling.reason"
ERROR, LATENCY, BASELINE = "error", "latency", "baseline"
# Recent durations kept per operation for its quantile, and how often the quantile is recomputed.
_WINDOW = 512
_REFRESH_EVERY = 64
# An operation needs this many spans before its quantile can call one an outlier.
_WARM_UP = 64
_MAX_OPERATIONS = 2000  # per profile; further operations share one window
_MAX_PENDING_SPANS = 20_000  # held spans per profile: beyond, the oldest traces are decided early
_MAX_DECIDED = 100_000  # remembered decisions, for spans that arrive after their trace was decided
_DECIDED_FOR_NS = 30_000_000_000
_OTHER_OPERATION = ("", "")


def sampled(trace_id: int, ratio: float) -> bool:
    """Deterministic by trace id, so every agent keeps or drops a trace the same way."""
    return ratio >= 1.0 or (trace_id & 0xFFFFFFFFFFFFFFFF) < int(ratio * 2**64)


def keep(span: model.SpanRecord, sampling: models.Sampling) -> bool:
    """Head sampling (ratio, parentBased): the caller's decision when the trace came with one and the
    mode is parent-based, else the trace-id ratio."""
    if sampling.effective_mode == models.SamplingMode.PARENT_BASED and span.sampled is not None:
        return span.sampled
    return sampled(span.trace_id, sampling.ratio)


class _Quantile:
    """A quantile of an operation's last _WINDOW durations, recomputed every _REFRESH_EVERY spans."""

    __slots__ = ("_recent", "_seen", "threshold")

    def __init__(self) -> None:
        self._recent = array.array("q")
        self._seen = 0
        self.threshold: int | None = None  # ns; None while warming up

    def observe(self, duration_ns: int, quantile: float) -> None:
        if len(self._recent) < _WINDOW:
            self._recent.append(duration_ns)
        else:
            self._recent[self._seen % _WINDOW] = duration_ns
        self._seen += 1
        if self._seen >= _WARM_UP and self._seen % _REFRESH_EVERY == 0:
            ordered = sorted(self._recent)
            self.threshold = ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


@dataclasses.dataclass(slots=True)
class _Trace:
    first_ns: int
    spans: list[model.SpanRecord]


@dataclasses.dataclass(slots=True)
class SmartStats:
    kept_error: int = 0  # traces
    kept_latency: int = 0
    kept_baseline: int = 0
    dropped: int = 0
    spans_dropped: int = 0  # spans of dropped traces, late ones included
    decided_early: int = 0  # decided before their wait because the hold buffer was full
    late_spans: int = 0  # spans that arrived after their trace's decision (they follow it)


class SmartSampler:
    """Holds each trace's spans for `decision_wait_ms`, then keeps or drops the trace as a whole; a
    trace is kept at once when one of its spans failed or was an outlier."""

    def __init__(self, settings: models.SmartSampling, export: Callable[[model.SpanRecord], None]) -> None:
        self._settings = settings
        self._export = export
        self._wait_ns = settings.decision_wait_ms * 1_000_000
        self._threshold_ns = (settings.latency_threshold_ms * 1_000_000
                              if settings.latency_threshold_ms is not None else None)
        self._pending: collections.OrderedDict[int, _Trace] = collections.OrderedDict()  # by first arrival
        self._pending_spans = 0
        self._decided: collections.OrderedDict[int, tuple[str | None, int]] = collections.OrderedDict()
        self._operations: dict[tuple[str, str], _Quantile] = {}
        self.stats = SmartStats()

    def offer(self, span: model.SpanRecord, now_ns: int) -> bool:
        """Take one span; True when it was exported at once (its trace is already known to be kept)."""
        reason = self._interesting(span)
        decided = self._decided.get(span.trace_id)
        if decided is not None:
            self.stats.late_spans += 1
            if decided[0] is None:
                self.stats.spans_dropped += 1
                return False
            self._emit(span, decided[0])
            return True
        trace = self._pending.get(span.trace_id)
        if trace is None:
            trace = self._pending[span.trace_id] = _Trace(now_ns, [])
        trace.spans.append(span)
        self._pending_spans += 1
        if reason is not None:
            self._decide(span.trace_id, reason, now_ns)
            return True
        while self._pending_spans > _MAX_PENDING_SPANS:
            self.stats.decided_early += 1
            self._decide(next(iter(self._pending)), None, now_ns)
        return False

    def tick(self, now_ns: int) -> None:
        """Decide every trace whose wait is over."""
        deadline = now_ns - self._wait_ns
        while self._pending:
            trace_id, trace = next(iter(self._pending.items()))
            if trace.first_ns > deadline:
                break
            self._decide(trace_id, None, now_ns)
        while self._decided and (len(self._decided) > _MAX_DECIDED
                                 or next(iter(self._decided.values()))[1] < now_ns - _DECIDED_FOR_NS):
            self._decided.popitem(last=False)

    def flush(self, now_ns: int) -> None:
        """Shutting down: decide everything still held."""
        while self._pending:
            self._decide(next(iter(self._pending)), None, now_ns)

    @property
    def pending_spans(self) -> int:
        return self._pending_spans

    def _interesting(self, span: model.SpanRecord) -> str | None:
        """ERROR or LATENCY when this span alone keeps its trace; feeds the operation's quantile."""
        duration = span.duration_ns
        key = (span.kind.value, span.name)
        window = self._operations.get(key)
        if window is None:
            if len(self._operations) >= _MAX_OPERATIONS:
                key = _OTHER_OPERATION
                window = self._operations.get(key)
            if window is None:
                window = self._operations[key] = _Quantile()
        threshold = window.threshold  # from spans before this one
        window.observe(duration, self._settings.latency_quantile)
        if span.error is not None:
            return ERROR
        if (threshold is not None and duration > threshold) or (
                self._threshold_ns is not None and duration >= self._threshold_ns):
            return LATENCY
        return None

    def _decide(self, trace_id: int, reason: str | None, now_ns: int) -> None:
        trace = self._pending.pop(trace_id)
        self._pending_spans -= len(trace.spans)
        if reason is None and sampled(trace_id, self._settings.baseline):
            reason = BASELINE
        if reason == ERROR:
            self.stats.kept_error += 1
        elif reason == LATENCY:
            self.stats.kept_latency += 1
        elif reason == BASELINE:
            self.stats.kept_baseline += 1
        else:
            self.stats.dropped += 1
            self.stats.spans_dropped += len(trace.spans)
        self._decided[trace_id] = (reason, now_ns)
        if reason is not None:
            for span in trace.spans:
                self._emit(span, reason)

    def _emit(self, span: model.SpanRecord, reason: str) -> None:
        self._export(dataclasses.replace(span, attributes={**span.attributes, REASON_ATTRIBUTE: reason}))
