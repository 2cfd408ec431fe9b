"""PostgreSQL parser against real PostgreSQL 15 captures (fixtures/postgresql, see capture_db.py)."""

from __future__ import annotations

import pytest

from podspan_agent.protocols import base, postgresql
from tests.unit.protocols.fixtures import capture_db


def run(name: str, capture_size: int = 512, statement_parameters: bool = False,
        ) -> list[tuple[list[base.Record], postgresql.Parser]]:
    out = []
    for connection in capture_db.load("postgresql", name, capture_size):
        parser = postgresql.Parser(base.CaptureSettings(statement_parameters=statement_parameters))
        out.append(([record for message in connection for record in parser.feed(message)], parser))
    return out


@pytest.mark.parametrize("capture_size", [64, 512, 4096])
def test_simple_query_session(capture_size: int) -> None:
    ((recs, parser),) = run("simple_session", capture_size)
    assert [r.name for r in recs] == [
        "CREATE users", "INSERT users", "SELECT users", "UPDATE users", "SELECT nosuchtable", "SELECT shop",
        "SELECT shop", "BEGIN shop", "DELETE users", "COMMIT shop", "COPY users", "COPY users",
        "SELECT users",
    ]
    assert all(r.attributes["db.namespace"] == "shop" for r in recs)
    assert all(r.attributes["db.system.name"] == "postgresql" for r in recs)
    assert str(recs[1].attributes["db.query.text"]).startswith("INSERT INTO users VALUES (?, ?, ?)")
    assert "alice" not in str([r.attributes for r in recs])
    error = recs[4]
    assert error.attributes["db.response.status_code"] == "42P01"
    assert error.error == 'relation "?" does not exist'  # quoted names and values hidden by default
    if capture_size >= 512:
        assert recs[2].attributes["db.response.returned_rows"] == 1
    assert all(r.start_ns <= r.end_ns for r in recs)
    assert parser.dropped == 0 and parser.state_size == 0


def test_row_count_only_when_the_end_of_the_result_was_captured() -> None:
    ((small, _),) = run("simple_session", 512)
    ((large, _),) = run("simple_session", 4096)
    assert "db.response.returned_rows" not in small[-1].attributes
    assert large[-1].attributes["db.response.returned_rows"] == 51


def test_ssl_request_refused_then_plain_session() -> None:
    ((recs, parser),) = run("ssl_refused")
    assert [r.name for r in recs] == ["SELECT shop"]
    assert parser.dropped == 0


@pytest.mark.parametrize("mode", ["prepared", "extended"])
def test_extended_protocol(mode: str) -> None:
    (_, parser0), (recs, parser) = run(f"pgbench_{mode}", statement_parameters=True)
    assert [r.attributes["db.operation.name"] for r in recs[:3]] == ["SELECT", "UPDATE", "SELECT"]
    select = recs[0]
    assert select.attributes["db.query.text"] == "SELECT name, email FROM users WHERE id = $1;"
    assert select.attributes["db.response.returned_rows"] == 1
    assert str(select.attributes["db.query.parameter.0"]).isdigit()
    failed = recs[2]
    assert failed.attributes["db.response.status_code"] == "22P02"
    assert failed.attributes["db.query.text"] == "SELECT * FROM users WHERE id = ?;"
    assert parser.dropped == 0 and parser0.dropped == 0


def test_named_statement_text_is_remembered_across_messages() -> None:
    (_, (recs, _)) = run("pgbench_prepared")
    # The last exchange executes P_2, parsed in an earlier run; the server no longer knows it.
    last = recs[-1]
    assert last.attributes["db.query.text"] == "SELECT * FROM users WHERE id = ?;"
    assert last.attributes["db.response.status_code"] == "26000"
    assert "db.query.parameter.0" not in last.attributes


def test_parameters_off_by_default() -> None:
    (_, (recs, _)) = run("pgbench_extended")
    assert not any(key.startswith("db.query.parameter") for r in recs for key in r.attributes)


def test_detect() -> None:
    (connection, *_) = capture_db.load("postgresql", "simple_session")
    assert postgresql.detect(connection[0].data)
    assert postgresql.detect(b"Q\x00\x00\x00\rSELECT 1\x00")
    assert postgresql.detect(b"\x00\x00\x00\x08\x04\xd2\x16/")
    assert not postgresql.detect(b"GET / HTTP/1.1\r\n")
    assert not postgresql.detect(b"Q\x00\x00\x00\rSELECT 1\x01")


def test_statement_map_is_bounded() -> None:
    parser = postgresql.Parser(base.CaptureSettings())
    for index in range(postgresql.MAX_STATEMENTS + 10):
        body = f"s{index}\x00SELECT {index}\x00".encode() + b"\x00\x00"
        frame = b"P" + (len(body) + 4).to_bytes(4, "big") + body
        parser.feed(base.Message(True, frame, len(frame), index, index))
        parser.feed(base.Message(False, b"1\x00\x00\x00\x04", 5, index, index + 1))
    assert parser.state_size <= postgresql.MAX_STATEMENTS + postgresql.MAX_PORTALS
    assert parser.dropped == 10


def test_detect_rejects_length_prefixed_binary_of_other_protocols() -> None:
    # MongoDB messages start with a little-endian length: from 256 bytes on, PostgreSQL would read
    # bytes 1-4 as a length of 16 MiB or more (b"F\x01\0\0": pymongo's 326-byte handshake).
    for length in range(256, 1 << 16, 7):
        message = (length.to_bytes(4, "little") + (0x1234).to_bytes(4, "little") + bytes(4)
                   + (2013).to_bytes(4, "little"))  # length, requestID, responseTo, OP_MSG
        assert not postgresql.detect(message + bytes(64)), length
    assert not postgresql.detect(b"X\x01\x00\x00\x10" + bytes(40))  # Terminate has no body
    assert postgresql.detect(b"S\x00\x00\x00\x04")  # but a bare Sync is a client's
    parse = b"s1\x00SELECT 1\x00\x00\x00"
    cut_bind = b"B\x00\x00\x00\x20" + b"\x00s1\x00"  # its body is past the capture
    assert postgresql.detect(b"P" + (len(parse) + 4).to_bytes(4, "big") + parse + cut_bind)


def test_blank_command_tag_is_not_a_crash() -> None:
    # Found by tests/fuzz (corpus: postgresql/blank-command-tag): a CommandComplete tag of control
    # characters became blank text and escaped as an IndexError from feed().
    parser = postgresql.Parser(base.CaptureSettings())
    query = b"Q\x00\x00\x00\x0dSELECT 1\x00"
    parser.feed(base.Message(True, query, len(query), 1, 2))
    reply = b"C\x00\x00\x00\x07\x01\x02\x00Z\x00\x00\x00\x05I"
    (record,) = parser.feed(base.Message(False, reply, len(reply), 3, 4))
    assert record.name == "SELECT" and "db.response.returned_rows" not in record.attributes
