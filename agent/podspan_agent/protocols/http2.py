"""HTTP/2 cleartext (h2c) parser: frames, HPACK, streams -> HTTP and gRPC records.

One `Parser` per connection; it decodes both directions' header blocks with their own
HPACK state and reports one record per stream once the response ends.
"""

from __future__ import annotations

import collections
import dataclasses

from podspan_agent.protocols import base, hpack, redact

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_STREAMS = 256
MAX_HEADER_BLOCK = 65536
# With capture.headers: regular headers kept per stream and direction, and the characters kept of each.
MAX_CAPTURED_HEADERS = 16
MAX_CAPTURED_VALUE = 128
_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# Flags each frame type may carry and whether it lives on stream 0 (None: either).
_FRAME_RULES: dict[int, tuple[int, bool | None]] = {
    DATA: (FLAG_END_STREAM | FLAG_PADDED, False),
    HEADERS: (FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY, False),
    PRIORITY: (0, False),
    RST_STREAM: (0, False),
    SETTINGS: (FLAG_ACK, True),
    PUSH_PROMISE: (FLAG_END_HEADERS | FLAG_PADDED, False),
    PING: (FLAG_ACK, True),
    GOAWAY: (0, True),
    WINDOW_UPDATE: (0, None),
    CONTINUATION: (FLAG_END_HEADERS, False),
}
_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}

ERROR_CODES = (
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
)
GRPC_STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
CONTEXT_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    }
)
# Only these survive in per-stream state, which keeps a stream's memory small.
_KEPT_HEADERS = CONTEXT_HEADERS | {":method", ":path", ":scheme", ":status", "content-type", "grpc-status"}


def _frame_header(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the frame header at `pos`."""
    length = int.from_bytes(data[pos : pos + 3], "big")
    stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
    return length, data[pos + 3], data[pos + 4], stream_id


def _plausible_frame(data: bytes, pos: int, from_client: bool) -> int:
    """Length of a strictly valid frame at `pos` (header + payload), or -1."""
    if pos + FRAME_HEADER_SIZE > len(data) or data[pos + 5] & 0x80:
        return -1
    length, kind, flags, stream_id = _frame_header(data, pos)
    rules = _FRAME_RULES.get(kind)
    if rules is None or length > DEFAULT_MAX_FRAME_SIZE or flags & ~rules[0]:
        return -1
    on_zero = rules[1]
    if on_zero is not None and on_zero != (stream_id == 0):
        return -1
    if _FIXED_LENGTH.get(kind, length) != length:
        return -1
    if kind == SETTINGS and (length % 6 or (flags & FLAG_ACK and length)):
        return -1
    if kind == GOAWAY and length < 8:
        return -1
    if kind == HEADERS and from_client and stream_id % 2 == 0:
        return -1  # clients open odd-numbered streams
    return FRAME_HEADER_SIZE + length


def detect(data: bytes, from_client: bool = True) -> bool:
    """The client preface, or (capture joined late) a run made entirely of valid frames.

    Without the preface we demand at least two valid frames that tile the data exactly,
    or a single frame filling it exactly that is a HEADERS or SETTINGS frame.
    """
    if from_client and data.startswith(PREFACE):
        return True
    pos = 0
    kinds: list[int] = []
    while pos < len(data):
        size = _plausible_frame(data, pos, from_client)
        if size < 0 or pos + size > len(data):
            return False
        kinds.append(data[pos + 3])
        pos += size
    return len(kinds) >= 2 or (len(kinds) == 1 and kinds[0] in (HEADERS, SETTINGS))


@dataclasses.dataclass(slots=True)
class _Stream:
    start_ns: int
    end_ns: int
    request: dict[str, str]
    response: dict[str, str] = dataclasses.field(default_factory=dict)
    request_size: int = 0
    response_size: int = 0
    responded: bool = False
    reset: str | None = None
    # capture.headers only: regular headers, credentials already redacted.
    request_captured: dict[str, str] = dataclasses.field(default_factory=dict)
    response_captured: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Direction:
    """Per-direction framing state."""

    decoder: hpack.Decoder
    carry: bytes = b""  # head of a frame that continues in this direction's next run
    skip: int = 0  # payload bytes of a frame already handled that continue in the next run
    # An unfinished header block: (stream id, frame type, flags of the opening frame, fragment).
    block: tuple[int, int, int, bytearray] | None = None


class Parser:
    """Per-connection HTTP/2 parser: bounded streams, never raises."""

    def __init__(self, settings: base.CaptureSettings | None = None, max_streams: int = MAX_STREAMS) -> None:
        self.settings = settings or base.CaptureSettings()
        self.max_streams = max_streams
        # Until the preface is seen the HPACK tables' contents are unknown.
        self._client = _Direction(hpack.Decoder(synchronised=False))
        self._server = _Direction(hpack.Decoder(synchronised=False))
        self._streams: collections.OrderedDict[int, _Stream] = collections.OrderedDict()
        self._blocks_seen = False
        self.dropped = 0  # streams evicted or refused because of the bound
        self.lost_runs = 0  # runs whose uncaptured tail held whole frames

    @property
    def synchronised(self) -> bool:
        return self._client.decoder.synchronised and self._server.decoder.synchronised

    @property
    def state_size(self) -> int:
        """Streams held: bounded by `max_streams`."""
        return len(self._streams)

    def feed(self, message: base.Message) -> list[base.Record]:
        records: list[base.Record] = []
        try:
            self._feed(message, records)
        except Exception:  # a parser must never raise: forget this direction's partial state instead
            self._reset_direction(message.from_client)
        return records

    def flush(self) -> list[base.Record]:
        records = []
        for stream in self._streams.values():
            if not stream.responded and stream.reset is None:
                stream.reset = "no response"
            records.append(self._record(stream))
        self._streams.clear()
        return records

    def _reset_direction(self, from_client: bool) -> None:
        direction = self._client if from_client else self._server
        direction.carry, direction.skip, direction.block = b"", 0, None
        direction.decoder.desynchronise()

    def _feed(self, message: base.Message, records: list[base.Record]) -> None:
        direction = self._client if message.from_client else self._server
        data, run_size = message.data, message.size
        if direction.skip:
            if direction.skip >= run_size:
                direction.skip -= run_size
                return
            data, run_size = data[direction.skip :], run_size - direction.skip
            direction.skip = 0
        if message.from_client and not self._blocks_seen and data.startswith(PREFACE):
            self._client.decoder = hpack.Decoder()
            self._server.decoder = hpack.Decoder()
            data, run_size = data[len(PREFACE) :], run_size - len(PREFACE)
        lost = run_size - len(data)
        if direction.carry:
            data = direction.carry + data
            direction.carry = b""
        pos = 0
        while pos + FRAME_HEADER_SIZE <= len(data):
            length, kind, flags, stream_id = _frame_header(data, pos)
            end = pos + FRAME_HEADER_SIZE + length
            complete = end <= len(data)
            if not complete and not lost and kind != DATA:
                self._carry(direction, data[pos:], end - len(data))
                return
            payload = data[pos + FRAME_HEADER_SIZE : end]
            self._frame(direction, message, kind, flags, stream_id, payload, complete, length, records)
            if not complete:
                beyond = end - len(data)  # frame bytes neither captured nor carried
                if beyond > lost:
                    direction.skip = beyond - lost
                elif beyond < lost:
                    self._lost_frames(direction)
                return
            pos = end
        if lost:
            self._lost_frames(direction)
        elif pos < len(data):
            direction.carry = data[pos:]

    def _carry(self, direction: _Direction, head: bytes, missing: int) -> None:
        if len(head) + missing <= FRAME_HEADER_SIZE + MAX_HEADER_BLOCK:
            direction.carry = head
        else:
            direction.skip = missing
            direction.decoder.desynchronise()

    def _lost_frames(self, direction: _Direction) -> None:
        # Frames we never saw may have held header blocks: the HPACK state is now a guess.
        self.lost_runs += 1
        direction.block = None
        direction.decoder.desynchronise()

    def _frame(
        self,
        direction: _Direction,
        message: base.Message,
        kind: int,
        flags: int,
        stream_id: int,
        payload: bytes,
        complete: bool,
        length: int,
        records: list[base.Record],
    ) -> None:
        if kind == DATA:
            self._data(message, flags, stream_id, length, records)
        elif kind in (HEADERS, PUSH_PROMISE):
            payload = self._strip_padding(kind, flags, payload, complete)
            direction.block = (stream_id, kind, flags, bytearray(payload))
            if flags & FLAG_END_HEADERS or not complete:
                self._end_block(direction, message, complete, records)
        elif kind == CONTINUATION:
            if direction.block is None or direction.block[0] != stream_id:
                direction.decoder.desynchronise()  # its HEADERS frame was missed
                return
            direction.block[3].extend(payload)
            if flags & FLAG_END_HEADERS or not complete:
                self._end_block(direction, message, complete, records)
            elif len(direction.block[3]) > MAX_HEADER_BLOCK:
                direction.block = None
                direction.decoder.desynchronise()
        elif kind == RST_STREAM and len(payload) == 4:
            stream = self._streams.get(stream_id)
            if stream is not None:
                code = int.from_bytes(payload, "big")
                stream.reset = "RST_STREAM " + (ERROR_CODES[code] if code < len(ERROR_CODES) else str(code))
                stream.end_ns = message.end_ns
                records.append(self._finish(stream_id))
        elif kind == GOAWAY and len(payload) >= 4 and not message.from_client:
            # Streams above the last processed id were never handled; the client retries them.
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for refused in [sid for sid in self._streams if sid > last]:
                self._streams[refused].reset = "GOAWAY"
                self._streams[refused].end_ns = message.end_ns
                records.append(self._finish(refused))

    @staticmethod
    def _strip_padding(kind: int, flags: int, payload: bytes, complete: bool) -> bytes:
        start = 0
        end = len(payload)
        if flags & FLAG_PADDED and payload:
            start = 1
            if complete:
                end = max(1, len(payload) - payload[0])
        if kind == HEADERS and flags & FLAG_PRIORITY:
            start += 5
        elif kind == PUSH_PROMISE:
            start += 4  # promised stream id
        return payload[start:end]

    def _data(
        self, message: base.Message, flags: int, stream_id: int, length: int, records: list[base.Record]
    ) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if message.from_client:
            stream.request_size += length
        else:
            stream.response_size += length
            stream.end_ns = message.end_ns
            if flags & FLAG_END_STREAM:
                stream.end_ns = message.end_ns
                records.append(self._finish(stream_id))

    def _end_block(
        self, direction: _Direction, message: base.Message, complete: bool, records: list[base.Record]
    ) -> None:
        assert direction.block is not None
        stream_id, kind, flags, fragment = direction.block
        direction.block = None
        self._blocks_seen = True
        block = direction.decoder.decode(bytes(fragment), complete=complete)
        if kind == PUSH_PROMISE:
            return  # decoded only to keep the HPACK table in step
        headers = {name: value for name, value in reversed(block.headers) if name in _KEPT_HEADERS}
        captured = _captured(block.headers) if self.settings.headers else {}
        stream = self._streams.get(stream_id)
        if message.from_client:
            if stream is None:
                self._open(stream_id, _Stream(message.start_ns, message.end_ns, headers, request_captured=captured))
            return
        if stream is None:
            return  # the request was missed: nothing meaningful to report
        stream.end_ns = message.end_ns
        if stream.responded:
            stream.response.update(headers)  # trailers
            stream.response_captured.update(captured)
        elif not headers.get(":status", "").startswith("1"):  # 1xx responses are not final
            stream.response = headers
            stream.response_captured = captured
            stream.responded = True
        if flags & FLAG_END_STREAM:
            stream.end_ns = message.end_ns
            records.append(self._finish(stream_id))

    def _open(self, stream_id: int, stream: _Stream) -> None:
        if len(self._streams) >= self.max_streams:
            self._streams.popitem(last=False)
            self.dropped += 1
        self._streams[stream_id] = stream

    def _finish(self, stream_id: int) -> base.Record:
        return self._record(self._streams.pop(stream_id))

    def _record(self, stream: _Stream) -> base.Record:
        request, response = stream.request, stream.response
        context = {name: value for name, value in request.items() if name in CONTEXT_HEADERS}
        content_type = request.get("content-type") or response.get("content-type") or ""
        if content_type.startswith("application/grpc"):
            name, attributes, error = _grpc(request, response)
            protocol = "grpc"
        else:
            name, attributes, error = _http(request, response, self.settings.query)
            protocol = "http2"
        # gRPC metadata are HTTP/2 headers: the same keys, so a profile's header list selects both.
        for prefix, captured in zip(_HEADER_PREFIXES, (stream.request_captured, stream.response_captured), strict=True):
            for header, value in captured.items():
                attributes[prefix + header] = value
        return base.Record(
            protocol=protocol,
            name=name,
            start_ns=stream.start_ns,
            end_ns=max(stream.start_ns, stream.end_ns),
            attributes=attributes,
            error=error or stream.reset,
            context_headers=context,
            request_size=stream.request_size,
            response_size=stream.response_size,
        )


def _status_code(response: dict[str, str]) -> int | None:
    status = response.get(":status", "")
    return int(status) if status.isdigit() and len(status) == 3 else None


def _captured(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The regular headers of a block to record (capture.headers): credentials redacted before they
    are stored, repeated names joined with ',' as HTTP/1 does, bounded in count and length."""
    out: dict[str, str] = {}
    for raw_name, value in headers:
        name = raw_name.lower()  # HTTP/2 requires lower case; a peer that breaks the rule must not evade redaction
        if name.startswith(":") or (name not in out and len(out) >= MAX_CAPTURED_HEADERS):
            continue
        value = redact.header(name, value)
        out[name] = (value if name not in out else f"{out[name]},{value}")[:MAX_CAPTURED_VALUE]
    return out


def _http(
    request: dict[str, str], response: dict[str, str], query: bool
) -> tuple[str, dict[str, base.AttributeValue], str | None]:
    attributes: dict[str, base.AttributeValue] = {
        "network.protocol.name": "http",
        "network.protocol.version": "2",
    }
    method = request.get(":method")
    if method:
        attributes["http.request.method"] = method
    path = request.get(":path")
    if path:
        attributes["url.path"], has_query, raw_query = path.partition("?")
        if has_query and raw_query and query:
            attributes["url.query"] = redact.query(raw_query)
    scheme = request.get(":scheme")
    if scheme:
        attributes["url.scheme"] = scheme
    status = _status_code(response)
    error = None
    if status is not None:
        attributes["http.response.status_code"] = status
        # Only 5xx: a 4xx is the client's mistake, not a failure of the traced server.
        if status >= 500:
            error = str(status)
    return method or "HTTP", attributes, error


def _grpc(
    request: dict[str, str], response: dict[str, str]
) -> tuple[str, dict[str, base.AttributeValue], str | None]:
    attributes: dict[str, base.AttributeValue] = {"rpc.system": "grpc"}
    path = request.get(":path", "")
    service, _, method = path.lstrip("/").partition("/")
    name = "grpc"
    if service and method:
        attributes["rpc.service"] = service
        attributes["rpc.method"] = method
        name = f"{service}/{method}"
    error = None
    grpc_status = response.get("grpc-status", "")
    if grpc_status.isdigit():
        code = int(grpc_status)
        attributes["rpc.grpc.status_code"] = code
        if code:
            error = GRPC_STATUS_NAMES[code] if code < len(GRPC_STATUS_NAMES) else str(code)
    else:
        status = _status_code(response)
        if status is not None and status != 200:
            error = str(status)
    return name, attributes, error
