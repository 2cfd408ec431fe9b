"""HTTP/1.0 and HTTP/1.1: detect the protocol and pair requests with responses into `base.Record`s.

Framing follows RFC 9112 as far as the captured bytes allow; what the capture cut off is never guessed.
The parser itself is compiled code (agent/podspan_agent/_http1.c); this module names it and detects.
"""

from __future__ import annotations

from podspan_agent import _http1

PROTOCOL = _http1.PROTOCOL
MAX_PENDING = _http1.MAX_PENDING
NO_RESPONSE = _http1.NO_RESPONSE

# Methods named by the semantic conventions; anything else is reported as `_OTHER`.
KNOWN_METHODS = frozenset(_http1.KNOWN_METHODS)
# detect() also accepts common WebDAV/cache methods, which are still HTTP/1 on the wire.
_DETECT_PREFIXES = tuple(f"{method} ".encode() for method in sorted(KNOWN_METHODS | {
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "PURGE",
}))
CONTEXT_HEADERS = frozenset(_http1.CONTEXT_HEADERS)

# Per-connection parser (base.Parser): keep-alive, pipelining, 1xx interim responses; requests wait in
# a FIFO of at most MAX_PENDING, beyond which a counted gap absorbs their responses. `counters` says
# what was lost; `pending` is never more than MAX_PENDING + 1.
Parser = _http1.Parser
# Whether a status line (HTTP/1.0 or 1.1, a three-digit code from 100) starts at data[pos].
_is_status_line = _http1.is_status_line


def detect(data: bytes) -> bool:
    """Cheap check of a connection's first bytes: an HTTP/1 request line or status line."""
    if data.startswith(b"HTTP/1.") and data[7:8] in (b"0", b"1") and data[8:9] == b" ":
        return True
    return data.startswith(_DETECT_PREFIXES) and data[:3] != b"PRI"
