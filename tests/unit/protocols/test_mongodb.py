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
        "noSuchCommand shop",
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
    duplicate, forbidden, unknown = recs[4], recs[6], recs[8]
    assert duplicate.error == "WriteError" and duplicate.attributes["db.response.status_code"] == "11000"
    assert forbidden.error == "Unauthorized" and forbidden.attributes["db.response.status_code"] == "13"
    assert unknown.error == "CommandNotFound" and unknown.attributes["db.response.status_code"] == "59"
    # error.type is the database's status code (semantic conventions), set only on failures.
    assert [r.attributes.get("error.type") for r in recs].count(None) == len(recs) - 3
    assert all(r.attributes.get("error.type") == r.attributes.get("db.response.status_code") for r in recs)
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


def test_malformed_document_sequence_does_not_hang() -> None:
    # A kind 1 section whose size does not move past it once looped forever.
    parser = mongodb.Parser()
    for request_id, size in enumerate((-1, -100, 0, 4)):
        body = struct.pack("<I", 0) + b"\1" + struct.pack("<i", size) + bson.encode({"find": "x"})
        request = struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body
        assert mongodb.detect(request)
        assert parser.feed(base.Message(True, request, len(request), 1, 2)) == []
    assert parser.state_size == 4 and parser.dropped == 0


def test_reply_without_its_header_pairs_in_order() -> None:
    parser = mongodb.Parser()
    first = _op_msg(1, 0, {"find": "users", "$db": "shop"})
    second = _op_msg(2, 0, {"find": "orders", "$db": "shop"})
    for request in (first, second):
        parser.feed(base.Message(True, request, len(request), 1, 2))
    # Only the reply's length was captured (the client read it on its own): the oldest request.
    reply = _op_msg(9, 0, {"ok": 0.0, "code": 13}, response_to=1)
    (record,) = parser.feed(base.Message(False, reply[:4], len(reply), 3, 4))
    assert record.name == "find users" and record.error is None and record.response_size == len(reply)
    # A reply naming a later request means the earlier ones were answered unseen.
    third = _op_msg(3, 0, {"find": "items", "$db": "shop"})
    parser.feed(base.Message(True, third, len(third), 5, 6))
    reply = _op_msg(10, 0, {"ok": 1.0}, response_to=3)
    (record,) = parser.feed(base.Message(False, reply, len(reply), 7, 8))
    assert record.name == "find items" and parser.state_size == 0 and parser.unseen == 1


def test_reply_hidden_behind_another_is_reported() -> None:
    parser = mongodb.Parser()
    requests = _op_msg(1, 0, {"ping": 1, "$db": "a"}) + _op_msg(2, 0, {"find": "users", "$db": "shop"})
    parser.feed(base.Message(True, requests, len(requests), 1, 2))
    # Both replies in one run, the second written by a later syscall the capture did not copy.
    first, second = _op_msg(8, 0, {"ok": 1.0}, response_to=1), _op_msg(9, 0, {"ok": 1.0}, response_to=2)
    records = parser.feed(base.Message(False, first, len(first + second), 3, 4))
    assert [(r.name, r.response_size) for r in records] == [("ping a", len(first)), ("find users", 0)]
    assert parser.state_size == 0 and parser.dropped == 1  # the unseen frame is counted


def test_legacy_query_on_a_collection_is_a_find() -> None:
    parser = mongodb.Parser()
    query = struct.pack("<i", 0) + b"shop.users\0" + struct.pack("<ii", 0, 10) + bson.encode({"name": "alice"})
    request = struct.pack("<iiii", 16 + len(query), 3, 0, 2004) + query
    assert mongodb.detect(request)
    parser.feed(base.Message(True, request, len(request), 1, 2))
    # A found document may well have `ok` and `code` fields: they are data, not the outcome.
    reply_body = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode({"_id": 1, "ok": 0, "code": 7})
    reply = struct.pack("<iiii", 16 + len(reply_body), 4, 3, 1) + reply_body
    (record,) = parser.feed(base.Message(False, reply, len(reply), 3, 4))
    assert record.name == "find users" and record.error is None  # not the filter's field `name`
    assert record.attributes["db.namespace"] == "shop" and record.attributes["db.operation.name"] == "find"
    parser.feed(base.Message(True, request, len(request), 5, 6))
    failure_body = struct.pack("<iqii", 2, 0, 0, 1) + bson.encode({"$err": "bad query", "code": 2})
    failure = struct.pack("<iiii", 16 + len(failure_body), 5, 3, 1) + failure_body
    (record,) = parser.feed(base.Message(False, failure, len(failure), 7, 8))
    assert record.error == "code 2" and record.attributes["error.type"] == "2"
