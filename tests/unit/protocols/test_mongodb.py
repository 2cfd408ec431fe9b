"""MongoDB parser against pymongo talking to the loopback responder (fixtures/mongodb)."""

from __future__ import annotations

import struct

import bson

from podspan_agent.protocols import base, mongodb
from tests.unit.protocols.fixtures import capture_db


def records(capture_size: int = 4096) -> tuple[list[base.Record], list[mongodb.Parser]]:
    recs: list[base.Record] = []
    parsers = []
    for connection in capture_db.load("mongodb", "crud_session", capture_size):
        parser = mongodb.Parser()
        recs += [record for msg in connection for record in parser.feed(msg)]
        parsers.append(parser)
    return recs, parsers


def test_crud_session() -> None:
    recs, parsers = records()
    assert [r.name for r in recs] == [
        "ismaster admin",  # pymongo's monitor connection
        "ismaster admin",
        "ping shop",
        "insert users",
        "insert users",
        "find users",
        "find forbidden",
        "delete users",
        "endSessions admin",
        "isMaster admin",  # legacy OP_QUERY on admin.$cmd
    ]
    find = recs[5]
    assert find.attributes == {
        "db.system.name": "mongodb",
        "db.operation.name": "find",
        "db.collection.name": "users",
        "db.namespace": "shop",
    }
    assert find.error is None
    duplicate, forbidden = recs[4], recs[6]
    assert duplicate.error == "WriteError" and duplicate.attributes["db.response.status_code"] == "11000"
    assert forbidden.error == "Unauthorized" and forbidden.attributes["db.response.status_code"] == "13"
    assert all(r.start_ns <= r.end_ns for r in recs)
    assert all(p.dropped == 0 and p.state_size == 0 for p in parsers)


def test_small_capture_keeps_command_and_collection() -> None:
    recs, _ = records(capture_size=45)
    assert [r.attributes.get("db.operation.name") for r in recs][2:6] == ["ping", "insert", "insert", "find"]
    assert recs[3].attributes.get("db.collection.name") == "users"
    cut, _ = records(capture_size=40)  # "users" cut to "use": reported as absent, not wrong
    assert "db.collection.name" not in cut[3].attributes and cut[3].name == "insert"


def _op_msg(request_id: int, flags: int, doc: dict[str, object], response_to: int = 0) -> bytes:
    body = struct.pack("<I", flags) + b"\0" + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, 2013) + body


def test_more_to_come_and_document_sequences() -> None:
    parser = mongodb.Parser()
    docs = b"".join(bson.encode({"_id": i}) for i in range(3))
    sequence = b"\1" + struct.pack("<i", 4 + len(b"documents\0") + len(docs)) + b"documents\0" + docs
    body = struct.pack("<I", 2) + sequence + b"\0" + bson.encode({"insert": "logs", "$db": "app"})
    unacknowledged = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body
    (record,) = parser.feed(base.Message(True, unacknowledged, len(unacknowledged), 1, 2))
    assert record.name == "insert logs" and record.attributes["db.namespace"] == "app"
    assert parser.state_size == 0


def test_error_reply_and_detect() -> None:
    parser = mongodb.Parser()
    request = _op_msg(5, 0, {"aggregate": "orders", "pipeline": [], "$db": "shop"})
    assert mongodb.detect(request)
    assert parser.feed(base.Message(True, request, len(request), 1, 2)) == []
    reply = _op_msg(6, 0, {"ok": 0.0, "errmsg": "boom", "code": 2, "codeName": "BadValue"}, response_to=5)
    assert not mongodb.detect(reply, from_client=False) and not mongodb.detect(reply)  # responseTo != 0
    (record,) = parser.feed(base.Message(False, reply, len(reply), 3, 4))
    assert record.error == "BadValue" and record.attributes["db.response.status_code"] == "2"
    assert not mongodb.detect(b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 8)


def test_bson_reader_is_safe_on_garbage() -> None:
    assert mongodb.read_document(b"\x05\x00", 0, frozenset()) == ("", {})
    nasty = struct.pack("<i", 100) + b"\x02key\x00" + struct.pack("<i", -5) + b"zz"
    assert mongodb.read_document(nasty, 0, frozenset({"key"}))[0] == "key"
