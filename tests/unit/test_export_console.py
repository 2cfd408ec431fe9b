"""Console exporter: waterfall structure for a trace, quiet-period grouping, bounded pending state."""

from __future__ import annotations

import dataclasses
import io

from podspan_agent.export import console
from podspan_agent.spans import model

T0 = 1_763_900_000_000_000_000
TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def span(
    span_id: int, parent: int | None, name: str, start_ms: int, end_ms: int, **fields: object
) -> model.SpanRecord:
    values: dict[str, object] = {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": model.SpanKind.SERVER,
        "start_ns": T0 + start_ms * 1_000_000,
        "end_ns": T0 + end_ms * 1_000_000,
        "attributes": {},
        "resource": {"service.name": "shop", "k8s.pod.name": "shop-0"},
        "protocol": "http",
    }
    values.update(fields)
    return model.SpanRecord(**values)  # type: ignore[arg-type]


def three_span_trace() -> list[model.SpanRecord]:
    return [
        span(
            3,
            2,
            "SELECT items",
            10,
            30,
            kind=model.SpanKind.CLIENT,
            error="deadlock detected",
            attributes={"db.system.name": "postgresql"},
            protocol="postgresql",
        ),
        span(1, 0xFEED, "GET /items/{id}", 0, 100, attributes={"http.response.status_code": 200}),
        span(2, 1, "GET /stock", 5, 50, kind=model.SpanKind.CLIENT, resource={"process.pid": 77}),
    ]


def test_waterfall_structure() -> None:
    text = console.render_trace(three_span_trace())
    header, root, child, grandchild = text.rstrip("\n").split("\n")
    assert f"{TRACE:032x}" in header and "3 spans" in header and "1 error" in header
    # Parentage shows as indentation: root, child, grandchild, in start order.
    assert root.split("|")[2].lstrip().split("  ", 1)[1].startswith("GET /items/{id}")
    assert child.split("|")[2].lstrip().split("  ", 1)[1].startswith("  GET /stock")
    assert grandchild.split("|")[2].lstrip().split("  ", 1)[1].startswith("    SELECT items")
    # The root spans the whole trace; the bar of a span starting later starts further right.
    root_bar, child_bar, grandchild_bar = (line.split("|")[1] for line in (root, child, grandchild))
    assert root_bar == "#" * len(root_bar)
    assert child_bar.index("#") <= grandchild_bar.index("#")
    assert 0 < child_bar.count("#") < len(child_bar)
    assert "SERVER" in root and "shop/shop-0" in root and "http.response.status_code=200" in root
    assert "CLIENT" in child and "pid 77" in child
    assert "ERROR deadlock detected" in grandchild and "db.system.name=postgresql" in grandchild
    assert "\033[" not in text


def test_color_only_when_asked() -> None:
    assert "\033[31m" in console.render_trace(three_span_trace(), color=True)


def test_parent_cycle_is_still_shown() -> None:
    text = console.render_trace([span(1, 2, "a", 0, 10), span(2, 1, "b", 1, 5)])
    assert text.count("\n") == 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_traces_print_once_quiet_and_memory_is_bounded() -> None:
    out = io.StringIO()
    clock = FakeClock()
    exporter = console.ConsoleExporter(
        out, quiet_period=1.0, max_pending_traces=2, max_spans_per_trace=2, poll_interval=None, clock=clock
    )
    first, second, third = three_span_trace()
    exporter.export(first)
    exporter.export(second)
    exporter.export(third)  # third span of a trace capped at two
    exporter.export(span(9, None, "other", 0, 1, trace_id=2))
    exporter.export(span(10, None, "no room", 0, 1, trace_id=3))  # a third pending trace
    clock.now += 0.5
    assert exporter.poll() == 0 and out.getvalue() == ""
    clock.now += 0.6
    assert exporter.poll() == 2
    text = out.getvalue()
    assert "GET /items/{id}" in text and "other" in text and "no room" not in text
    assert "1 spans not shown" in text
    stats = exporter.stats()
    assert stats == console.ConsoleStats(
        traces_printed=2, spans_printed=3, traces_dropped=1, spans_dropped=2, pending_traces=0
    )


def test_shutdown_prints_pending_traces() -> None:
    out = io.StringIO()
    exporter = console.ConsoleExporter(out, poll_interval=0.01)
    for record in three_span_trace():
        exporter.export(record)
    exporter.shutdown()
    assert out.getvalue().count("GET /items/{id}") == 1
    assert exporter.stats().spans_printed == 3


def test_summary_line() -> None:
    before = console.LiveStats(elapsed_s=10.0, spans=1000, traces=300, spans_dropped=2, events_lost=5)
    now = console.LiveStats(elapsed_s=12.0, spans=3000, traces=900, spans_dropped=7, events_lost=5)
    line = console.summary_line(now, before)
    assert (
        "1000.0 spans/s" in line and "900 traces" in line and "7 dropped" in line and "5 events lost" in line
    )
    assert "250.0 spans/s" in console.summary_line(now)
    assert "parser drops" not in line
    assert "  3 parser drops" in console.summary_line(dataclasses.replace(now, parser_drops=3))
    assert "exported" not in line  # printed spans: nothing is exported
    otlp = dataclasses.replace(now, spans_exported=2990)
    assert "3000 spans  900 traces  2990 exported  7 dropped" in console.summary_line(otlp)
