"""Spans from the OpenTelemetry Collector's `file` exporter: OTLP/JSON, one ExportTraceServiceRequest per line.

OTLP/JSON (the OTLP specification's JSON encoding, not protobuf's canonical one) writes trace and span
ids as hex strings, enums such as the span kind as integers and 64-bit integers as strings.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclasses.dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # "server", "client", ...
    attributes: dict[str, Any]
    resource: dict[str, Any]

    def describe(self) -> str:
        """One line for failure messages."""
        return (f"{self.kind} {self.name!r} of {self.resource.get('k8s.pod.name')} trace={self.trace_id} "
                f"span={self.span_id} parent={self.parent_span_id}")


def parse(text: str) -> list[Span]:
    """Every span in the file's text. A last line without its newline is still being written: skipped."""
    spans = []
    for line in text.split("\n")[:-1]:
        if not line.strip():
            continue
        for resource_spans in json.loads(line).get("resourceSpans", []):
            resource = attributes(resource_spans.get("resource", {}).get("attributes", []))
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    spans.append(Span(
                        trace_id=span["traceId"].lower(),
                        span_id=span["spanId"].lower(),
                        parent_span_id=span.get("parentSpanId", "").lower() or None,
                        name=span.get("name", ""),
                        kind=_kind(span.get("kind", 0)),
                        attributes=attributes(span.get("attributes", [])),
                        resource=resource,
                    ))
    return spans


def _kind(value: int | str) -> str:
    # Integers per OTLP/JSON; enum names are what protobuf's own JSON printer would have written.
    if isinstance(value, str):
        return value.removeprefix("SPAN_KIND_").lower()
    return _KINDS.get(value, "unspecified")


def attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: value(item.get("value", {})) for item in items}


def value(any_value: dict[str, Any]) -> Any:
    """An AnyValue as Python: int64 arrives as a JSON string, arrays and key-value lists nest."""
    if "stringValue" in any_value:
        return any_value["stringValue"]
    if "intValue" in any_value:
        return int(any_value["intValue"])
    if "doubleValue" in any_value:
        return float(any_value["doubleValue"])
    if "boolValue" in any_value:
        return bool(any_value["boolValue"])
    if "arrayValue" in any_value:
        return [value(item) for item in any_value["arrayValue"].get("values", [])]
    if "kvlistValue" in any_value:
        return attributes(any_value["kvlistValue"].get("values", []))
    return any_value.get("bytesValue")  # base64 text, or None for an empty AnyValue
