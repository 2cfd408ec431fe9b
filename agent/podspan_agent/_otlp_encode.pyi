"""SpanRecords -> OTLP/protobuf wire bytes (C extension, agent/podspan_agent/_otlp_encode.c)."""

from collections.abc import Mapping, Sequence

from podspan_agent.protocols.base import AttributeValue
from podspan_agent.spans.model import SpanRecord

def encode_spans(records: Sequence[SpanRecord], /) -> list[bytes | Exception]:
    """Each record's ScopeSpans.spans field (tag, length, Span), or the Exception that stopped it."""

def resource_spans(
    resource: Mapping[str, AttributeValue], scope_name: str, scope_version: str, spans: Sequence[bytes], /
) -> bytes:
    """One ExportTraceServiceRequest.resource_spans field: the resource, the scope and `spans`."""
