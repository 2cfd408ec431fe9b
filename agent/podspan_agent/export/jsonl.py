"""JSON-lines output for standalone mode: one JSON object per span per line, to a file or stdout."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
from typing import Any, TextIO

from podspan_agent.protocols import base
from podspan_agent.spans import model


def _json_value(value: base.AttributeValue) -> Any:
    # JSON has no NaN/Infinity; keep them readable instead of writing invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def span_to_dict(span: model.SpanRecord) -> dict[str, Any]:
    """The line format: ids as lowercase hex, times in Unix-epoch nanoseconds."""
    return {
        "trace_id": f"{span.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
        "parent_span_id": None if span.parent_span_id is None else f"{span.parent_span_id:016x}",
        "parent_is_remote": span.parent_is_remote,
        "trace_state": span.trace_state,
        "name": span.name,
        "kind": span.kind.value,
        "protocol": span.protocol,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "duration_ns": span.duration_ns,
        "status": "error" if span.is_error else "unset",
        "error": span.error,
        "attributes": {key: _json_value(value) for key, value in span.attributes.items()},
        "resource": {key: _json_value(value) for key, value in span.resource.items()},
    }


@dataclasses.dataclass(frozen=True, slots=True)
class JsonlStats:
    spans_written: int = 0
    write_errors: int = 0


class JsonlExporter:
    """Writes each span as one line. Flushes every line on a terminal, else on `shutdown()`.

    A failed write (closed pipe, full disk) is counted in `write_errors` and the span is lost;
    the exporter then stops writing rather than failing every later span the same way.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._line_flush = stream.isatty()
        self._lock = threading.Lock()
        self._written = 0
        self._errors = 0
        self._broken = False

    @classmethod
    def open(cls, path: str) -> JsonlExporter:
        """`-` means stdout; anything else is a file, appended to."""
        if path == "-":
            return cls(sys.stdout)
        # Closed by shutdown().
        return cls(open(path, "a", encoding="utf-8"))

    def export(self, span: model.SpanRecord) -> None:
        line = json.dumps(span_to_dict(span), ensure_ascii=False) + "\n"
        with self._lock:
            if self._broken:
                self._errors += 1
                return
            try:
                self._stream.write(line)
                if self._line_flush:
                    self._stream.flush()
            except (OSError, ValueError):
                self._errors += 1
                self._broken = True
                return
            self._written += 1

    def stats(self) -> JsonlStats:
        with self._lock:
            return JsonlStats(spans_written=self._written, write_errors=self._errors)

    def shutdown(self, timeout: float = 0.0) -> None:
        """Flush and close the stream (stdout/stderr stay open); later spans count as write errors.

        `timeout` is accepted for the common exporter interface; writing is synchronous.
        """
        with self._lock:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._errors += 1
            if self._stream not in (sys.stdout, sys.stderr):
                self._stream.close()
            self._broken = True
