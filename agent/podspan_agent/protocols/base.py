"""The neutral contract between capture and protocol parsers.

Capture hands a parser whole *messages* (a run of bytes sent in one direction
between two direction changes on a connection, of which only the first bytes
were copied); a parser pairs them and returns neutral `Record`s. Nothing here
imports bcc or OpenTelemetry.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol

AttributeValue = str | int | float | bool


class Message(NamedTuple):
    """One message run seen on a connection.

    `data` holds the first bytes of the run (at most the capture size); `size`
    is the run's full length. Several protocol messages may share one run
    (pipelining), and the last one may be cut off by the capture size.
    Immutable as a tuple: two are made per exchange, and a frozen dataclass costs 4x a tuple to build.
    """

    from_client: bool
    data: bytes
    size: int
    start_ns: int
    end_ns: int

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.size


@dataclasses.dataclass(slots=True, frozen=True)
class CaptureSettings:
    """What private data a parser may keep (design.md: off or redacted by default)."""

    headers: bool = False
    query: bool = True
    bodies: bool = False
    body_limit: int = 0
    statement_parameters: bool = False
    route_patterns: tuple[str, ...] = ()


@dataclasses.dataclass(slots=True)
class Record:
    """One request/response exchange, protocol-neutral.

    `attributes` use OpenTelemetry semantic-convention keys; connection-level
    ones (`server.address`, `network.peer.*`, ...) are added later from the
    connection, not by parsers. `context_headers` carries lower-cased
    propagation headers (traceparent, tracestate, b3, x-b3-*) seen in the
    request, for correlation.
    """

    protocol: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, AttributeValue] = dataclasses.field(default_factory=dict)
    error: str | None = None
    context_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    request_size: int = 0
    response_size: int = 0


class Parser(Protocol):
    """Per-connection parser: bounded state, never raises on malformed input."""

    @property
    def dropped(self) -> int:
        """Exchanges (or the messages of them) it could not turn into records: queue overflow,
        unparsable runs, framing lost; counted since the parser was made."""
        ...

    def feed(self, message: Message) -> list[Record]: ...

    def flush(self) -> list[Record]:
        """Connection closed or idle: return whatever can still be reported."""
        ...
