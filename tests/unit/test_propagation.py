"""Incoming trace context: ids, tracestate and the caller's sampling decision (W3C and B3)."""

from __future__ import annotations

import pytest

from podspan_agent import sampling
from podspan_agent.spans import model, propagation
from podspan_api import models

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("headers", "sampled"),
    [
        ({"traceparent": f"00-{TRACE}-{SPAN}-01"}, True),
        ({"traceparent": f"00-{TRACE}-{SPAN}-00"}, False),
        ({"traceparent": f"00-{TRACE}-{SPAN}-03"}, True),  # other flag bits do not matter
        ({"b3": f"{TRACE}-{SPAN}-1"}, True),
        ({"b3": f"{TRACE}-{SPAN}-0"}, False),
        ({"b3": f"{TRACE}-{SPAN}-d"}, True),
        ({"b3": f"{TRACE}-{SPAN}"}, None),  # deferred: no decision
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0"}, False),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0", "x-b3-flags": "1"}, True),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN}, None),
    ],
)
def test_sampling_decision_of_the_caller(headers: dict[str, str], sampled: bool | None) -> None:
    context = propagation.extract(headers)
    assert context is not None
    assert (context.trace_id, context.span_id) == (int(TRACE, 16), int(SPAN, 16))
    assert context.sampled is sampled


@pytest.mark.parametrize("headers", [
    {"traceparent": f"ff-{TRACE}-{SPAN}-01"}, {"traceparent": f"00-{'0' * 32}-{SPAN}-01"}, {"b3": "nonsense"}, {},
])
def test_invalid_or_missing_context_is_none(headers: dict[str, str]) -> None:
    assert propagation.extract(headers) is None


def _span(trace_id: int, sampled: bool | None) -> model.SpanRecord:
    return model.SpanRecord(trace_id=trace_id, span_id=1, parent_span_id=None, name="GET /",
                            kind=model.SpanKind.SERVER, start_ns=0, end_ns=1, attributes={}, resource={},
                            protocol="http", sampled=sampled)


def test_parent_based_profiles_follow_the_caller_else_the_ratio() -> None:
    low_id, high_id = 1, 2**64 - 1  # kept / dropped by a 0.5 ratio
    half = models.Sampling(ratio=0.5)
    assert sampling.keep(_span(low_id, None), half) and not sampling.keep(_span(high_id, None), half)
    assert sampling.keep(_span(high_id, True), half)
    assert not sampling.keep(_span(low_id, False), models.Sampling(ratio=1.0))
    ratio_only = models.Sampling(ratio=0.5, parent_based=False)
    assert not sampling.keep(_span(high_id, True), ratio_only)
