"""Small loopback servers that answer real Kafka, MongoDB and DNS clients with valid frames.

Neither Kafka nor MongoDB servers come from the package registries, so tests drive the real
client libraries (kafka-python, pymongo, dnspython) against these responders instead. They
implement just enough of each protocol for a producer/consumer, a CRUD session and lookups.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

import bson
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from kafka.protocol import consumer as kafka_consumer
from kafka.protocol import metadata as kafka_metadata
from kafka.protocol import producer as kafka_producer
from kafka.protocol.api_header import ResponseClassRegistry


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("peer closed")
        chunks.extend(chunk)
    return bytes(chunks)


class _TcpServer:
    """A threaded loopback TCP server; subclasses answer one connection in `serve`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = False
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            worker = threading.Thread(target=self._serve_safely, args=(conn,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve_safely(self, conn: socket.socket) -> None:
        with contextlib.suppress(ConnectionError, OSError), conn:
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class KafkaResponder(_TcpServer):
    """One-broker Kafka cluster: ApiVersions, Metadata, Produce, Fetch, ListOffsets.

    `advertised_port` is what Metadata tells clients to reconnect to (a recording relay in
    front of this responder). `max_versions` caps the versions ApiVersions advertises, to
    exercise old and flexible encodings. Produce to `rejected_topic` fails with
    MESSAGE_TOO_LARGE (10), a non-retriable error.
    """

    TOPIC = "orders"

    def __init__(self, max_versions: dict[int, int] | None = None, rejected_topic: str = "rejected") -> None:
        super().__init__()
        self.advertised_port = self.port
        self.max_versions = max_versions or {}
        self.rejected_topic = rejected_topic
        self.requests: list[tuple[int, int]] = []  # (api_key, api_version) in arrival order
        self._handlers: dict[int, Callable[[object, int], object]] = {
            18: self._api_versions,
            3: self._metadata,
            0: self._produce,
            1: self._fetch,
            2: self._list_offsets,
        }

    def serve(self, conn: socket.socket) -> None:
        while True:
            (size,) = struct.unpack(">i", _recv_exact(conn, 4))
            frame = _recv_exact(conn, size)
            api_key, api_version, correlation_id = struct.unpack(">hhi", frame[:8])
            self.requests.append((api_key, api_version))
            handler = self._handlers.get(api_key)
            if handler is None:
                return  # unsupported: a real broker would close too
            response_class = ResponseClassRegistry.get_response_class(_Header(api_key, api_version))
            request = None
            if api_key in (0, 1):
                request_class = _REQUEST_CLASSES[api_key]
                request = request_class.decode(frame, version=api_version, header=True)
            response = handler(request, api_version)
            if api_key == 0 and request is not None and request.acks == 0:
                continue  # acks=0: the broker never answers
            response = response_class(version=api_version, **response)  # type: ignore[arg-type]
            response.with_header(correlation_id=correlation_id)
            conn.sendall(response.encode(header=True, framed=True))

    def _api_versions(self, _request: object, _version: int) -> object:
        entry = kafka_metadata.ApiVersionsResponse.ApiVersion
        supported = {18: 3, 3: 12, 0: 11, 1: 17, 2: 9}
        keys = [
            entry(api_key=key, min_version=0, max_version=min(top, self.max_versions.get(key, top)))
            for key, top in supported.items()
        ]
        return {"error_code": 0, "api_keys": keys, "throttle_time_ms": 0}

    def _metadata(self, _request: object, _version: int) -> object:
        response = kafka_metadata.MetadataResponse
        broker = response.MetadataResponseBroker(
            node_id=0, host="127.0.0.1", port=self.advertised_port, rack=None
        )
        topic_class = response.MetadataResponseTopic
        partition = topic_class.MetadataResponsePartition(
            error_code=0, partition_index=0, leader_id=0, leader_epoch=0, replica_nodes=[0], isr_nodes=[0]
        )
        topics = [
            topic_class(error_code=0, name=name, is_internal=False, partitions=[partition])
            for name in (self.TOPIC, self.rejected_topic)
        ]
        return {
            "throttle_time_ms": 0,
            "brokers": [broker],
            "cluster_id": "podspan-test",
            "controller_id": 0,
            "topics": topics,
        }

    def _produce(self, request: object, _version: int) -> object:
        response = kafka_producer.ProduceResponse
        topic_class = response.TopicProduceResponse
        topics = []
        for topic in request.topic_data:  # type: ignore[attr-defined]
            error = 10 if topic.name == self.rejected_topic else 0
            partitions = [
                topic_class.PartitionProduceResponse(index=p.index, error_code=error, base_offset=0)
                for p in topic.partition_data
            ]
            topics.append(topic_class(name=topic.name, partition_responses=partitions))
        return {"responses": topics, "throttle_time_ms": 0}

    def _fetch(self, request: object, _version: int) -> object:
        response = kafka_consumer.FetchResponse
        topic_class = response.FetchableTopicResponse
        topics = []
        for topic in request.topics:  # type: ignore[attr-defined]
            partitions = [
                topic_class.PartitionData(
                    partition_index=p.partition, error_code=0, high_watermark=0, records=b""
                )
                for p in topic.partitions
            ]
            topics.append(topic_class(topic=topic.topic, partitions=partitions))
        # No records: a consumer polls again after max_wait, which keeps Fetches coming.
        time.sleep(0.05)
        return {"throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": topics}

    def _list_offsets(self, _request: object, _version: int) -> object:
        response = kafka_consumer.ListOffsetsResponse
        topic_class = response.ListOffsetsTopicResponse
        partition = topic_class.ListOffsetsPartitionResponse(
            partition_index=0, error_code=0, timestamp=-1, offset=0
        )
        return {"throttle_time_ms": 0, "topics": [topic_class(name=self.TOPIC, partitions=[partition])]}


class _Header:
    """What ResponseClassRegistry needs to find the response class of a request."""

    def __init__(self, api_key: int, api_version: int) -> None:
        self.request_api_key = api_key
        self.request_api_version = api_version


_REQUEST_CLASSES = {0: kafka_producer.ProduceRequest, 1: kafka_consumer.FetchRequest}


OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013


class MongoResponder(_TcpServer):
    """A standalone mongod look-alike: hello/isMaster (OP_QUERY and OP_MSG), ping, insert,
    find, delete, endSessions. `find` on collection `forbidden` fails with Unauthorized (13);
    inserting `_id` 0 reports a duplicate key write error (11000); any other command fails
    with CommandNotFound (59), as mongod answers it."""

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 1000

    def serve(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("<i", _recv_exact(conn, 4))
            body = _recv_exact(conn, length - 4)
            request_id, _, opcode = struct.unpack("<iii", body[:12])
            if opcode == OP_QUERY:
                # flags, fullCollectionName, numberToSkip, numberToReturn, then the query document
                collection_end = body.index(b"\0", 16)
                query = bson.decode_all(body[collection_end + 9 :])[0]
                reply = bson.encode(self._answer(query))
                payload = struct.pack("<iqii", 0, 0, 0, 1) + reply
                conn.sendall(self._frame(request_id, OP_REPLY, payload))
            elif opcode == OP_MSG:
                flags = struct.unpack("<I", body[12:16])[0]
                (body_size,) = struct.unpack("<i", body[17:21])  # section kind 0 comes first from pymongo
                command = bson.decode(body[17 : 17 + body_size])
                command.update(self._sequences(body[17 + body_size :]))
                answer = bson.encode(self._answer(command))
                if not flags & 0x2:  # moreToCome: the client expects no reply
                    conn.sendall(self._frame(request_id, OP_MSG, struct.pack("<IB", 0, 0) + answer))
            else:
                return

    @staticmethod
    def _sequences(rest: bytes) -> dict[str, list[dict[str, object]]]:
        out: dict[str, list[dict[str, object]]] = {}
        pos = 0
        while pos < len(rest) and rest[pos] == 1:
            (size,) = struct.unpack("<i", rest[pos + 1 : pos + 5])
            section = rest[pos + 5 : pos + 1 + size]
            name_end = section.index(b"\0")
            out[section[:name_end].decode()] = list(bson.decode_all(section[name_end + 1 :]))
            pos += 1 + size
        return out

    def _frame(self, response_to: int, opcode: int, payload: bytes) -> bytes:
        self._next_id += 1
        return struct.pack("<iiii", 16 + len(payload), self._next_id, response_to, opcode) + payload

    @staticmethod
    def _answer(command: dict[str, object]) -> dict[str, object]:
        name = next(iter(command), "")
        if name in ("hello", "isMaster", "ismaster"):
            return {
                "helloOk": True,
                "isWritablePrimary": True,
                "ismaster": True,
                "maxBsonObjectSize": 16 * 1024 * 1024,
                "maxMessageSizeBytes": 48_000_000,
                "maxWriteBatchSize": 100_000,
                "localTime": bson.datetime.datetime.now(tz=bson.datetime.timezone.utc),
                "logicalSessionTimeoutMinutes": 30,
                "connectionId": 1,
                "minWireVersion": 0,
                "maxWireVersion": 21,
                "readOnly": False,
                "ok": 1.0,
            }
        if name == "insert":
            documents = command.get("documents", [])
            assert isinstance(documents, list)
            duplicates = [i for i, doc in enumerate(documents) if doc.get("_id") == 0]
            answer: dict[str, object] = {"n": len(documents) - len(duplicates), "ok": 1.0}
            if duplicates:
                answer["writeErrors"] = [
                    {"index": i, "code": 11000, "errmsg": "E11000 duplicate key error"} for i in duplicates
                ]
            return answer
        if name == "find":
            if command["find"] == "forbidden":
                return {"ok": 0.0, "errmsg": "not authorized", "code": 13, "codeName": "Unauthorized"}
            namespace = f"{command.get('$db')}.{command['find']}"
            batch = [{"_id": 1, "name": "alice"}]
            return {"cursor": {"firstBatch": batch, "id": bson.int64.Int64(0), "ns": namespace}, "ok": 1.0}
        if name == "delete":
            return {"n": 1, "ok": 1.0}
        if name in ("ping", "endSessions"):
            return {"ok": 1.0}
        return {"ok": 0.0, "errmsg": f"no such command: '{name}'", "code": 59, "codeName": "CommandNotFound"}


class DnsResponder:
    """A loopback DNS server over UDP and TCP that records each UDP datagram as a run.

    Names under `test.` resolve (A 192.0.2.x / AAAA 2001:db8::x); `fail.test.` answers
    SERVFAIL and everything else NXDOMAIN. `host`/`port` place it elsewhere, e.g. port 53 on a
    test network namespace's host-side address for a resolver that reads /etc/resolv.conf.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, port))
        self.port = int(self.udp.getsockname()[1])
        self.tcp = socket.create_server((host, port))
        self.tcp_port = int(self.tcp.getsockname()[1])
        # Datagrams as the capture would see them: (from_client, timestamp ns, bytes).
        self.datagrams: list[tuple[bool, int, bytes]] = []
        self._closed = False
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    @staticmethod
    def answer(query_wire: bytes) -> bytes:
        query = dns.message.from_wire(query_wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        if name == "fail.test.":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name.endswith(".test.") and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            address = "192.0.2.7" if question.rdtype == dns.rdatatype.A else "2001:db8::7"
            response.answer.append(dns.rrset.from_text(name, 60, "IN", question.rdtype, address))
            response.flags |= dns.flags.AA
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire: bytes = response.to_wire()
        return wire

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                query, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            self.datagrams.append((True, time.time_ns(), query))
            reply = self.answer(query)
            self.datagrams.append((False, time.time_ns(), reply))
            self.udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with contextlib.suppress(ConnectionError, OSError), conn:
                while True:
                    (length,) = struct.unpack(">H", _recv_exact(conn, 2))
                    reply = self.answer(_recv_exact(conn, length))
                    conn.sendall(struct.pack(">H", len(reply)) + reply)

    def close(self) -> None:
        self._closed = True
        self.udp.close()
        self.tcp.close()
