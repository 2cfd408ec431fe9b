"""MongoDB wire protocol parser: OP_MSG and legacy OP_QUERY/OP_REPLY commands, paired by requestID.

Reads only the BSON it needs: the command name and collection, `$db`, and the reply's
`ok`/`code`/`codeName`/`writeErrors`.
"""

from __future__ import annotations

import dataclasses
import struct

from podspan_agent.protocols import base, framing, pairing

MAX_PENDING = 256
MAX_MESSAGE = 48_000_000  # maxMessageSizeBytes of every MongoDB release
OP_REPLY, OP_QUERY, OP_COMPRESSED, OP_MSG = 1, 2004, 2012, 2013
MORE_TO_COME = 0x2
_MSG_FLAGS = 0x1 | 0x2 | 0x10000  # checksumPresent, moreToCome, exhaustAllowed
_NAME_LIMIT = 128
# Fixed value sizes of BSON element types; the variable-size ones are handled in _skip.
_FIXED = {
    0x01: 8,
    0x06: 0,
    0x07: 12,
    0x08: 1,
    0x09: 8,
    0x0A: 0,
    0x10: 4,
    0x11: 8,
    0x12: 8,
    0x13: 16,
    0x7F: 0,
    0xFF: 0,
}
_STRINGS = {0x02, 0x0D, 0x0E}
_SIZED = {0x03, 0x04, 0x0F}  # int32 total length includes itself


def _mongo_length(data: bytes, pos: int) -> int | None:
    (length,) = struct.unpack_from("<i", data, pos)
    return length if 16 <= length <= MAX_MESSAGE else None


def _cstring_end(data: bytes, pos: int, end: int) -> int:
    """Index of the NUL ending a cstring at `pos`, or -1."""
    return data.find(b"\0", pos, end)


def _skip(data: bytes, kind: int, pos: int, end: int) -> int:
    """Position after a value of BSON type `kind` at `pos`; -1 if unknown or cut off."""
    if kind in _FIXED:
        after = pos + _FIXED[kind]
    elif kind in _STRINGS or kind in _SIZED or kind == 0x05 or kind == 0x0C:
        if pos + 4 > end:
            return -1
        (size,) = struct.unpack_from("<i", data, pos)
        if size < 0:
            return -1
        after = pos + (
            size if kind in _SIZED else 4 + size + (1 if kind == 0x05 else 0) + (12 if kind == 0x0C else 0)
        )
    elif kind == 0x0B:  # regex: two cstrings
        first = _cstring_end(data, pos, end)
        second = _cstring_end(data, first + 1, end) if first >= 0 else -1
        after = second + 1 if second >= 0 else -1
    else:
        return -1
    return after if 0 <= after <= end else -1


def read_document(data: bytes, pos: int, wanted: frozenset[str]) -> tuple[str, dict[str, object]]:
    """(first key, {key: value}) for the first key and the keys in `wanted` of the document at `pos`.

    Strings, numbers and booleans are returned as Python values; an array's value is the
    `code` of its first document (enough for `writeErrors`). Stops quietly where the captured
    bytes end or the document is malformed.
    """
    first = ""
    found: dict[str, object] = {}
    if pos + 5 > len(data):
        return first, found
    (size,) = struct.unpack_from("<i", data, pos)
    end = min(len(data), pos + size) if size >= 5 else pos
    cursor = pos + 4
    while cursor < end and data[cursor]:
        kind = data[cursor]
        name_end = _cstring_end(data, cursor + 1, min(end, cursor + 1 + _NAME_LIMIT))
        if name_end < 0:
            break
        key = data[cursor + 1 : name_end].decode("utf-8", "replace")
        value_at = name_end + 1
        after = _skip(data, kind, value_at, end)
        if not first:
            first = key
            wanted = wanted | {key}
        if key in wanted:
            value = _value(data, kind, value_at, after if after >= 0 else end)
            if value is not None:
                found[key] = value
        if after < 0:
            break
        cursor = after
    return first, found


def _value(data: bytes, kind: int, pos: int, end: int) -> object:
    if kind == 0x02 and pos + 4 <= end:
        (size,) = struct.unpack_from("<i", data, pos)
        if size < 1 or pos + 4 + size > end:
            return None  # cut off by the capture: a prefix would be a wrong name
        return pairing.printable(data[pos + 4 : pos + 3 + size], 256)
    if kind in (0x10, 0x12, 0x01) and pos + _FIXED[kind] <= end:
        return struct.unpack_from({0x10: "<i", 0x12: "<q", 0x01: "<d"}[kind], data, pos)[0]
    if kind == 0x08 and pos < end:
        return bool(data[pos])
    if kind == 0x04:  # array (writeErrors): the `code` of its first document
        first_doc = _first_element_document(data, pos, end)
        return None if first_doc is None else read_document(data, first_doc, _CODE)[1].get("code")
    return None


def _first_element_document(data: bytes, pos: int, end: int) -> int | None:
    """Position of the array's first element when it is a document."""
    if pos + 5 > end or data[pos + 4] != 0x03:
        return None
    name_end = _cstring_end(data, pos + 5, end)
    return name_end + 1 if name_end >= 0 else None


_CODE = frozenset({"code"})
_REQUEST_KEYS = frozenset({"$db", "collection"})
_REPLY_KEYS = frozenset({"ok", "code", "codeName", "writeErrors"})


@dataclasses.dataclass(slots=True)
class _Request:
    command: str
    database: str | None
    collection: str | None
    start_ns: int
    size: int
    # False for a legacy query on a collection: its reply holds the found documents, whose
    # `ok` or `code` fields say nothing about the query.
    command_reply: bool = True


def detect(data: bytes, from_client: bool = True) -> bool:
    """A client's first bytes: an OP_MSG or OP_QUERY request with a sane header and first section."""
    if not from_client or len(data) < 21:
        return False
    length, _, response_to, opcode = struct.unpack_from("<iiii", data)
    if not 21 <= length <= MAX_MESSAGE or response_to != 0:
        return False
    if opcode == OP_MSG:
        (flags,) = struct.unpack_from("<I", data, 16)
        return not flags & ~_MSG_FLAGS and data[20] in (0, 1)
    if opcode == OP_QUERY:
        name_end = _cstring_end(data, 20, min(len(data), 20 + _NAME_LIMIT))
        name = data[20:name_end]
        return name_end > 20 and b"." in name and name.isascii() and name.decode().isprintable()
    return False


class Parser(framing.FramedParser[_Request]):
    """Per-connection MongoDB parser: bounded pending requests, never raises."""

    def __init__(self, settings: base.CaptureSettings | None = None, max_pending: int = MAX_PENDING) -> None:
        super().__init__(settings, max_pending, prefix=4, frame_length=_mongo_length)

    def _request(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        if len(head) < 16:
            return
        request_id, _, opcode = struct.unpack_from("<iii", head, 4)
        flags = 0
        database = None
        command = ""
        fields: dict[str, object] = {}
        command_reply = True
        if opcode == OP_MSG and len(head) > 20:
            (flags,) = struct.unpack_from("<I", head, 16)
            body = _body_section(head)
            if body is not None:
                command, fields = read_document(head, body, _REQUEST_KEYS)
        elif opcode == OP_QUERY:
            name_end = _cstring_end(head, 20, min(len(head), 20 + _NAME_LIMIT))
            if name_end < 0:
                return
            database, _, target = head[20:name_end].decode("utf-8", "replace").partition(".")
            if target == "$cmd":
                query_at = name_end + 9  # after the name's NUL: numberToSkip, numberToReturn
                command, fields = read_document(head, query_at, _REQUEST_KEYS)
                if command == "$query":  # wrapped form {$query: {cmd: ...}, ...}: int32, type, "$query\0"
                    command, fields = read_document(head, query_at + 12, _REQUEST_KEYS)
            else:
                # A legacy query on a collection (servers before 5.1): its document is a filter,
                # whose first key is a field name, not a command.
                command, fields, command_reply = "find", {"find": target}, False
        elif opcode != OP_COMPRESSED:
            return
        database = str(fields.get("$db", database or "")) or None
        collection = fields.get("collection") if command == "getMore" else fields.get(command)
        request = _Request(
            command, database, collection if isinstance(collection, str) else None, message.start_ns, length,
            command_reply,
        )
        if flags & MORE_TO_COME:
            records.append(_record(request, message.end_ns, 0, {}))  # unacknowledged: no reply comes
        else:
            self._wait(request_id, request)

    def _response(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        # A client that reads the header (pymongo) or the length on its own first leaves only that
        # in the capture: the reply still pairs, but its ok/code are not seen.
        response_to, opcode = struct.unpack_from("<ii", head, 8) if len(head) >= 16 else (None, 0)
        request = self._answered(response_to)
        if request is None:
            return  # e.g. later replies of an exhaust cursor, which answer the previous reply
        fields: dict[str, object] = {}
        if opcode == OP_MSG and len(head) > 21 and head[20] == 0:
            fields = read_document(head, 21, _REPLY_KEYS)[1]
        elif opcode == OP_REPLY and len(head) >= 36:
            failed = struct.unpack_from("<i", head, 16)[0] & 0x2  # QueryFailure: the document is {$err, code}
            if failed or request.command_reply:
                fields = read_document(head, 36, _REPLY_KEYS)[1]
            if failed:
                fields.setdefault("ok", 0)
        records.append(_record(request, message.end_ns, length, fields))

    def _unseen_response(self, request: _Request, message: base.Message) -> base.Record:
        return _record(request, message.end_ns, 0, {})


def _body_section(head: bytes) -> int | None:
    """Where an OP_MSG's command document (section kind 0) starts: it may follow kind 1 document
    sequences. None when it is not captured or the sections are malformed."""
    pos = 20
    while pos + 5 <= len(head) and head[pos] == 1:
        (size,) = struct.unpack_from("<i", head, pos + 1)
        if size < 5:  # a sequence holds at least its size and a cstring; anything less never advances
            return None
        pos += 1 + size
    return pos + 1 if pos < len(head) and head[pos] == 0 else None


def _record(request: _Request, end_ns: int, response_size: int, reply: dict[str, object]) -> base.Record:
    attributes: dict[str, base.AttributeValue] = {"db.system.name": "mongodb"}
    if request.command:
        attributes["db.operation.name"] = request.command
    if request.collection:
        attributes["db.collection.name"] = request.collection
    if request.database:
        attributes["db.namespace"] = request.database
    error = None
    code = reply.get("code")
    if reply.get("ok") in (0, False):
        error = str(reply.get("codeName") or (f"code {code}" if code is not None else "ok: 0"))
    elif reply.get("writeErrors") is not None:
        code = reply["writeErrors"]
        error = "WriteError"
    if error is not None:
        # Semantic conventions: error.type is the database's status code when there is one.
        status = str(int(code)) if isinstance(code, int | float) else None
        if status is not None:
            attributes["db.response.status_code"] = status
        attributes["error.type"] = status or "_OTHER"
    return base.Record(
        protocol="mongodb",
        name=pairing.db_span_name("mongodb", request.command, request.collection or request.database),
        start_ns=request.start_ns,
        end_ns=max(end_ns, request.start_ns),
        attributes=attributes,
        error=error,
        request_size=request.size,
        response_size=response_size,
    )
