"""The HTTP/1 parser (C extension, agent/podspan_agent/_http1.c); protocols/http1.py exposes it."""

import collections
from typing import Final, final

from _typeshed import ReadableBuffer

from podspan_agent.protocols import base

PROTOCOL: Final[str]
MAX_PENDING: Final[int]
NO_RESPONSE: Final[str]
KNOWN_METHODS: Final[tuple[str, ...]]
CONTEXT_HEADERS: Final[tuple[str, ...]]

@final
class Parser:
    """Per-connection HTTP/1 parser (base.Parser): keep-alive, pipelining, 1xx interim responses,
    a FIFO of at most MAX_PENDING requests with counted gaps beyond it."""

    def __init__(self, settings: base.CaptureSettings) -> None: ...
    def feed(self, message: base.Message, /) -> list[base.Record]: ...
    def flush(self) -> list[base.Record]: ...
    @property
    def pending(self) -> int:
        """Queued requests and gaps; never more than MAX_PENDING + 1."""

    @property
    def counters(self) -> collections.Counter[str]:
        """What was lost or not parsed, by name (a new Counter on each access)."""

    @property
    def dropped(self) -> int:
        """Exchanges that could not be reported (base.Parser.dropped)."""

def is_status_line(data: ReadableBuffer, pos: int, /) -> bool:
    """Whether an HTTP/1.0 or 1.1 status line with a three-digit code from 100 to 999 starts at data[pos]."""
