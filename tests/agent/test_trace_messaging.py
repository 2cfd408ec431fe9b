"""Kafka and MongoDB tracing through the real kernel path: kafka-python and pymongo run in a traced
pod against the loopback responders of tests/support/wire_responders.py (no broker or mongod comes
from the package registries), and the spans are checked at a real OTLP receiver."""

from __future__ import annotations

import collections
import collections.abc
import os
import pathlib
import struct
import sys

import bson
import pytest

from podspan_agent import tracer
from podspan_agent.protocols import base, kafka, mongodb, registry
from podspan_demo import otlp_receiver, pods
from tests.support import wire_clients, wire_responders

CLIENT = 3  # OTLP SpanKind
STATUS_ERROR = 2
REPO = pathlib.Path(__file__).resolve().parents[2]
UNKNOWN = f"{wire_clients.UNKNOWN_COMMAND} shop"

Spans = list[otlp_receiver.ReceivedSpan]
Select = collections.abc.Callable[[pods.Pod], None]


def _run_client(pod_runner: pods.PodRunner, traced: Select, gate: pathlib.Path, service: str,
                session: list[str]) -> pods.Pod:
    """Run a wire_clients session in a traced pod; returns once it exited successfully."""
    os.mkfifo(gate)
    argv = [sys.executable, "-m", "tests.support.wire_clients", "--gate", str(gate), *session]
    pod = pod_runner.start(service, argv, env={"PYTHONPATH": str(REPO), "OTEL_SERVICE_NAME": service})
    traced(pod)
    # Opening blocks until the client has opened its end; closing lets its session start, so
    # every connection it makes is opened while its cgroup is selected.
    with open(gate, "wb"):
        pass
    assert pod.process is not None
    assert pod.process.wait(timeout=60) == 0
    return pod


def _spans(receiver: otlp_receiver.OtlpReceiver, service: str, wanted: dict[str, int]) -> Spans:
    """The service's spans, once it has at least `wanted` spans of each name."""
    def ours(spans: Spans) -> Spans:
        return [s for s in spans if s.resource.get("service.name") == service]

    minimum = collections.Counter(wanted)
    return ours(receiver.wait_for(lambda spans: collections.Counter(s.name for s in ours(spans)) >= minimum,
                                  timeout=30))


def _check_client_spans(spans: Spans, pod: pods.Pod, port: int) -> None:
    for span in spans:
        assert span.kind == CLIENT
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == port
        assert span.resource["process.pid"] == pod.pid
        assert span.start_ns < span.end_ns
    # Nothing on these wires links one exchange to another: each is its own trace.
    assert len({s.trace_id for s in spans}) == len(spans)


# What the broker advertises: whatever kafka-python negotiates today (flexible, compact encodings), and
# an old broker (request header v1, non-flexible Produce/Fetch/Metadata).
BROKERS = {"latest": {}, "legacy": {18: 2, 3: 8, 0: 7, 1: 11, 2: 5}}


@pytest.mark.parametrize("broker", BROKERS)
def test_kafka_producer_and_consumer(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Select,
    tmp_path: pathlib.Path, broker: str,
) -> None:
    responder = wire_responders.KafkaResponder(max_versions=BROKERS[broker])
    service = f"kafka-{broker}"
    try:
        pod = _run_client(pod_runner, traced, tmp_path / "gate", service, ["kafka", f"127.0.0.1:{responder.port}"])
    finally:
        responder.close()
    # The advertised versions decide which encodings the parser meets.
    data_requests = [(key, version) for key, version in responder.requests if key in (kafka.PRODUCE, kafka.FETCH)]
    assert {kafka.flexible(key, version) for key, version in data_requests} == {broker == "latest"}
    # A span for every request, but perhaps the consumer's last Fetch (it may close before the reply).
    # The consumer writes a Fetch and a Metadata request in two send()s of one run: the second
    # reaches the parser as a CONTINUATION of the run.
    asked = collections.Counter(kafka.API_KEYS[key][0] for key, _ in responder.requests)
    spans = _spans(receiver, service, {"ApiVersions": asked["ApiVersions"], "Metadata": asked["Metadata"],
                                       "Produce orders": 2, "Produce rejected": 1,
                                       "Fetch orders": max(asked["Fetch"] - 1, 1)})
    _check_client_spans(spans, pod, responder.port)
    # None the client did not ask for (a response paired with the wrong request would show).
    assert not collections.Counter(s.attributes["messaging.operation.name"] for s in spans) - asked

    for span in spans:
        assert span.attributes["messaging.system"] == "kafka"
    produced = [s for s in spans if s.name == "Produce orders"]
    fetched = [s for s in spans if s.name == "Fetch orders"]
    for span, client_id, operation_type in [*[(s, wire_clients.PRODUCER_ID, "send") for s in produced],
                                            *[(s, wire_clients.CONSUMER_ID, "receive") for s in fetched]]:
        assert span.attributes["messaging.operation.name"] == span.name.split()[0]
        assert span.attributes["messaging.operation.type"] == operation_type
        assert span.attributes["messaging.destination.name"] == "orders"
        assert span.attributes["messaging.client.id"] == client_id
        assert span.status_code != STATUS_ERROR and "error.type" not in span.attributes
    (rejected,) = [s for s in spans if s.name == "Produce rejected"]
    assert rejected.attributes["messaging.destination.name"] == "rejected"
    assert rejected.status_code == STATUS_ERROR and rejected.status_message == "MESSAGE_TOO_LARGE"
    assert rejected.attributes["error.type"] == "MESSAGE_TOO_LARGE"
    # Broker housekeeping (ApiVersions, Metadata) is neither a send nor a receive.
    housekeeping = [s for s in spans if s.name in ("ApiVersions", "Metadata")]
    assert housekeeping and not [s for s in housekeeping if "messaging.operation.type" in s.attributes]
    assert "messaging.destination.name" not in housekeeping[0].attributes


def test_mongodb_handshakes_of_any_length_are_detected_as_mongodb() -> None:
    """pymongo's first message carries the machine (kernel release, Python version, a container
    runtime if it sees one), so its length differs between machines; at no length may it read as
    another protocol: 326 bytes, say, begins with the bytes 46 01 00 00, a PostgreSQL FunctionCall ("F")
    of 16 MiB (on a machine without /.dockerenv, pymongo's handshake here was 326 bytes)."""
    detect = registry.detector(None, base.CaptureSettings())

    def hello(name: str) -> bytes:
        return bson.encode({"hello": 1, "client": {"application": {"name": name}}, "$db": "admin"})
    header = struct.calcsize("<iiiiIB")
    for length in range(header + len(hello("")), 4096):
        document = hello("x" * (length - header - len(hello(""))))
        for request_id in range(1, 1 << 31, 0x0F0F0F0F):
            frame = struct.pack("<iiiiIB", length, request_id, 0, mongodb.OP_MSG, 0, 0) + document
            assert len(frame) == length
            found = detect(frame, False)
            assert found is not None and found[0] == "mongodb", (length, request_id, found and found[0])


def _mongodb_session(pod_runner: pods.PodRunner, traced: Select, tmp_path: pathlib.Path,
                     service: str) -> tuple[pods.Pod, int]:
    responder = wire_responders.MongoResponder()
    try:
        pod = _run_client(pod_runner, traced, tmp_path / "gate", service,
                          ["mongodb", "127.0.0.1", str(responder.port)])
    finally:
        responder.close()
    return pod, responder.port


def test_mongodb_commands(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Select,
    tmp_path: pathlib.Path,
) -> None:
    pod, port = _mongodb_session(pod_runner, traced, tmp_path, "mongo-client")
    spans = _spans(receiver, "mongo-client", {
        "ismaster admin": 1, "ping shop": 1, "insert users": 2, "find users": 1, "find forbidden": 1,
        "delete users": 1, UNKNOWN: 1, "endSessions admin": 1, "isMaster admin": 1,
    })
    _check_client_spans(spans, pod, port)
    by_name = collections.defaultdict(list)
    for span in spans:
        by_name[span.name].append(span)
        assert span.attributes["db.system.name"] == "mongodb"
    (find,) = by_name["find users"]
    assert {k: v for k, v in find.attributes.items() if k.startswith("db.")} == {
        "db.system.name": "mongodb",
        "db.namespace": "shop",
        "db.collection.name": "users",
        "db.operation.name": "find",
    }
    assert find.status_code != STATUS_ERROR
    (ping,) = by_name["ping shop"]
    assert ping.attributes["db.operation.name"] == "ping" and "db.collection.name" not in ping.attributes
    assert by_name["find forbidden"][0].attributes["db.collection.name"] == "forbidden"
    (unknown,) = by_name[UNKNOWN]
    assert unknown.attributes["db.operation.name"] == wire_clients.UNKNOWN_COMMAND
    # pymongo's handshake (OP_MSG, on the monitor and the pooled connection) and the legacy
    # OP_QUERY one, whose database is in the collection name `admin.$cmd`. The legacy client
    # reads the reply's length on its own, so its reply pairs by order, not by responseTo.
    assert all(s.attributes["db.namespace"] == "admin" for s in by_name["ismaster admin"])
    (legacy,) = by_name["isMaster admin"]
    assert legacy.attributes["db.namespace"] == "admin" and legacy.attributes["db.operation.name"] == "isMaster"


def test_mongodb_error_replies(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Select,
    tmp_path: pathlib.Path,
) -> None:
    # pymongo reads a reply's 16-byte header, then its body: the body reaches the parser as a
    # CONTINUATION of the run, so ok/code/writeErrors are seen.
    _mongodb_session(pod_runner, traced, tmp_path, "mongo-errors")
    spans = _spans(receiver, "mongo-errors", {"insert users": 2, "find forbidden": 1, UNKNOWN: 1})
    inserted, duplicate = sorted((s for s in spans if s.name == "insert users"), key=lambda s: s.start_ns)
    assert inserted.status_code != STATUS_ERROR
    # A write error comes back with ok: 1; the operation still failed.
    assert duplicate.status_code == STATUS_ERROR and duplicate.status_message == "WriteError"
    assert duplicate.attributes["db.response.status_code"] == duplicate.attributes["error.type"] == "11000"
    for name, message, code in (("find forbidden", "Unauthorized", "13"), (UNKNOWN, "CommandNotFound", "59")):
        (failed,) = [s for s in spans if s.name == name]
        assert failed.status_code == STATUS_ERROR and failed.status_message == message, name
        assert failed.attributes["db.response.status_code"] == failed.attributes["error.type"] == code, name
