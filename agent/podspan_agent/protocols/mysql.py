"""MySQL/MariaDB client/server protocol: commands and their responses paired into `Record`s.

Prepared statement texts are remembered per statement id (bounded), so COM_STMT_EXECUTE
reports the text sent by an earlier COM_STMT_PREPARE.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from podspan_agent.protocols import base, pairing, redact, sql

MAX_PENDING = 256
MAX_STATEMENTS = 256
MAX_ERROR_TEXT = 256

_QUIT, _INIT_DB, _QUERY, _PING = 0x01, 0x02, 0x03, 0x0E
_STMT_PREPARE, _STMT_EXECUTE, _STMT_SEND_LONG_DATA, _STMT_CLOSE = 0x16, 0x17, 0x18, 0x19
# Commands the server never answers.
_NO_RESPONSE = frozenset({_QUIT, _STMT_SEND_LONG_DATA, _STMT_CLOSE})
# Other commands a client may send (answered, not reported); anything else is not MySQL.
_SILENT = frozenset({0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0D, 0x11, 0x1A, 0x1B, 0x1C, 0x1F})
_DETECT_COMMANDS = frozenset({_INIT_DB, _QUERY, _PING, _STMT_PREPARE, _STMT_EXECUTE, _STMT_CLOSE})
_CLIENT_PROTOCOL_41 = 0x200
_CLIENT_CONNECT_WITH_DB = 0x8
_CLIENT_SSL = 0x800
_CLIENT_SECURE_CONNECTION = 0x8000
_CLIENT_PLUGIN_AUTH_LENENC = 0x200000
_MORE_RESULTS = 0x0008
_USE = re.compile(r"^\s*USE\s+`?([\w$]+)`?\s*;?\s*$", re.IGNORECASE)


def detect(data: bytes) -> bool:
    """A server greeting (protocol 10) or a client's first command packet."""
    if len(data) < 5 or data[3] != 0:
        return False
    length = int.from_bytes(data[:3], "little")
    if length == 0 or (len(data) < 4 + length and len(data) < 256):
        return False  # the first packet must be whole unless the capture cut a long one
    payload = data[4 : 4 + length]
    if payload[0] == 0x0A:  # server greeting: protocol 10, then a NUL-terminated version string
        end = payload.find(b"\x00", 1, 64)
        return end > 2 and payload[1:end].decode("ascii", "replace").replace(".", "").isprintable() and \
            payload[1:2].isdigit()
    if payload[0] not in _DETECT_COMMANDS:
        return False
    if payload[0] in (_QUERY, _STMT_PREPARE, _INIT_DB):
        text = payload[1:65].decode("utf-8", "replace")
        return bool(text) and text.isprintable() and (text[0].isalpha() or text[0] in "(/ \t")
    if payload[0] == _PING:
        return length == 1
    return length >= 5  # statement id, and for EXECUTE flags and iteration count


class _Kind(enum.Enum):
    REPORTED = "reported"  # COM_QUERY, COM_STMT_EXECUTE, COM_PING, COM_INIT_DB
    PREPARE = "prepare"  # reported only when it fails
    SILENT = "silent"  # answered but not reported


class _Phase(enum.Enum):
    FIRST = "first"  # the next packet starts a response
    DEFS = "defs"  # column or parameter definitions
    AFTER_DEFS = "after_defs"  # an EOF packet may follow definitions (old clients only)
    ROWS = "rows"  # result set rows until EOF/OK


@dataclasses.dataclass(slots=True)
class _Command:
    kind: _Kind
    start_ns: int
    size: int
    operation: str | None = None
    statement: sql.Statement | None = None
    schema: str | None = None  # the namespace this command switches to when it succeeds
    # Response progress, kept across runs.
    phase: _Phase = _Phase.FIRST
    defs_left: int = 0
    defs_then: list[int] = dataclasses.field(default_factory=list)
    rows: int = 0
    complete_rows: bool = False
    error: tuple[str, str] | None = None
    response_size: int = 0


def _lenenc(payload: bytes, pos: int) -> tuple[int, int]:
    """A length-encoded integer and the offset after it (0 and past the end if cut off)."""
    if pos >= len(payload):
        return 0, len(payload) + 1
    first = payload[pos]
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first, 0)
    if width == 0:
        return first, pos + 1
    return int.from_bytes(payload[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def _ok_status(payload: bytes) -> int:
    _, pos = _lenenc(payload, 1)
    _, pos = _lenenc(payload, pos)
    return int.from_bytes(payload[pos : pos + 2], "little")


def _is_eof(payload: bytes, length: int) -> bool:
    """A classic EOF packet (5 bytes) or the OK packet that replaces it (CLIENT_DEPRECATE_EOF)."""
    return payload[:1] == b"\xfe" and length < 0xFFFFFF and (length == 5 or length >= 7)


class Parser:
    """Per-connection MySQL/MariaDB parser."""

    def __init__(self, settings: base.CaptureSettings) -> None:
        self._settings = settings
        self._pending: pairing.PendingQueue[_Command] = pairing.PendingQueue(MAX_PENDING)
        self._statements: pairing.BoundedDict[int, sql.Statement] = pairing.BoundedDict(MAX_STATEMENTS)
        self._system = "mysql"
        self._namespace: str | None = None
        self._encrypted = False
        self._lost = 0

    @property
    def dropped(self) -> int:
        """Exchanges or statements that could not be reported or remembered."""
        return self._pending.dropped + self._statements.dropped + self._lost

    @property
    def state_size(self) -> int:
        return len(self._pending) + len(self._statements)

    def feed(self, message: base.Message) -> list[base.Record]:
        if self._encrypted:
            return []
        if message.from_client:
            self._feed_client(message)
            return []
        return self._feed_server(message)

    def flush(self) -> list[base.Record]:
        self._pending.drop_all()
        return []

    # -- client side ------------------------------------------------------------------------

    def _feed_client(self, message: base.Message) -> None:
        data, pos = message.data, 0
        while pos + 5 <= len(data):
            length, seq = int.from_bytes(data[pos : pos + 3], "little"), data[pos + 3]
            payload = data[pos + 4 : pos + 4 + length]
            if seq == 1 and not self._pending:
                self._handshake_response(payload)
            elif seq == 0 and length:
                self._command(payload, length, message.start_ns)
            pos += 4 + length
        if pos < message.size:
            # Commands beyond the captured bytes (past the capture size, or in a later write of the
            # run, which the kernel does not copy) are lost: counted even when nothing else waits.
            self._lost += 1

    def _handshake_response(self, payload: bytes) -> None:
        if len(payload) < 32:
            return
        caps = int.from_bytes(payload[:4], "little")
        if not caps & _CLIENT_PROTOCOL_41:
            return
        if caps & _CLIENT_SSL and len(payload) == 32:
            self._encrypted = True  # an SSLRequest: the rest of the connection is TLS
            return
        user_end = payload.find(b"\x00", 32)
        if user_end < 0:
            return
        pos = user_end + 1
        if caps & _CLIENT_PLUGIN_AUTH_LENENC:
            auth_len, pos = _lenenc(payload, pos)
        elif caps & _CLIENT_SECURE_CONNECTION:
            auth_len, pos = (payload[pos], pos + 1) if pos < len(payload) else (0, pos)
        else:
            auth_end = payload.find(b"\x00", pos)
            auth_len = auth_end - pos if auth_end >= 0 else 0
            pos += 1
        pos += auth_len
        db_end = payload.find(b"\x00", pos)
        # A database name cut off by the capture size would be a wrong name: keep none then.
        if caps & _CLIENT_CONNECT_WITH_DB and db_end > pos:
            self._namespace = pairing.printable(payload[pos:db_end], 64)

    def _command(self, payload: bytes, length: int, start_ns: int) -> None:
        command, size = payload[0], length + 4
        if command in _NO_RESPONSE:
            if command == _STMT_CLOSE and len(payload) >= 5:
                self._statements.pop(int.from_bytes(payload[1:5], "little"))
            return
        text = payload[1:].decode("utf-8", "replace")
        if command == _QUERY:
            use = _USE.match(text)
            statement = sql.describe(text, double_quoted_strings=True)
            self._pending.push(_Command(_Kind.REPORTED, start_ns, size, statement.operation, statement,
                                        use.group(1) if use else None))
        elif command == _STMT_PREPARE:
            statement = sql.describe(text, double_quoted_strings=True)
            self._pending.push(_Command(_Kind.PREPARE, start_ns, size, statement.operation, statement))
        elif command == _STMT_EXECUTE and len(payload) >= 5:
            stored = self._statements.get(int.from_bytes(payload[1:5], "little"))
            self._pending.push(_Command(_Kind.REPORTED, start_ns, size, stored.operation if stored else None,
                                        stored))
        elif command == _PING:
            self._pending.push(_Command(_Kind.REPORTED, start_ns, size, "PING"))
        elif command == _INIT_DB:
            self._pending.push(_Command(_Kind.REPORTED, start_ns, size, "USE", None, text))
        elif command in _SILENT:
            self._pending.push(_Command(_Kind.SILENT, start_ns, size))

    # -- server side ------------------------------------------------------------------------

    def _feed_server(self, message: base.Message) -> list[base.Record]:
        data, pos, records = message.data, 0, list[base.Record]()
        while pos < message.size:
            if pos + 5 > len(data):
                break
            length, seq = int.from_bytes(data[pos : pos + 3], "little"), data[pos + 3]
            payload = data[pos + 4 : pos + 4 + length]
            if seq == 0 and payload[:1] == b"\x0a" and not self._pending:
                self._greeting(payload)
            else:
                self._response_packet(payload, length, seq, message, records)
            pos += 4 + length
        if pos < message.size:
            # The rest of the run was not captured: it most likely ends the current response.
            head = self._pending.pop()
            if head is not None:
                head.response_size += message.size - pos
                self._finish(head, message, records)
            self._pending.drop_all()
        return records

    def _greeting(self, payload: bytes) -> None:
        version = payload[1 : payload.find(b"\x00", 1)]
        self._system = "mariadb" if b"MariaDB" in version else "mysql"

    def _response_packet(self, payload: bytes, length: int, seq: int, message: base.Message,
                         records: list[base.Record]) -> None:
        head = self._pending.peek()
        if head is None or not payload:
            return  # connection phase, a reply to a command sent before capture, or a 16 MiB tail
        if head.phase is _Phase.AFTER_DEFS:
            if _is_eof(payload, length) and length == 5:
                self._next_defs(head, message, records)
                return
            self._next_defs(head, message, records)
            head = self._pending.peek()
            if head is None or (head.phase is _Phase.FIRST and seq != 1):
                return
        head.response_size += length + 4
        first = payload[0]
        if head.phase is _Phase.FIRST:
            if first == 0x00 and head.kind is _Kind.PREPARE and len(payload) >= 9:
                if head.statement is not None:
                    self._statements.put(int.from_bytes(payload[1:5], "little"), head.statement)
                columns = int.from_bytes(payload[5:7], "little")
                params = int.from_bytes(payload[7:9], "little")
                head.defs_then = [columns]
                head.defs_left = params
                head.phase = _Phase.DEFS if params else _Phase.AFTER_DEFS
                if not params:
                    self._next_defs(head, message, records)
            elif first in (0x00, 0xFE):
                self._done(head, _ok_status(payload), message, records)
            elif first == 0xFF:
                self._error(head, payload, message, records)
            elif first == 0xFB:
                self._done(head, 0, message, records)  # LOCAL INFILE: the file transfer is not paired
            else:
                head.defs_left, _ = _lenenc(payload, 0)
                head.defs_then = []
                head.phase = _Phase.DEFS
        elif head.phase is _Phase.DEFS:
            head.defs_left -= 1
            if head.defs_left <= 0:
                head.phase = _Phase.AFTER_DEFS
        elif first == 0xFF:
            self._error(head, payload, message, records)
        elif _is_eof(payload, length):
            head.complete_rows = True
            status = int.from_bytes(payload[3:5], "little") if length == 5 else _ok_status(payload)
            self._done(head, status, message, records)
        else:
            head.rows += 1

    def _next_defs(self, head: _Command, message: base.Message, records: list[base.Record]) -> None:
        """Definitions (and their optional EOF) are over: more definitions, rows, or the end."""
        if head.defs_then:
            head.defs_left = head.defs_then.pop(0)
            head.phase = _Phase.DEFS if head.defs_left else _Phase.AFTER_DEFS
            if not head.defs_left:
                self._next_defs(head, message, records)
        elif head.kind is _Kind.PREPARE:
            self._done(head, 0, message, records)
        else:
            head.phase = _Phase.ROWS

    def _error(self, head: _Command, payload: bytes, message: base.Message,
               records: list[base.Record]) -> None:
        code = str(int.from_bytes(payload[1:3], "little"))
        text = payload[9:] if payload[3:4] == b"#" else payload[3:]
        message_text = pairing.printable(text, MAX_ERROR_TEXT)
        # The message quotes the offending value ("Duplicate entry 'alice@...'"): a value like the statement's.
        head.error = (code, message_text if self._settings.statement_parameters
                      else redact.error_message(message_text))
        self._done(head, 0, message, records)

    def _done(self, head: _Command, status: int, message: base.Message, records: list[base.Record]) -> None:
        if status & _MORE_RESULTS and head.error is None:
            head.phase = _Phase.FIRST  # multi-statement or CALL: another result follows
            return
        self._pending.pop()
        if head.error is None and head.schema is not None:
            self._namespace = head.schema
        self._finish(head, message, records)

    def _finish(self, head: _Command, message: base.Message, records: list[base.Record]) -> None:
        if head.kind is _Kind.SILENT or (head.kind is _Kind.PREPARE and head.error is None):
            return
        collection = head.statement.collection if head.statement else None
        attributes: dict[str, base.AttributeValue] = {"db.system.name": self._system}
        if head.statement and head.statement.text:
            attributes["db.query.text"] = head.statement.text
        if head.operation:
            attributes["db.operation.name"] = head.operation
        if collection:
            attributes["db.collection.name"] = collection
        if self._namespace:
            attributes["db.namespace"] = self._namespace
        if head.complete_rows:
            attributes["db.response.returned_rows"] = head.rows
        error = None
        if head.error is not None:
            code, error = head.error
            attributes["db.response.status_code"] = code
            attributes["error.type"] = code
            error = error or code
        records.append(base.Record(
            protocol="mysql",
            name=pairing.db_span_name(self._system, head.operation, collection or self._namespace),
            start_ns=head.start_ns,
            end_ns=max(message.end_ns, head.start_ns),
            attributes=attributes,
            error=error,
            request_size=head.size,
            response_size=head.response_size,
        ))
