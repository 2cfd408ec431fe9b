"""JSON-lines exporter: one parseable object per span, ids in hex, times in ns."""

from __future__ import annotations

import io
import json
import math
import pathlib

from podspan_agent.export import jsonl
from podspan_agent.spans import model


def record(**fields: object) -> model.SpanRecord:
    values: dict[str, object] = {
        "trace_id": 0x0AF7651916CD43DD8448EB211C80319C,
        "span_id": 0x00F067AA0BA902B7,
        "parent_span_id": 0x1,
        "name": "GET /ü",
        "kind": model.SpanKind.CLIENT,
        "start_ns": 1_763_900_000_123_456_789,
        "end_ns": 1_763_900_000_124_456_789,
        "attributes": {"http.response.status_code": 503, "ratio": math.inf, "ok": False},
        "resource": {"process.pid": 9},
        "protocol": "http",
        "error": "503 Service Unavailable",
        "parent_is_remote": True,
    }
    values.update(fields)
    return model.SpanRecord(**values)  # type: ignore[arg-type]


def test_one_object_per_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = jsonl.JsonlExporter.open(str(path))
    exporter.export(record())
    exporter.export(record(span_id=2, parent_span_id=None, error=None))
    exporter.shutdown()
    first, second = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert first == {
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "00f067aa0ba902b7",
        "parent_span_id": "0000000000000001",
        "parent_is_remote": True,
        "trace_state": "",
        "name": "GET /ü",
        "kind": "client",
        "protocol": "http",
        "start_ns": 1_763_900_000_123_456_789,
        "end_ns": 1_763_900_000_124_456_789,
        "duration_ns": 1_000_000,
        "status": "error",
        "error": "503 Service Unavailable",
        "attributes": {"http.response.status_code": 503, "ratio": "inf", "ok": False},
        "resource": {"process.pid": 9},
    }
    assert (second["parent_span_id"], second["status"], second["span_id"]) == (
        None,
        "unset",
        "0000000000000002",
    )
    assert exporter.stats() == jsonl.JsonlStats(spans_written=2, write_errors=0)


def test_write_failure_is_counted() -> None:
    stream = io.StringIO()
    exporter = jsonl.JsonlExporter(stream)
    exporter.export(record())
    stream.close()
    exporter.export(record())
    exporter.export(record())
    assert exporter.stats() == jsonl.JsonlStats(spans_written=1, write_errors=2)
