"""Kafka parser against kafka-python talking to the loopback responder (fixtures/kafka)."""

from __future__ import annotations

import collections
import struct

import pytest

from podspan_agent.protocols import base, kafka
from tests.unit.protocols.fixtures import capture_db


def records(name: str, capture_size: int = 4096) -> tuple[list[base.Record], list[kafka.Parser]]:
    recs: list[base.Record] = []
    parsers = []
    for connection in capture_db.load("kafka", name, capture_size):
        parser = kafka.Parser()
        recs += [record for msg in connection for record in parser.feed(msg)]
        parsers.append(parser)
    return recs, parsers


@pytest.mark.parametrize("name", ["client_latest", "legacy_versions"])
def test_producer_and_consumer_session(name: str) -> None:
    recs, parsers = records(name)
    names = [r.name for r in recs]
    assert names.count("Produce orders") == 2 and names.count("Produce rejected") == 1
    assert names.count("Fetch orders") >= 3 and "Metadata" in names and "ApiVersions" in names
    produce = recs[names.index("Produce orders")]
    assert produce.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.name": "Produce",
        "messaging.operation.type": "send",
        "messaging.destination.name": "orders",
        "messaging.client.id": "podspan-producer",
    }
    fetch = recs[names.index("Fetch orders")]
    assert fetch.attributes["messaging.operation.type"] == "receive"
    assert fetch.attributes["messaging.client.id"] == "podspan-consumer"
    rejected = recs[names.index("Produce rejected")]
    assert rejected.error == rejected.attributes["error.type"] == "MESSAGE_TOO_LARGE"
    assert [r.error for r in recs if r.name != "Produce rejected"] == [None] * (len(recs) - 1)
    assert [r for r in recs if "error.type" in r.attributes] == [rejected]
    assert all(r.start_ns <= r.end_ns for r in recs)
    assert all(p.dropped == 0 for p in parsers)


def test_pipelined_requests_pair_by_correlation_id() -> None:
    # The consumer sent Fetch and Metadata in one run; their answers came in different runs.
    recs, parsers = records("client_latest")
    consumer = [r for r in recs if r.attributes.get("messaging.client.id") == "podspan-consumer"]
    assert [r.name for r in consumer].count("Metadata") == 2
    assert sum(p.state_size for p in parsers) <= 2  # at most the last poll per connection waits


def test_truncated_frames_still_pair() -> None:
    full, _ = records("client_latest")
    cut, parsers = records("client_latest", capture_size=20)
    # Only frames pipelined behind another in one run fall outside 20 bytes: a Metadata
    # request (after a Fetch) and a Fetch response (after a Metadata one). Both are counted.
    # That Fetch is not reported from request order: the unseen Metadata request was sent
    # before it, so the unseen rest of the run might have answered that one.
    operations = collections.Counter(r.attributes["messaging.operation.name"] for r in full)
    operations.subtract(r.attributes["messaging.operation.name"] for r in cut)
    assert +operations == {"Metadata": 1, "Fetch": 1}
    assert sum(p.dropped for p in parsers) == 2
    assert "messaging.destination.name" not in cut[-1].attributes  # topics were cut off too


def _produce_v3(acks: int, topics: list[str], correlation_id: int = 7) -> bytes:
    body = struct.pack(">h", -1) + struct.pack(">hi", acks, 1000) + struct.pack(">i", len(topics))
    for topic in topics:
        body += (
            struct.pack(">h", len(topic)) + topic.encode() + struct.pack(">i", 1) + struct.pack(">ii", 0, -1)
        )
    header = struct.pack(">hhih", 0, 3, correlation_id, 3) + b"app"
    return struct.pack(">i", len(header + body)) + header + body


def test_acks_zero_reports_without_response_and_multi_topic_has_no_destination() -> None:
    parser = kafka.Parser()
    data = _produce_v3(0, ["a"]) + _produce_v3(1, ["a", "b"], correlation_id=8)
    (record,) = parser.feed(base.Message(True, data, len(data), 5, 6))
    assert record.name == "Produce a" and record.end_ns == 6
    assert parser.state_size == 1
    answer = struct.pack(">iiii", 12, 8, 0, 0)  # Produce v3 response: no topics, throttle 0
    (paired,) = parser.feed(base.Message(False, answer, len(answer), 9, 10))
    assert paired.name == "Produce" and "messaging.destination.name" not in paired.attributes


def test_pending_is_bounded() -> None:
    parser = kafka.Parser(max_pending=3)
    data = b"".join(_produce_v3(1, ["t"], correlation_id=i) for i in range(10))
    parser.feed(base.Message(True, data, len(data), 1, 2))
    assert parser.state_size == 3 and parser.dropped == 7


def test_detect() -> None:
    (connection, *_) = capture_db.load("kafka", "client_latest", 4096)
    assert kafka.detect(connection[0].data)
    assert kafka.detect(_produce_v3(1, ["t"]))
    assert not kafka.detect(connection[1].data, from_client=False)
    assert not kafka.detect(_produce_v3(1, ["t"])[:4] + b"\x00\x63" + _produce_v3(1, ["t"])[6:])  # api key 99
    assert not kafka.detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_response_without_correlation_id_pairs_in_order() -> None:
    parser = kafka.Parser()
    data = _produce_v3(1, ["a"], correlation_id=1) + _produce_v3(1, ["b"], correlation_id=2)
    parser.feed(base.Message(True, data, len(data), 1, 2))
    # Only the 4-byte size was captured (the client read it on its own): responses come in order.
    answer = struct.pack(">iiii", 12, 1, 0, 0)
    (record,) = parser.feed(base.Message(False, answer[:4], len(answer), 3, 4))
    assert record.name == "Produce a" and record.error is None and record.response_size == len(answer)
    # A response naming a later request means the earlier ones were answered unseen.
    data = _produce_v3(1, ["c"], correlation_id=3)
    parser.feed(base.Message(True, data, len(data), 5, 6))
    answer = struct.pack(">iiii", 12, 3, 0, 0)
    (record,) = parser.feed(base.Message(False, answer, len(answer), 7, 8))
    assert record.name == "Produce c" and parser.state_size == 0 and parser.unseen == 1
    # After a request the capture missed (a second frame in the run), order no longer tells.
    data = _produce_v3(1, ["d"], correlation_id=4) + _produce_v3(1, ["e"], correlation_id=5)
    first = len(_produce_v3(1, ["d"]))
    parser.feed(base.Message(True, data[:first], len(data), 9, 10))
    data = _produce_v3(1, ["f"], correlation_id=6)
    parser.feed(base.Message(True, data, len(data), 11, 12))
    answer = struct.pack(">iiii", 12, 4, 0, 0)
    # Two answers in one run, of which the capture holds the first one's size only.
    (record,) = parser.feed(base.Message(False, answer[:4], 2 * len(answer), 13, 14))
    assert record.name == "Produce d"  # then the answer to "e" or "f": no telling which
    assert parser.state_size == 1
    answer = struct.pack(">iiii", 12, 6, 0, 0)
    (record,) = parser.feed(base.Message(False, answer, len(answer), 15, 16))
    assert record.name == "Produce f"
