"""Redis parser against real redis-server captures (fixtures/redis, see capture_db.py)."""

from __future__ import annotations

import tracemalloc

import pytest

from podspan_agent.protocols import base, redis
from tests.unit.protocols.fixtures import capture_db


def records(name: str, capture_size: int = 512, statement_parameters: bool = False,
            ) -> tuple[list[base.Record], redis.Parser]:
    parser = redis.Parser(base.CaptureSettings(statement_parameters=statement_parameters))
    (connection,) = capture_db.load("redis", name, capture_size)
    return [record for message in connection for record in parser.feed(message)], parser


def test_resp2_session_commands_errors_and_namespace() -> None:
    recs, parser = records("resp2_session")
    ops = [r.attributes["db.operation.name"] for r in recs]
    assert ops[:4] == ["COMMAND DOCS", "SELECT", "SET", "GET"]
    assert "CLIENT SETNAME" in ops and ops[-1] == "PING"
    assert all(r.attributes["db.system.name"] == "redis" for r in recs)
    assert recs[0].attributes.get("db.namespace") is None
    assert {r.attributes["db.namespace"] for r in recs[1:]} == {"2"}
    incr = recs[ops.index("INCR")]
    assert incr.attributes["db.response.status_code"] == "ERR"
    assert incr.error is not None and incr.error.startswith("ERR value is not an integer")
    wrongtype = [r for r in recs if r.attributes.get("db.response.status_code") == "WRONGTYPE"]
    assert len(wrongtype) == 1 and wrongtype[0].attributes["db.operation.name"] == "LPUSH"
    assert recs[ops.index("SET")].attributes["db.query.text"] == "SET ? ?"
    assert recs[ops.index("SET")].name == "SET"
    assert all(r.start_ns <= r.end_ns for r in recs)
    assert parser.dropped == 0 and parser.state_size == 0


def test_large_values_pair_by_declared_length() -> None:
    recs, parser = records("resp2_session", capture_size=64)
    big_get = [r for r in recs if r.response_size == 3009]
    assert len(big_get) == 1 and big_get[0].attributes["db.operation.name"] == "GET"
    assert len(recs) == 18 and parser.dropped == 0


def test_statement_parameters_are_opt_in() -> None:
    recs, _ = records("resp2_session", statement_parameters=True)
    texts = [r.attributes["db.query.text"] for r in recs]
    assert "SET user:1 alice" in texts and "CLIENT SETNAME podspan" in texts


@pytest.mark.parametrize("name", ["resp3_session", "resp3_types"])
def test_resp3_replies_pair_one_to_one(name: str) -> None:
    recs, parser = records(name)
    (connection,) = capture_db.load("redis", name, 4096)
    assert len(recs) == sum(m.from_client for m in connection)
    assert parser.dropped == 0 and parser.state_size == 0
    assert not any(r.error for r in recs if r.attributes["db.operation.name"] == "DEBUG PROTOCOL")


def test_resp3_push_and_attribute_are_not_replies() -> None:
    recs, _ = records("resp3_types")
    sizes = [r.response_size for r in recs]
    assert 93 in sizes  # attribute map + the reply it describes
    assert 47 in sizes  # the reply after the push message, without it


def test_pipeline_pairs_all_commands_when_captured() -> None:
    recs, parser = records("pipeline", capture_size=4096)
    assert len(recs) == 83
    assert [r.attributes["db.operation.name"] for r in recs[:2]] == ["SET", "SET"]
    assert recs[80].attributes["db.response.status_code"] == "ERR"  # INCR on "value-1"
    assert recs[81].attributes["db.operation.name"] == "MGET"
    assert parser.dropped == 0


def test_truncated_pipeline_pairs_what_was_captured_and_counts_the_rest() -> None:
    recs, parser = records("pipeline", capture_size=512)
    assert 10 < len(recs) < 83
    assert all(r.attributes["db.operation.name"] == "SET" for r in recs)
    assert parser.dropped >= 1 and parser.state_size == 0


def test_detect() -> None:
    assert redis.detect(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
    assert not redis.detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not redis.detect(b"+OK\r\n")
    assert not redis.detect(b"*0\r\n")


def test_reply_without_request_is_counted() -> None:
    parser = redis.Parser(base.CaptureSettings())
    assert parser.feed(base.Message(False, b"+OK\r\n", 5, 1, 2)) == []
    assert parser.dropped == 1


def test_a_huge_declared_argument_count_costs_bounded_memory() -> None:
    # Found by tests/fuzz (corpus: redis/huge-argument-count): "*<27 digits>" built a list of that many "?"
    # for the arguments past the captured bytes. A million is enough to tell: 8 MB of list before the fix.
    parser = redis.Parser(base.CaptureSettings())
    command = b"*1000000\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
    tracemalloc.start()
    try:
        parser.feed(base.Message(True, command, len(command) + 100, 1, 2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    (record,) = parser.feed(base.Message(False, b"+OK\r\n", 5, 3, 4))
    text = record.attributes["db.query.text"]
    assert isinstance(text, str) and text.startswith("HELLO ? ? ?") and len(text) <= redis.MAX_QUERY_TEXT
