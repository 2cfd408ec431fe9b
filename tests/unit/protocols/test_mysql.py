"""MySQL/MariaDB parser against real MariaDB captures (fixtures/mysql, see capture_db.py)."""

from __future__ import annotations

import pytest

from podspan_agent.protocols import base, mysql
from tests.unit.protocols.fixtures import capture_db


def run(name: str, capture_size: int = 512) -> tuple[list[base.Record], mysql.Parser]:
    parser = mysql.Parser(base.CaptureSettings())
    (connection,) = capture_db.load("mysql", name, capture_size)
    return [record for message in connection for record in parser.feed(message)], parser


def test_small_capture_keeps_operations_but_not_a_cut_off_database_name() -> None:
    recs, parser = run("cli_session", 64)
    assert [r.attributes.get("db.operation.name") for r in recs] == [
        "SELECT", "INSERT", "UPDATE", "SELECT", "SELECT", "SELECT", "USE", "SELECT"]
    assert "db.namespace" not in recs[0].attributes
    assert recs[-1].attributes["db.namespace"] == "other"
    assert parser.dropped == 0


@pytest.mark.parametrize("capture_size", [512, 4096])
def test_cli_session(capture_size: int) -> None:
    recs, parser = run("cli_session", capture_size)
    assert [r.name for r in recs] == [
        "SELECT users", "INSERT users", "UPDATE users", "SELECT nosuchtable", "SELECT shop", "SELECT shop",
        "USE other", "SELECT other",
    ]
    assert all(r.attributes["db.system.name"] == "mariadb" for r in recs)
    assert recs[1].attributes["db.query.text"] == "INSERT INTO users VALUES (?, ?, ?)"
    assert recs[2].attributes["db.query.text"] == "UPDATE users SET email = ? WHERE id IN (?)"
    assert recs[3].attributes["db.response.status_code"] == "1146"
    assert recs[3].error == "Table '?' doesn't exist"  # quoted names and values hidden by default
    assert [r.attributes["db.namespace"] for r in recs][-3:] == ["shop", "other", "other"]
    assert recs[0].attributes["db.response.returned_rows"] == 1
    assert all(r.start_ns <= r.end_ns for r in recs)
    assert parser.dropped == 0 and parser.state_size == 0


def test_rows_counted_only_when_the_result_end_was_captured() -> None:
    small, _ = run("cli_session", 512)
    large, _ = run("cli_session", 4096)
    assert "db.response.returned_rows" not in small[4].attributes
    assert large[4].attributes["db.response.returned_rows"] == 1


def test_prepared_statements() -> None:
    recs, parser = run("prepared_session")
    texts = [r.attributes.get("db.query.text") for r in recs]
    assert texts[1:4] == ["SELECT id, name, email FROM users WHERE id = ?"] * 3
    assert texts[4] == "UPDATE users SET name = ? WHERE id = ?"
    assert all(r.attributes["db.response.returned_rows"] == 1 for r in recs[1:4])
    failed_prepare = recs[5]
    assert failed_prepare.attributes["db.response.status_code"] == "1146"
    # Executing a closed statement: the text is gone with it, the server's error remains.
    closed = recs[6]
    assert "db.query.text" not in closed.attributes
    assert closed.attributes["db.response.status_code"] == "1243"
    assert [r.attributes.get("db.operation.name") for r in recs[7:]] == ["PING", "USE", "SELECT"]
    assert parser.state_size == 1  # the UPDATE statement was never closed
    assert parser.dropped == 0


def test_commands_after_the_captured_write_are_counted_as_lost() -> None:
    # A client writes COM_STMT_CLOSE (no reply) and then COM_STMT_EXECUTE in two write()s of one run;
    # the kernel captures only the first, so the EXECUTE and its ERR reply cannot be paired.
    (connection,) = capture_db.load("mysql", "prepared_session")
    close_packet = 4 + 1 + 4
    messages = [m._replace(data=m.data[:close_packet]) if m.from_client and m.data[4] == 0x19 else m
                for m in connection]
    parser = mysql.Parser(base.CaptureSettings())
    recs = [record for message in messages for record in parser.feed(message)]
    assert "1243" not in [r.attributes.get("db.response.status_code") for r in recs]
    assert [r.attributes.get("db.operation.name") for r in recs[6:]] == ["PING", "USE", "SELECT"]
    assert parser.dropped == 1


def test_detect() -> None:
    (connection,) = capture_db.load("mysql", "cli_session")
    assert mysql.detect(connection[0].data)  # server greeting
    assert mysql.detect(connection[3].data)  # COM_QUERY
    assert not mysql.detect(b"GET / HTTP/1.1\r\n")
    assert not mysql.detect(b"\x05\x00\x00\x00\x03SEL")  # length says 5 but 3 bytes follow


def test_statement_map_is_bounded() -> None:
    parser = mysql.Parser(base.CaptureSettings())
    for index in range(mysql.MAX_STATEMENTS + 5):
        query = b"\x16SELECT ?"
        parser.feed(base.Message(True, len(query).to_bytes(3, "little") + b"\x00" + query, 13, index, index))
        ok = b"\x00" + index.to_bytes(4, "little") + b"\x00\x00\x00\x00\x00\x00\x00"
        parser.feed(base.Message(False, len(ok).to_bytes(3, "little") + b"\x01" + ok, 16, index, index + 1))
    assert parser.state_size == mysql.MAX_STATEMENTS
    assert parser.dropped == 5
