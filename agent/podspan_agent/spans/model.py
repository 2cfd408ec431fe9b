"""SpanRecord: the finished, exporter-neutral span handed to every exporter."""

from __future__ import annotations

import dataclasses
import enum

from podspan_agent.protocols import base


class SpanKind(enum.Enum):
    SERVER = "server"
    CLIENT = "client"
    INTERNAL = "internal"


@dataclasses.dataclass(slots=True)
class SpanRecord:
    """A span as Podspan produced it. Times are Unix-epoch nanoseconds.

    `resource` holds the attributes of the process/pod that produced the span
    (`process.pid`, `container.id`, `k8s.*`, `service.name`); exporters group
    spans by it. `parent_is_remote` marks a parent adopted from propagation
    headers rather than one Podspan produced itself.
    """

    trace_id: int
    span_id: int
    parent_span_id: int | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: dict[str, base.AttributeValue]
    resource: dict[str, base.AttributeValue]
    protocol: str
    error: str | None = None
    parent_is_remote: bool = False
    trace_state: str = ""
    sampled: bool | None = None  # the trace's sampling decision from an incoming context, if it had one

    @property
    def is_error(self) -> bool:
        return self.error is not None

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)
