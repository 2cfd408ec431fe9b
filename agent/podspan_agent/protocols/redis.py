"""Redis (RESP2/RESP3): pairs pipelined commands with their replies into `Record`s.

Replies are skipped by their declared lengths, so a reply whose body lies beyond the
captured bytes still pairs as long as its header was captured.
"""

from __future__ import annotations

import dataclasses

from podspan_agent.protocols import base, pairing, redact

SYSTEM = "redis"
MAX_PENDING = 1024
MAX_NESTING = 16
MAX_ARG_TEXT = 64
MAX_QUERY_TEXT = 2048
MAX_ERROR_TEXT = 256
_NO_END = -1  # the value's end cannot be determined from the captured bytes

# Commands whose first argument is a subcommand, reported together (`CLIENT SETNAME`).
_CONTAINERS = frozenset({
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
})
# Commands whose arguments may be credentials (passwords, `ACL SETUSER >pw`, `CONFIG SET requirepass`):
# never shown, even when statement parameters are on.
_SECRET_ARGS = frozenset({"AUTH", "HELLO", "MIGRATE", "ACL SETUSER", "CONFIG SET"})
_LINE_TYPES = frozenset(b"+-:,#(_")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>")
_PAIR_TYPES = frozenset(b"%|")


def detect(data: bytes) -> bool:
    """A client's first bytes: a RESP array of bulk strings (`*<n>\\r\\n$<len>\\r\\n<name>`)."""
    if len(data) < 8 or data[0] != ord("*"):
        return False
    line_end = data.find(b"\r\n", 1, 12)
    if line_end < 2 or not data[1:line_end].isdigit() or int(data[1:line_end]) == 0:
        return False
    pos = line_end + 2
    if data[pos : pos + 1] != b"$":
        return False
    len_end = data.find(b"\r\n", pos + 1, pos + 12)
    if len_end < 0 or not data[pos + 1 : len_end].isdigit():
        return False
    name = data[len_end + 2 : len_end + 2 + min(int(data[pos + 1 : len_end]), 32)]
    return bool(name) and name.replace(b"_", b"").replace(b"-", b"").isalnum()


@dataclasses.dataclass(slots=True)
class _Command:
    operation: str
    query: str
    start_ns: int
    size: int
    select_db: str | None = None


def _line_end(data: bytes, pos: int) -> int:
    return data.find(b"\r\n", pos, pos + 64)


def _int_at(data: bytes, start: int, end: int) -> int | None:
    raw = data[start:end]
    if raw[:1] == b"-":
        return -1 if raw[1:].isdigit() else None
    return int(raw) if raw.isdigit() else None


def _skip(data: bytes, pos: int, size: int, depth: int = 0) -> int:
    """End offset of the RESP value at `pos`, or _NO_END if not determinable."""
    if pos >= len(data) or depth > MAX_NESTING:
        return _NO_END
    kind = data[pos]
    end = _line_end(data, pos + 1)
    if end < 0:
        return _NO_END
    if kind in _LINE_TYPES:
        return end + 2
    count = _int_at(data, pos + 1, end)
    if count is None:
        return _NO_END
    if kind in _BLOB_TYPES:
        stop = end + 2 if count < 0 else end + 2 + count + 2
        return stop if stop <= size else _NO_END
    if kind in _AGGREGATE_TYPES or kind in _PAIR_TYPES:
        pos = end + 2
        for _ in range(max(count, 0) * (2 if kind in _PAIR_TYPES else 1)):
            pos = _skip(data, pos, size, depth + 1)
            if pos == _NO_END:
                return _NO_END
        if kind == ord("|"):  # an attribute is followed by the value it describes
            return _skip(data, pos, size, depth + 1)
        return pos
    return _NO_END


def _skip_attributes(data: bytes, pos: int, size: int) -> int:
    """Position of the reply proper, past any RESP3 attribute maps (_NO_END if unknown)."""
    while pos < len(data) and data[pos] == ord("|"):
        end = _line_end(data, pos + 1)
        count = _int_at(data, pos + 1, end) if end > 0 else None
        if count is None:
            return _NO_END
        pos = end + 2
        for _ in range(max(count, 0) * 2):
            pos = _skip(data, pos, size, 1)
            if pos == _NO_END:
                return _NO_END
    return pos if pos < len(data) else _NO_END


def _error_text(data: bytes, pos: int) -> str:
    """Message of a simple (`-`) or blob (`!`) error reply, from the captured bytes."""
    end = _line_end(data, pos + 1)
    if data[pos] == ord("-"):
        raw = data[pos + 1 : end] if end > 0 else data[pos + 1 :]
    else:
        raw = data[end + 2 :] if end > 0 else b""
        length = _int_at(data, pos + 1, end) if end > 0 else None
        raw = raw[: length if length and length > 0 else 0]
    return pairing.printable(raw, MAX_ERROR_TEXT)


class Parser:
    """Per-connection Redis parser."""

    def __init__(self, settings: base.CaptureSettings) -> None:
        self._settings = settings
        self._pending: pairing.PendingQueue[_Command | None] = pairing.PendingQueue(MAX_PENDING)
        self._namespace: str | None = None
        self._lost = 0

    @property
    def dropped(self) -> int:
        """Exchanges that could not be reported (state limits, truncation, unparsable bytes)."""
        return self._pending.dropped + self._lost

    @property
    def state_size(self) -> int:
        return len(self._pending)

    def feed(self, message: base.Message) -> list[base.Record]:
        if message.from_client:
            self._feed_commands(message)
            return []
        return self._feed_replies(message)

    def flush(self) -> list[base.Record]:
        self._pending.drop_all()
        return []

    def _feed_commands(self, message: base.Message) -> None:
        data, pos = message.data, 0
        while pos < message.size:
            end, command = self._parse_command(data, pos, message)
            if command is not None:
                self._pending.push(command)
            if end == _NO_END:
                # The rest of the run is unknown: a barrier stands for its commands so their
                # replies are not paired with later commands.
                self._pending.push(None)
                return
            pos = end

    def _parse_command(self, data: bytes, pos: int, message: base.Message) -> tuple[int, _Command | None]:
        if pos >= len(data):
            return _NO_END, None
        if data[pos] != ord("*"):
            return self._parse_inline(data, pos, message)
        end = _line_end(data, pos + 1)
        count = _int_at(data, pos + 1, end) if end > 0 else None
        if count is None or count <= 0:
            return _NO_END, None
        args: list[bytes | None] = []
        cursor = end + 2
        for _ in range(count):
            if cursor >= len(data) or data[cursor] != ord("$"):
                cursor = _NO_END
                break
            len_end = _line_end(data, cursor + 1)
            length = _int_at(data, cursor + 1, len_end) if len_end > 0 else None
            if length is None or length < 0:
                cursor = _NO_END
                break
            body = len_end + 2
            args.append(data[body : body + length] if body + length <= len(data) else None)
            cursor = body + length + 2
            if cursor > message.size:
                cursor = _NO_END
                break
        if not args or args[0] is None:
            return _NO_END, None
        size = cursor - pos if cursor != _NO_END else message.size - pos
        return cursor, self._command(args, count, message.start_ns, size)

    def _parse_inline(self, data: bytes, pos: int, message: base.Message) -> tuple[int, _Command | None]:
        """An inline command (a plain text line); an empty line is ignored by the server."""
        end = data.find(b"\n", pos, pos + MAX_QUERY_TEXT)
        if end < 0:
            return _NO_END, None
        words = data[pos:end].split()
        if not words:
            return end + 1, None
        if not words[0].isalpha():
            return _NO_END, None
        return end + 1, self._command([*words], len(words), message.start_ns, end + 1 - pos)

    def _command(self, args: list[bytes | None], count: int, start_ns: int, size: int) -> _Command:
        name = pairing.printable(args[0] or b"", 32).upper()
        words = 1
        if name in _CONTAINERS and len(args) > 1 and args[1] is not None:
            name = f"{name} {pairing.printable(args[1], 32).upper()}"
            words = 2
        shown: list[str] = [name]
        for arg in args[words:]:
            if arg is None or not self._settings.statement_parameters or name in _SECRET_ARGS:
                shown.append("?")
            else:
                shown.append(pairing.printable(arg, MAX_ARG_TEXT))
        # Arguments past the captured bytes: one "?" each, but no more than the text can show (the
        # count is the peer's word, up to 10**63).
        shown.extend("?" for _ in range(min(count - len(args), MAX_QUERY_TEXT // 2)))
        select_db = None
        if name == "SELECT" and len(args) == 2 and args[1] is not None and args[1].isdigit():
            select_db = args[1].decode()
        return _Command(name, " ".join(shown)[:MAX_QUERY_TEXT], start_ns, size, select_db)

    def _feed_replies(self, message: base.Message) -> list[base.Record]:
        data, records, pos = message.data, list[base.Record](), 0
        while pos < message.size:
            start = _skip_attributes(data, pos, message.size)
            if start == _NO_END:
                break
            end = _skip(data, start, message.size)
            if data[start] == ord(">"):  # out-of-band push (RESP3): answers no command
                if end == _NO_END:
                    break
                pos = end
                continue
            if not self._pending:
                self._lost += 1  # a reply to a command sent before capture started
            else:
                command = self._pending.pop()
                if command is None:
                    self._lost += 1
                    break
                size = (end if end > 0 else message.size) - pos
                records.append(self._record(command, data, start, message, size))
            if end == _NO_END:
                break
            pos = end
        if pos < message.size:
            # Replies past this point cannot be delimited: the commands still waiting may have
            # been answered by them, so pairing them with later replies would be wrong.
            self._pending.drop_all()
        return records

    def _record(self, command: _Command, data: bytes, pos: int, message: base.Message,
                size: int) -> base.Record:
        attributes: dict[str, base.AttributeValue] = {
            "db.system.name": SYSTEM,
            "db.operation.name": command.operation,
            "db.query.text": command.query,
        }
        error = None
        if data[pos] in b"-!":
            # Always: "unknown command 'x', with args beginning with: '...'" echoes arguments, credentials too.
            error = redact.error_message(_error_text(data, pos))
            prefix = error.split(" ", 1)[0]
            if prefix.isupper():
                attributes["db.response.status_code"] = prefix
                attributes["error.type"] = prefix
        elif command.select_db is not None and data[pos] == ord("+"):
            self._namespace = command.select_db
        if self._namespace is not None:
            attributes["db.namespace"] = self._namespace
        return base.Record(
            protocol=SYSTEM,
            # The Redis convention keeps the numeric namespace out of the span name.
            name=pairing.db_span_name(SYSTEM, command.operation, None),
            start_ns=command.start_ns,
            end_ns=max(message.end_ns, command.start_ns),
            attributes=attributes,
            error=error,
            request_size=command.size,
            response_size=size,
        )
