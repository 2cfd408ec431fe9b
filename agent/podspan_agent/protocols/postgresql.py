"""PostgreSQL wire protocol v3: simple and extended queries paired into `Record`s.

Prepared statements and portals are remembered per connection (bounded), so an Execute
of a statement parsed in an earlier message still reports its query text.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from podspan_agent.protocols import base, pairing, redact, sql

SYSTEM = "postgresql"
MAX_PENDING = 1024
MAX_STATEMENTS = 256
MAX_PORTALS = 64
MAX_PARAMETERS = 32
MAX_PARAMETER_TEXT = 64
MAX_ERROR_TEXT = 256
_NO_STATEMENT = sql.Statement("", None, None)  # a request whose query text was not seen
MAX_MESSAGE = 1 << 30

_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_FRONTEND_TYPES = frozenset(b"QPBEDSCHXFpdcf")
_FRONTEND_KINDS = frozenset(bytes([kind]) for kind in _FRONTEND_TYPES)
# Mid-stream detection: Sync, Flush, Terminate and CopyDone carry no body, and a client's first messages
# are far below 1 MiB. Without these bounds any length-prefixed binary whose second to fifth bytes read as
# a huge length passes (pymongo's 326-byte handshake starts b"F\x01\0\0": a 16 MiB FunctionCall).
_BODYLESS_TYPES = frozenset(b"SHXc")
_DETECT_MAX_LENGTH = 1 << 20
_BACKEND_TYPES = frozenset(b"RSKZCEINTD123ntsGHWdcAv")
# Tags whose row count is the number of rows returned (INSERT/UPDATE/DELETE count affected rows).
_RETURNING_TAGS = frozenset({"SELECT", "FETCH"})


def _untyped_message(data: bytes) -> int | None:
    """The request code of a startup-phase message (no type byte), if `data` starts with one."""
    if len(data) < 8:
        return None
    length, code = struct.unpack_from(">II", data)
    if code == _PROTOCOL_3 and 8 < length < 10000:
        return code
    if code in (_SSL_REQUEST, _GSSENC_REQUEST) and length == 8:
        return code
    if code == _CANCEL_REQUEST and length == 16:
        return code
    return None


def detect(data: bytes) -> bool:
    """A client's first bytes: StartupMessage/SSLRequest, or a run of well-formed frontend messages."""
    if _untyped_message(data) is not None:
        return True
    pos = 0
    while pos + 5 <= len(data):
        kind, length = data[pos], int.from_bytes(data[pos + 1 : pos + 5], "big")
        if kind not in _FRONTEND_TYPES or not 4 <= length < _DETECT_MAX_LENGTH:
            return False
        if kind in _BODYLESS_TYPES and length != 4:
            return False
        if kind == ord("Q"):
            body = data[pos + 5 : pos + 1 + length]
            end_ok = pos + 1 + length > len(data) or body.endswith(b"\x00")
            if not end_ok or not body[:16].rstrip(b"\x00").decode("utf-8", "replace").isprintable():
                return False
        pos += 1 + length
    return pos == len(data) or (pos > len(data) and len(data) >= 5)


class _Kind(enum.Enum):
    SIMPLE = "simple"  # a Query message: one record when ReadyForQuery arrives
    PARSE = "parse"  # a Parse message: a record only if it fails
    EXECUTE = "execute"  # an Execute message: one record when its command completes
    SYNC = "sync"  # end of an extended-protocol batch, answered by ReadyForQuery
    UNKNOWN = "unknown"  # uncaptured client messages up to the next ReadyForQuery


@dataclasses.dataclass(slots=True)
class _Request:
    kind: _Kind
    start_ns: int
    size: int = 0
    statement: sql.Statement | None = None
    parameters: tuple[str | None, ...] = ()
    tag: str | None = None
    error: tuple[str, str] | None = None  # (SQLSTATE, message)


@dataclasses.dataclass(slots=True, frozen=True)
class _Portal:
    statement: sql.Statement | None
    parameters: tuple[str | None, ...]


def _cstring(data: bytes, pos: int, end: int) -> tuple[str, int]:
    """A NUL-terminated string within data[pos:end] and the offset after it (end if unterminated)."""
    stop = data.find(b"\x00", pos, end)
    if stop < 0:
        return data[pos:end].decode("utf-8", "replace"), end
    return data[pos:stop].decode("utf-8", "replace"), stop + 1


def _error_fields(body: bytes) -> tuple[str, str]:
    """SQLSTATE and message of an ErrorResponse body (both best effort on cut-off bodies)."""
    code, text, pos = "", "", 0
    while pos < len(body) and body[pos] != 0:
        field = body[pos]
        value, pos = _cstring(body, pos + 1, len(body))
        if field == ord("C"):
            code = value
        elif field == ord("M"):
            text = value
    return code, pairing.printable(text.encode(), MAX_ERROR_TEXT)


class Parser:
    """Per-connection PostgreSQL parser."""

    def __init__(self, settings: base.CaptureSettings) -> None:
        self._settings = settings
        self._pending: pairing.PendingQueue[_Request] = pairing.PendingQueue(MAX_PENDING)
        self._statements: pairing.BoundedDict[str, sql.Statement] = pairing.BoundedDict(MAX_STATEMENTS)
        self._portals: pairing.BoundedDict[str, _Portal] = pairing.BoundedDict(MAX_PORTALS)
        self._namespace: str | None = None
        self._awaiting_encryption_reply = False
        self._encrypted = False
        self._lost = 0

    @property
    def dropped(self) -> int:
        """Exchanges or statements that could not be reported or remembered."""
        return self._pending.dropped + self._statements.dropped + self._portals.dropped + self._lost

    @property
    def state_size(self) -> int:
        return len(self._pending) + len(self._statements) + len(self._portals)

    def feed(self, message: base.Message) -> list[base.Record]:
        if message.from_client:
            self._feed_client(message)
            return []
        return self._feed_server(message)

    def flush(self) -> list[base.Record]:
        self._pending.drop_all()
        return []

    # -- client side ------------------------------------------------------------------------

    def _feed_client(self, message: base.Message) -> None:
        data, pos, kind = message.data, 0, 0
        if self._encrypted and _untyped_message(data) is None:
            return
        while pos < message.size:
            code = _untyped_message(data[pos:]) if data[pos : pos + 1] == b"\x00" else None
            if code is not None:
                length = int.from_bytes(data[pos : pos + 4], "big")
                self._startup(code, data[pos + 8 : pos + length])
                pos += length
                continue
            length = int.from_bytes(data[pos + 1 : pos + 5], "big") if pos + 5 <= len(data) else 0
            if data[pos : pos + 1] not in _FRONTEND_KINDS or not 4 <= length < MAX_MESSAGE:
                # A long COPY FROM STDIN stream is CopyData to its end; anything else that was
                # not captured may hold requests, which a barrier stands for until ReadyForQuery.
                if kind != ord("d"):
                    self._pending.push(_Request(_Kind.UNKNOWN, message.start_ns))
                return
            kind = data[pos]
            end = pos + 1 + length
            self._client_message(kind, data[pos + 5 : min(end, len(data))], message, length + 1)
            pos = end

    def _startup(self, code: int, body: bytes) -> None:
        # A plain StartupMessage after TLS means capture sees decrypted bytes (e.g. via uprobes).
        self._encrypted = False
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            self._awaiting_encryption_reply = True
        elif code == _PROTOCOL_3:
            pos, params = 0, {}
            while pos < len(body) and body[pos] != 0:
                key, pos = _cstring(body, pos, len(body))
                params[key], pos = _cstring(body, pos, len(body))
            self._namespace = params.get("database") or params.get("user") or self._namespace

    def _client_message(self, kind: int, body: bytes, message: base.Message, size: int) -> None:
        if kind == ord("Q"):
            text, _ = _cstring(body, 0, len(body))
            self._pending.push(_Request(_Kind.SIMPLE, message.start_ns, size, sql.describe(text)))
        elif kind == ord("P"):
            name, pos = _cstring(body, 0, len(body))
            text, _ = _cstring(body, pos, len(body))
            parsed = sql.describe(text)  # once per prepared statement, however often it runs
            self._statements.put(name, parsed)
            self._pending.push(_Request(_Kind.PARSE, message.start_ns, size, parsed))
        elif kind == ord("B"):
            portal, pos = _cstring(body, 0, len(body))
            statement, pos = _cstring(body, pos, len(body))
            parameters = self._bind_parameters(body, pos) if self._settings.statement_parameters else ()
            self._portals.put(portal, _Portal(self._statements.get(statement), parameters))
        elif kind == ord("E"):
            bound = self._portals.get(_cstring(body, 0, len(body))[0])
            stored, parameters = (bound.statement, bound.parameters) if bound else (None, ())
            self._pending.push(_Request(_Kind.EXECUTE, message.start_ns, size, stored, parameters))
        elif kind == ord("S"):
            self._pending.push(_Request(_Kind.SYNC, message.start_ns, size))
        elif kind == ord("C") and body[:1] == b"S":
            self._statements.pop(_cstring(body, 1, len(body))[0])
        # Describe, Flush, Terminate, COPY data and authentication carry nothing to report.

    @staticmethod
    def _bind_parameters(body: bytes, pos: int) -> tuple[str | None, ...]:
        """Text-format Bind parameters (binary ones are shown as None), as far as captured."""
        try:
            (n_formats,) = struct.unpack_from(">H", body, pos)
            formats = struct.unpack_from(f">{n_formats}H", body, pos + 2)
            pos += 2 + 2 * n_formats
            (count,) = struct.unpack_from(">H", body, pos)
            pos += 2
            values: list[str | None] = []
            for index in range(min(count, MAX_PARAMETERS)):
                (length,) = struct.unpack_from(">i", body, pos)
                pos += 4
                fmt = formats[0] if n_formats == 1 else formats[index] if index < n_formats else 0
                raw = body[pos : pos + length] if length >= 0 else None
                values.append(None if raw is None or fmt else pairing.printable(raw, MAX_PARAMETER_TEXT))
                pos += max(length, 0)
        except (struct.error, IndexError):
            return ()  # the Bind message was cut off by the capture size
        return tuple(values)

    # -- server side ------------------------------------------------------------------------

    def _feed_server(self, message: base.Message) -> list[base.Record]:
        data, pos, records = message.data, 0, list[base.Record]()
        if self._awaiting_encryption_reply and data[:1] in (b"N", b"S", b"G"):
            self._awaiting_encryption_reply = False
            # 'S'/'G' mean TLS or GSS encryption follows: nothing more is readable on this path.
            self._encrypted = data[:1] != b"N"
            pos = 1
        if self._encrypted:
            return records
        while pos < message.size:
            if pos + 5 > len(data) or data[pos] not in _BACKEND_TYPES:
                break
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if not 4 <= length < MAX_MESSAGE:
                break
            end = pos + 1 + length
            self._server_message(data[pos], data[pos + 5 : min(end, len(data))], message, records)
            pos = end
        if pos < message.size:
            self._unknown_tail(message, records)
        return records

    def _server_message(self, kind: int, body: bytes, message: base.Message,
                        records: list[base.Record]) -> None:
        if kind == ord("1"):
            head = self._pending.peek()
            if head is not None and head.kind is _Kind.PARSE:
                self._pending.pop()
        elif kind in b"CIs":
            self._command_done(pairing.printable(body.rstrip(b"\x00"), 64) if kind == ord("C") else None,
                               message, records)
        elif kind == ord("E"):
            code, text = _error_fields(body)
            # The message quotes the offending value ('invalid input syntax ...: "abc"'), a statement's value.
            self._failed((code, text if self._settings.statement_parameters else redact.error_message(text)),
                         message, records)
        elif kind == ord("Z"):
            head = self._pending.peek()
            while head is not None and head.kind is _Kind.PARSE:
                self._pending.pop()
                head = self._pending.peek()
            if head is not None:
                self._pending.pop()
                if head.kind is _Kind.SIMPLE:
                    records.append(self._record(head, message))

    def _command_done(self, tag: str | None, message: base.Message, records: list[base.Record]) -> None:
        head = self._pending.peek()
        while head is not None and head.kind is _Kind.PARSE:
            self._pending.pop()
            head = self._pending.peek()
        if head is None or head.kind in (_Kind.SYNC, _Kind.UNKNOWN):
            self._lost += 1
        elif head.kind is _Kind.SIMPLE:
            head.tag = head.tag or tag  # a multi-statement query reports its first statement
        else:
            self._pending.pop()
            head.tag = tag
            records.append(self._record(head, message))

    def _failed(self, error: tuple[str, str], message: base.Message, records: list[base.Record]) -> None:
        head = self._pending.peek()
        if head is None or head.kind in (_Kind.SYNC, _Kind.UNKNOWN):
            return  # e.g. a startup failure (wrong password): there is no query to report
        if head.kind is _Kind.SIMPLE:
            head.error = error
            return
        self._pending.pop()
        head.error = error
        records.append(self._record(head, message))
        # The server skips the rest of the batch up to Sync: those requests never ran.
        while (head := self._pending.peek()) is not None and head.kind in (_Kind.PARSE, _Kind.EXECUTE):
            self._pending.pop()

    def _unknown_tail(self, message: base.Message, records: list[base.Record]) -> None:
        """The rest of the run was not captured: it most likely finishes the current batch."""
        head = self._pending.pop()
        while head is not None and head.kind is _Kind.PARSE:
            head = self._pending.pop()
        if head is None:
            return
        if head.kind in (_Kind.SIMPLE, _Kind.EXECUTE):
            records.append(self._record(head, message))
        # Later requests may or may not be answered by the lost bytes: they can no longer be paired.
        self._pending.drop_all()

    def _record(self, request: _Request, message: base.Message) -> base.Record:
        statement = request.statement or _NO_STATEMENT
        operation = statement.operation
        if operation is None and request.tag:
            operation = request.tag.rstrip("0123456789 ") or None
        collection = statement.collection
        attributes: dict[str, base.AttributeValue] = {"db.system.name": SYSTEM}
        if statement.text:
            attributes["db.query.text"] = statement.text
        if operation:
            attributes["db.operation.name"] = operation
        if collection:
            attributes["db.collection.name"] = collection
        if self._namespace:
            attributes["db.namespace"] = self._namespace
        if request.tag:
            words = request.tag.split()  # a garbled tag may be blank once control characters are spaces
            if words and words[0] in _RETURNING_TAGS and words[-1].isdigit():
                attributes["db.response.returned_rows"] = int(words[-1])
        for index, value in enumerate(request.parameters):
            if value is not None:
                attributes[f"db.query.parameter.{index}"] = value
        error = None
        if request.error is not None:
            code, error = request.error
            error = error or code or "error"
            if code:
                attributes["db.response.status_code"] = code
                attributes["error.type"] = code
        return base.Record(
            protocol=SYSTEM,
            name=pairing.db_span_name(SYSTEM, operation, collection or self._namespace),
            start_ns=request.start_ns,
            end_ns=max(message.end_ns, request.start_ns),
            attributes=attributes,
            error=error,
            request_size=request.size,
            response_size=message.size,
        )
