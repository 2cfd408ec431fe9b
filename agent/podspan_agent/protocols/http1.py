"""HTTP/1.0 and HTTP/1.1: detect the protocol and pair requests with responses into `base.Record`s.

Framing follows RFC 9112 as far as the captured bytes allow; what the capture cut off is never guessed.
"""

from __future__ import annotations

import collections
import re
import sys

from podspan_agent.protocols import base, redact, routes

PROTOCOL = "http"
MAX_PENDING = 64
NO_RESPONSE = "no response"

# Methods named by the semantic conventions; anything else is reported as `_OTHER`.
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
                           "QUERY"})
# detect() also accepts common WebDAV/cache methods, which are still HTTP/1 on the wire.
_DETECT_PREFIXES = tuple(f"{method} ".encode() for method in sorted(KNOWN_METHODS | {
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "PURGE",
}))
CONTEXT_HEADERS = frozenset({"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                             "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"})
# Propagation headers grouped under a common prefix, so requests without them cost one find a group.
_CONTEXT_KEYS = tuple(
    (gate, tuple((name, f"\n{name}:") for name in sorted(CONTEXT_HEADERS) if f"\n{name}:".startswith(gate)))
    for gate in ("\ntrace", "\nb3:", "\nx-b3-")
)
_VERSIONS = {"HTTP/1.1": "1.1", "HTTP/1.0": "1.0"}
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,15}")
# What the version of a request line cut by the capture size can look like ("", "H", ..., "HTTP/1.").
_VERSION_PREFIXES = frozenset(version[:cut] for version in _VERSIONS for cut in range(len(version)))
# Skip marker for a message whose end is unknown: the rest of the direction is skipped until a run
# starts with a start line again.
_UNKNOWN = sys.maxsize


def detect(data: bytes) -> bool:
    """Cheap check of a connection's first bytes: an HTTP/1 request line or status line."""
    if data.startswith(b"HTTP/1.") and data[7:8] in (b"0", b"1") and data[8:9] == b" ":
        return True
    return data.startswith(_DETECT_PREFIXES) and data[:3] != b"PRI"


class _Request:
    """A request waiting for its response."""

    __slots__ = ("attributes", "context", "end_ns", "head", "name", "opens_tunnel", "size", "start_ns")

    def __init__(self, method: str, name: str, attributes: dict[str, base.AttributeValue],
                 context: dict[str, str], start_ns: int, end_ns: int, size: int) -> None:
        self.name = name
        self.attributes = attributes
        self.context = context
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.size = size
        self.head = method == "HEAD"
        self.opens_tunnel = method == "CONNECT"

    def record(self, end_ns: int, response_size: int, error: str | None) -> base.Record:
        return base.Record(PROTOCOL, self.name, self.start_ns, max(end_ns, self.start_ns), self.attributes,
                           error, self.context, self.size, response_size)


class _Gap:
    """Requests that were sent but not parsed (queue overflow, or beyond the captured bytes).

    `count` is None when unknown: then the gap absorbs responses until the end of a server run.
    """

    __slots__ = ("absorbed", "count")

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.absorbed = False


class _Head:
    """The start line and header block of one message; fields are looked up by name on demand.

    Looking up the few fields a parser needs costs a handful of C-level finds, much less than
    splitting every line; all fields are split only when headers are captured.
    """

    __slots__ = ("block", "body_end", "body_size", "complete", "end", "lower", "start_line")

    def __init__(self, data: bytes, pos: int) -> None:
        end = data.find(b"\r\n\r\n", pos)
        if end >= 0:
            stop, self.end = end + 2, end + 4
        else:
            end = data.find(b"\n\n", pos)  # tolerated bare-LF sender (RFC 9112 section 2.2)
            if end >= 0:
                stop, self.end = end + 1, end + 2
            else:  # cut by the capture size: keep only whole lines
                stop, self.end = data.rfind(b"\n", pos) + 1 or len(data), len(data)
        self.complete = end >= 0  # header block fully captured
        # Every field line starts after a "\n" (the first one after the start line's) and ends with one.
        self.block = data[pos:stop].decode("latin-1")
        self.start_line = self.block.partition("\n")[0].rstrip("\r")
        self.lower = self.block.lower()  # same offsets: Latin-1 case mapping is one char to one char
        self.body_end = _UNKNOWN  # offset just past the body; _UNKNOWN when it cannot be known
        self.body_size: int | None = None

    def value(self, key: str) -> str | None:
        """First value of the field whose `key` is "\\n<lower-case name>:"."""
        start = self.lower.find(key)
        if start < 0:
            return None
        start += len(key)
        return self.block[start:self.block.find("\n", start)].strip()

    def fields(self) -> list[tuple[str, str]]:
        """All (lower-case name, value) pairs in wire order."""
        pairs = []
        for line in self.block.split("\n")[1:]:
            name, sep, value = line.partition(":")
            if sep:
                pairs.append((name.strip().lower(), value.strip()))
        return pairs

    def frame(self, data: bytes, has_body: bool, until_close: bool) -> None:
        """Find where the body ends (Content-Length or chunked); leaves _UNKNOWN when impossible.

        `until_close`: with neither header, the body runs to the end of the connection (responses)
        rather than being empty (requests).
        """
        if not self.complete:
            return
        if not has_body:
            self.body_end = self.end
            return
        encoding = self.value("\ntransfer-encoding:") if "\ntransfer-encoding:" in self.lower else None
        if encoding is not None:
            if encoding.lower().endswith("chunked"):
                self._chunked(data)
            return
        length = self.value("\ncontent-length:")
        if length is None:
            if not until_close:
                self.body_end = self.end
            return
        if self.lower.count("\ncontent-length:") > 1 and len(
                {value for name, value in self.fields() if name == "content-length"}) > 1:
            return  # conflicting lengths: framing is unknowable
        if length.isdecimal() and len(length) < 19:
            self.body_size = int(length)
            self.body_end = self.end + self.body_size

    def _chunked(self, data: bytes) -> None:
        pos, total, limit = self.end, 0, len(data)
        while True:
            line_end = data.find(b"\r\n", pos, limit)
            if line_end < 0:
                return
            digits = data[pos:line_end].partition(b";")[0].strip()
            if not _HEX_RE.fullmatch(digits):
                return
            size = int(digits, 16)
            pos = line_end + 2
            if size == 0:
                break
            total += size
            pos += size + 2
            if pos > limit:
                return
        if data[pos:pos + 2] == b"\r\n":
            pos += 2
        else:
            trailer_end = data.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                return
            pos = trailer_end + 4
        self.body_end, self.body_size = pos, total


def _host(attributes: dict[str, base.AttributeValue], authority: str) -> None:
    authority = authority.rpartition("@")[2]  # never keep userinfo (user:password@)
    if authority.startswith("["):  # IPv6 literal
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest[:1] == ":" else ""
    else:
        host, _, port = authority.partition(":")
    if host:
        attributes["server.address"] = host
    if port.isdecimal() and len(port) < 6:
        attributes["server.port"] = int(port)


class Parser:
    """Per-connection HTTP/1 parser (base.Parser): keep-alive, pipelining, 1xx interim responses.

    Requests wait in a FIFO (HTTP/1 answers in order); at most MAX_PENDING of them, beyond that a
    counted gap absorbs their responses so later pairs stay aligned. `counters` says what was lost.
    """

    __slots__ = ("_client_skip", "_pending", "_server_skip", "_settings", "_skip_owner", "_tunnel",
                 "counters")

    def __init__(self, settings: base.CaptureSettings) -> None:
        self._settings = settings
        self._pending: collections.deque[_Request | _Gap] = collections.deque()
        self._client_skip = 0  # bytes of a request body still to come in later client runs
        self._server_skip = 0
        self._skip_owner: _Request | None = None  # the request whose body is being skipped
        self._tunnel = False  # after CONNECT or 101 Switching Protocols the bytes are not HTTP/1
        self.counters: collections.Counter[str] = collections.Counter()

    def feed(self, message: base.Message) -> list[base.Record]:
        if self._tunnel:
            return []
        try:
            if message.from_client:
                self._feed_client(message)
                return []
            return self._feed_server(message)
        except Exception:  # a parser bug must cost one run, never the agent
            self.counters["parser_errors"] += 1
            return []

    def flush(self) -> list[base.Record]:
        records = [entry.record(entry.end_ns, 0, NO_RESPONSE) for entry in self._pending
                   if isinstance(entry, _Request)]
        self.counters["requests_without_response"] += len(records)
        self._pending.clear()
        self._client_skip = self._server_skip = 0
        self._skip_owner = None
        return records

    @property
    def pending(self) -> int:
        """Queued requests and gaps; never more than MAX_PENDING + 1."""
        return len(self._pending)

    # -- client side --------------------------------------------------------------------------------

    def _feed_client(self, message: base.Message) -> None:
        data = message.data
        pos = 0
        if self._client_skip and not _is_request_line(data):
            pos = self._client_skip
            if self._skip_owner is not None:
                self._skip_owner.size += min(pos, message.size)
            if pos >= message.size:
                self._client_skip = pos - message.size if pos != _UNKNOWN else _UNKNOWN
                return
        self._client_skip = 0
        self._skip_owner = None
        end = pos
        while pos < len(data):
            head = _Head(data, pos)
            request = self._request(head, message)
            if request is None:
                self.counters["client_runs_unparsed"] += 1
                return
            head.frame(data, True, False)
            end = head.body_end
            request.size = min(end, message.size) - pos
            self._enqueue(request, head)
            pos = end
        if end > message.size:
            self._client_skip = end - message.size if end != _UNKNOWN else _UNKNOWN
            self._skip_owner = self._last_request()
        elif end < message.size and pos >= len(data):
            # The run goes on past the captured bytes with requests we cannot see.
            self.counters["requests_unseen_runs"] += 1
            self._add_gap(None)

    def _request(self, head: _Head, message: base.Message) -> _Request | None:
        method, sep, rest = head.start_line.partition(" ")
        target, sep2, version_text = rest.partition(" ")
        version = _VERSIONS.get(version_text)
        if version is None:
            # Only a request line cut by the capture size may lack its version, and then only a known
            # method is convincing enough.
            if (head.complete or not sep or method not in KNOWN_METHODS or not message.truncated
                    or version_text not in _VERSION_PREFIXES):
                return None
        elif method not in KNOWN_METHODS and not _TOKEN_RE.fullmatch(method):
            return None
        attributes: dict[str, base.AttributeValue] = {}
        if method in KNOWN_METHODS:
            attributes["http.request.method"] = method
            label = method
        else:
            attributes["http.request.method"] = "_OTHER"
            attributes["http.request.method_original"] = method
            label = "HTTP"
        route = self._target(attributes, method, target, complete=bool(sep2))
        name = f"{label} {route}" if route else label
        if version is not None:
            attributes["network.protocol.version"] = version
        host = head.value("\nhost:")
        if host is not None and "server.address" not in attributes:  # absolute-form targets name it
            _host(attributes, host)
        user_agent = head.value("\nuser-agent:")
        if user_agent is not None:
            attributes["user_agent.original"] = user_agent
        context: dict[str, str] = {}
        for gate, keys in _CONTEXT_KEYS:
            if gate in head.lower:  # one find instead of a lookup per header name
                for context_name, key in keys:
                    value = head.value(key)
                    if value is not None:
                        context[context_name] = value
        if self._settings.headers:
            for field, value in head.fields():
                _add_header(attributes, "http.request.header.", field, value)
        return _Request(method, name, attributes, context, message.start_ns, message.end_ns, 0)

    def _target(self, attributes: dict[str, base.AttributeValue], method: str, target: str,
                complete: bool) -> str:
        """Add url.* attributes for a request target; return the route ("" when there is none)."""
        if method == "CONNECT":
            _host(attributes, target)
            return ""
        attributes["url.scheme"] = "http"
        if target[:1] != "/":
            scheme, sep, rest = target.partition("://")
            if not sep:
                return "" if target != "*" else "*"  # asterisk-form (OPTIONS *) or garbage
            attributes["url.scheme"] = scheme.lower()
            authority, slash, target = rest.partition("/")
            _host(attributes, authority)
            target = slash + target
        path, has_query, query = target.partition("?")
        path = path or "/"
        attributes["url.path"] = path
        if has_query and self._settings.query:
            attributes["url.query"] = redact.query(query)
        if not complete and not has_query:
            # The path itself was cut: template only the whole segments and mark the rest.
            route = routes.template(path.rpartition("/")[0], self._settings.route_patterns)
            route = f"{route.rstrip('/')}/{routes.MORE}"
        else:
            route = routes.template(path, self._settings.route_patterns)
        attributes["http.route"] = route
        return route

    def _enqueue(self, request: _Request, head: _Head) -> None:
        if head.body_size is not None:
            request.attributes["http.request.body.size"] = head.body_size
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self.counters["requests_dropped_queue_full"] += 1
            self._add_gap(1)
            return
        pending.append(request)

    def _add_gap(self, count: int | None) -> None:
        last = self._pending[-1] if self._pending else None
        if isinstance(last, _Gap):
            last.count = None if count is None or last.count is None else last.count + count
        else:
            self._pending.append(_Gap(count))

    def _last_request(self) -> _Request | None:
        last = self._pending[-1] if self._pending else None
        return last if isinstance(last, _Request) else None

    # -- server side --------------------------------------------------------------------------------

    def _feed_server(self, message: base.Message) -> list[base.Record]:
        data = message.data
        pos = 0
        if self._server_skip and not _is_status_line(data, 0):
            pos = self._server_skip
            if pos >= message.size:
                self._server_skip = pos - message.size if pos != _UNKNOWN else _UNKNOWN
                return []
        self._server_skip = 0
        records: list[base.Record] = []
        end = pos
        while pos < len(data):
            if not _is_status_line(data, pos):
                self.counters["server_runs_unparsed"] += 1
                break
            head = _Head(data, pos)
            end = self._response(head, data, pos, message, records)
            if self._tunnel:
                return records
            pos = end
        if end > message.size:
            self._server_skip = end - message.size if end != _UNKNOWN else _UNKNOWN
        if message.truncated and (end < message.size or end == _UNKNOWN) and pos >= len(data):
            self._unseen_responses(message, records)
        self._close_absorbing_gap()
        return records

    def _response(self, head: _Head, data: bytes, pos: int, message: base.Message,
                  records: list[base.Record]) -> int:
        """Pair one response with the oldest request; return the offset just past it."""
        status = int(head.start_line[9:12])  # three ASCII digits, checked by _is_status_line
        request = self._pending[0] if self._pending else None
        bodiless = status < 200 or status in (204, 304) or (isinstance(request, _Request) and request.head)
        head.frame(data, not bodiless, True)
        end = head.body_end
        if 100 <= status < 200 and status != 101:
            return end  # interim response (100 Continue, 103 Early Hints): the exchange goes on
        if request is None:
            self.counters["responses_without_request"] += 1
            return end
        if isinstance(request, _Gap):
            self._absorb(request)  # the response to a request we never parsed
            return end
        self._pending.popleft()
        attributes = request.attributes
        attributes["http.response.status_code"] = status
        if head.body_size is not None and not bodiless:
            attributes["http.response.body.size"] = head.body_size
        if self._settings.headers:
            for field, value in head.fields():
                _add_header(attributes, "http.response.header.", field, value)
        size = min(end, message.size) - pos
        records.append(request.record(message.end_ns, size, f"HTTP {status}" if status >= 500 else None))
        if status == 101 or (request.opens_tunnel and 200 <= status < 300):
            self._tunnel = True
            records.extend(self.flush())
        return end

    def _absorb(self, gap: _Gap) -> None:
        self.counters["responses_to_unparsed_requests"] += 1
        if gap.count is None:
            gap.absorbed = True
            return
        gap.count -= 1
        if gap.count == 0:
            self._pending.popleft()

    def _unseen_responses(self, message: base.Message, records: list[base.Record]) -> None:
        # The run may go on past the captured bytes with more responses. Every queued request was sent
        # before this run began, and a server run lasts until the client speaks again, so the answers
        # are most likely in there: report them, without the status we cannot see.
        for entry in self._pending:
            if isinstance(entry, _Request):
                records.append(entry.record(message.end_ns, 0, None))
                self.counters["responses_unseen"] += 1
        self._pending.clear()

    def _close_absorbing_gap(self) -> None:
        # An unknown-size gap ends with the server run that answered it.
        entry = self._pending[0] if self._pending else None
        if isinstance(entry, _Gap) and entry.absorbed:
            self._pending.popleft()


def _is_request_line(data: bytes) -> bool:
    line_end = data.find(b"\r\n", 0, 8200)
    if line_end < 0:
        return False
    return data[:line_end].endswith((b" HTTP/1.1", b" HTTP/1.0")) and b" " in data[:line_end - 9]


def _is_status_line(data: bytes, pos: int) -> bool:
    # RFC 9110: a status code is three digits from 100 to 599 in use; anything from 100 to 999 is kept.
    return (data.startswith(b"HTTP/1.", pos) and data[pos + 7:pos + 8] in (b"0", b"1")
            and data[pos + 8:pos + 9] == b" " and data[pos + 9:pos + 12].isdigit() and data[pos + 9:pos + 10] != b"0")


def _add_header(attributes: dict[str, base.AttributeValue], prefix: str, name: str, value: str) -> None:
    key = prefix + name
    value = redact.header(name, value)
    previous = attributes.get(key)
    attributes[key] = value if previous is None else f"{previous},{value}"
