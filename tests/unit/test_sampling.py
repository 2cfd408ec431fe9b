"""Smart sampling keeps every trace with an error or a latency outlier for its operation and a baseline
share of the rest, each trace as a whole; late spans follow their trace's decision; memory is bounded."""

from __future__ import annotations

import random

import pytest

from podspan_agent import sampling
from podspan_agent.spans import model
from podspan_api import models

MS = 1_000_000


def span(trace_id: int, name: str = "GET /users/{id}", duration_ns: int = 2 * MS, error: str | None = None,
         kind: model.SpanKind = model.SpanKind.SERVER) -> model.SpanRecord:
    return model.SpanRecord(trace_id=trace_id, span_id=random.getrandbits(64), parent_span_id=None, name=name,
                            kind=kind, start_ns=0, end_ns=duration_ns, attributes={"http.route": "/users/{id}"},
                            resource={"service.name": "shop"}, protocol="http", error=error)


class Run:
    def __init__(self, **settings: object) -> None:
        self.exported: list[model.SpanRecord] = []
        self.sampler = sampling.SmartSampler(models.SmartSampling.model_validate(settings), self.exported.append)
        self.now = 0

    def offer(self, *spans: model.SpanRecord) -> list[bool]:
        return [self.sampler.offer(s, self.now) for s in spans]

    def wait(self, ms: int) -> None:
        self.now += ms * MS
        self.sampler.tick(self.now)

    def reasons(self) -> dict[int, set[str]]:
        by_trace: dict[int, set[str]] = {}
        for s in self.exported:
            by_trace.setdefault(s.trace_id, set()).add(str(s.attributes[sampling.REASON_ATTRIBUTE]))
        return by_trace


def warm_up(run: Run, count: int = 200, first_trace: int = 10**6) -> None:
    """Normal traffic of the operation, dropped (baseline 0), so its quantile is known."""
    for i in range(count):
        run.offer(span(first_trace + i, duration_ns=(1 + i % 5) * MS))
    run.wait(10_000)
    run.exported.clear()


def test_a_trace_with_an_error_is_kept_whole_at_once() -> None:
    run = Run(baseline=0.0)
    parent, child = span(7), span(7, name="GET /api", kind=model.SpanKind.CLIENT)
    assert run.offer(parent) == [False]  # nothing known yet: held
    assert run.offer(span(7, error="HTTP 502")) == [True]
    assert run.offer(child) == [True]  # late: follows the decision
    assert run.reasons() == {7: {"error"}} and len(run.exported) == 3
    assert run.sampler.stats.kept_error == 1 and run.sampler.stats.late_spans == 1


def test_a_latency_outlier_for_its_operation_keeps_its_trace_and_the_same_duration_elsewhere_does_not() -> None:
    run = Run(baseline=0.0, latency_quantile=0.99)
    warm_up(run)
    for i in range(100):  # another operation, normally slow
        run.offer(span(5 * 10**6 + i, name="GET /report", duration_ns=(300 + i % 7) * MS))
    run.wait(10_000)
    assert run.exported == []
    run.offer(span(1, duration_ns=300 * MS), span(2, name="GET /report", duration_ns=302 * MS))
    run.wait(10_000)
    assert run.reasons() == {1: {"latency"}}


def test_a_fixed_threshold_needs_no_warm_up() -> None:
    run = Run(baseline=0.0, latency_threshold_ms=100)
    run.offer(span(1, duration_ns=100 * MS), span(2, duration_ns=99 * MS))
    run.wait(10_000)
    assert run.reasons() == {1: {"latency"}}


def test_about_the_baseline_share_of_other_traces_is_kept_whole() -> None:
    run = Run(baseline=0.05)
    trace_ids = [random.getrandbits(128) for _ in range(20_000)]
    for trace_id in trace_ids:
        run.offer(span(trace_id), span(trace_id, name="SELECT users", kind=model.SpanKind.CLIENT))
        run.wait(1)
    run.wait(10_000)
    kept = run.reasons()
    assert set().union(*kept.values()) == {"baseline"}
    assert 0.04 < len(kept) / len(trace_ids) < 0.06
    assert len(run.exported) == 2 * len(kept)  # both spans of every kept trace
    assert kept.keys() == {t for t in trace_ids if sampling.sampled(t, 0.05)}  # deterministic by trace id


def test_a_trace_waits_for_its_decision_then_late_spans_follow_it() -> None:
    run = Run(baseline=0.0, decision_wait_ms=500)
    run.offer(span(3))
    run.wait(499)
    assert run.sampler.pending_spans == 1
    run.wait(1)
    assert run.sampler.pending_spans == 0 and run.sampler.stats.dropped == 1
    assert run.offer(span(3)) == [False]  # dropped with its trace, even though it arrived later
    assert run.exported == [] and run.sampler.stats.late_spans == 1
    assert run.sampler.stats.spans_dropped == 2  # the trace's span and the late one


def test_held_spans_are_bounded() -> None:
    run = Run(baseline=0.0)
    for trace_id in range(30_000):
        run.offer(span(trace_id + 1))
    assert run.sampler.pending_spans <= 20_000
    assert run.sampler.stats.decided_early == 10_000


def test_flush_decides_everything_held() -> None:
    run = Run(baseline=1.0)
    run.offer(span(1), span(2))
    run.sampler.flush(run.now)
    assert run.reasons() == {1: {"baseline"}, 2: {"baseline"}}


@pytest.mark.parametrize(("settings", "mode"), [
    ({}, models.SamplingMode.PARENT_BASED),
    ({"parentBased": False}, models.SamplingMode.RATIO),
    ({"mode": "smart"}, models.SamplingMode.SMART),
    ({"mode": "ratio", "parentBased": True}, models.SamplingMode.RATIO),
])
def test_the_mode_is_explicit_or_follows_the_older_parent_based_flag(settings: dict[str, object],
                                                                    mode: models.SamplingMode) -> None:
    assert models.Sampling.model_validate(settings).effective_mode == mode


def test_ratio_mode_ignores_the_callers_flag() -> None:
    ratio = models.Sampling(mode=models.SamplingMode.RATIO, ratio=0.0)
    caller_sampled = span(1)
    caller_sampled.sampled = True
    assert not sampling.keep(caller_sampled, ratio)
    assert sampling.keep(caller_sampled, models.Sampling(ratio=0.0))  # parent-based by default
