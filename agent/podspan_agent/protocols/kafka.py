"""Kafka wire protocol parser: request headers, Produce/Fetch topics, errors, paired by correlation id."""

from __future__ import annotations

import dataclasses
import struct

from podspan_agent.protocols import base, framing

MAX_PENDING = 256
MAX_FRAME = 100 * 1024 * 1024
MAX_API_VERSION = 20
PRODUCE, FETCH, API_VERSIONS = 0, 1, 18

# api_key -> (name, first flexible version; 99 = never flexible). From the Apache Kafka
# message schemas; flexible versions use request header v2 and compact encodings.
API_KEYS: dict[int, tuple[str, int]] = {
    0: ("Produce", 9), 1: ("Fetch", 12), 2: ("ListOffsets", 6), 3: ("Metadata", 9),
    4: ("LeaderAndIsr", 4), 5: ("StopReplica", 2), 6: ("UpdateMetadata", 6), 7: ("ControlledShutdown", 3),
    8: ("OffsetCommit", 8), 9: ("OffsetFetch", 6), 10: ("FindCoordinator", 3), 11: ("JoinGroup", 6),
    12: ("Heartbeat", 4), 13: ("LeaveGroup", 4), 14: ("SyncGroup", 4), 15: ("DescribeGroups", 5),
    16: ("ListGroups", 3), 17: ("SaslHandshake", 99), 18: ("ApiVersions", 3), 19: ("CreateTopics", 5),
    20: ("DeleteTopics", 4), 21: ("DeleteRecords", 2), 22: ("InitProducerId", 2),
    23: ("OffsetForLeaderEpoch", 4),
    24: ("AddPartitionsToTxn", 3), 25: ("AddOffsetsToTxn", 3), 26: ("EndTxn", 3), 27: ("WriteTxnMarkers", 1),
    28: ("TxnOffsetCommit", 3), 29: ("DescribeAcls", 2), 30: ("CreateAcls", 2), 31: ("DeleteAcls", 2),
    32: ("DescribeConfigs", 4), 33: ("AlterConfigs", 2), 34: ("AlterReplicaLogDirs", 2),
    35: ("DescribeLogDirs", 2), 36: ("SaslAuthenticate", 2), 37: ("CreatePartitions", 2),
    38: ("CreateDelegationToken", 2), 39: ("RenewDelegationToken", 2), 40: ("ExpireDelegationToken", 2),
    41: ("DescribeDelegationToken", 2), 42: ("DeleteGroups", 2), 43: ("ElectLeaders", 2),
    44: ("IncrementalAlterConfigs", 1), 45: ("AlterPartitionReassignments", 0),
    46: ("ListPartitionReassignments", 0), 47: ("OffsetDelete", 99), 48: ("DescribeClientQuotas", 1),
    49: ("AlterClientQuotas", 1), 50: ("DescribeUserScramCredentials", 0),
    51: ("AlterUserScramCredentials", 0),
    55: ("DescribeQuorum", 0), 57: ("UpdateFeatures", 0), 60: ("DescribeCluster", 0),
    61: ("DescribeProducers", 0), 65: ("DescribeTransactions", 0), 66: ("ListTransactions", 0),
    68: ("ConsumerGroupHeartbeat", 0), 69: ("ConsumerGroupDescribe", 0), 71: ("GetTelemetrySubscriptions", 0),
    72: ("PushTelemetry", 0), 74: ("ListConfigResources", 0), 75: ("DescribeTopicPartitions", 0),
    76: ("ShareGroupHeartbeat", 0), 77: ("ShareGroupDescribe", 0), 78: ("ShareFetch", 0),
    79: ("ShareAcknowledge", 0),
}  # fmt: skip
ERROR_NAMES = {
    -1: "UNKNOWN_SERVER_ERROR", 1: "OFFSET_OUT_OF_RANGE", 2: "CORRUPT_MESSAGE",
    3: "UNKNOWN_TOPIC_OR_PARTITION",
    5: "LEADER_NOT_AVAILABLE", 6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 10: "MESSAGE_TOO_LARGE",
    16: "NOT_COORDINATOR", 19: "NOT_ENOUGH_REPLICAS", 29: "TOPIC_AUTHORIZATION_FAILED",
    35: "UNSUPPORTED_VERSION", 58: "SASL_AUTHENTICATION_FAILED", 87: "INVALID_RECORD",
}  # fmt: skip


def _kafka_length(data: bytes, pos: int) -> int | None:
    (size,) = struct.unpack_from(">i", data, pos)
    return size + 4 if 4 <= size <= MAX_FRAME else None  # a response may be just its correlation id


def flexible(api_key: int, api_version: int) -> bool:
    entry = API_KEYS.get(api_key)
    return entry is not None and api_version >= entry[1]


class _Short(Exception):
    """The captured bytes end before the field."""


class _Reader:
    """Kafka primitive types over a possibly truncated frame."""

    __slots__ = ("compact", "data", "pos")

    def __init__(self, data: bytes, pos: int, compact: bool = False) -> None:
        self.data = data
        self.pos = pos
        self.compact = compact

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise _Short
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uvarint(self) -> int:
        value = shift = 0
        while shift < 35:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise _Short

    def length(self) -> int:
        """Length of a string/bytes/array field; -1 for null."""
        return self.uvarint() - 1 if self.compact else self.int32()

    def string(self, compact: bool | None = None) -> str | None:
        size = self.uvarint() - 1 if (self.compact if compact is None else compact) else self.int16()
        return None if size < 0 else self.take(size).decode("utf-8", "replace")

    def skip_bytes(self) -> None:
        self.take(max(0, self.length()))

    def skip_tags(self) -> None:
        if self.compact:
            for _ in range(self.uvarint()):
                self.uvarint()
                self.take(self.uvarint())


@dataclasses.dataclass(slots=True)
class _Request:
    api_key: int
    api_version: int
    client_id: str | None
    topics: list[str]
    start_ns: int
    end_ns: int
    size: int


def detect(data: bytes, from_client: bool = True) -> bool:
    """A client's first bytes: a Kafka request header with a known api key and a sane client id."""
    if not from_client or len(data) < 14:
        return False
    size, api_key, api_version, correlation_id, client_len = struct.unpack_from(">ihhih", data)
    if not 10 <= size <= MAX_FRAME or api_key not in API_KEYS or not 0 <= api_version <= MAX_API_VERSION:
        return False
    if correlation_id < 0 or client_len < -1 or client_len > size - 10:
        return False
    client_id = data[14 : 14 + max(client_len, 0)]
    return client_id.isascii() and (not client_id or client_id.decode().isprintable())


class Parser(framing.FramedParser[_Request]):
    """Per-connection Kafka parser: bounded pending requests, never raises."""

    def __init__(self, settings: base.CaptureSettings | None = None, max_pending: int = MAX_PENDING) -> None:
        super().__init__(settings, max_pending, prefix=4, frame_length=_kafka_length)

    def _request(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        if len(head) < 14:
            return
        _, api_key, api_version, correlation_id = struct.unpack_from(">ihhi", head)
        reader = _Reader(head, 12)
        topics: list[str] = []
        client_id = None
        acks = -1
        try:
            client_id = reader.string(compact=False)  # request header v1/v2: never compact
            reader.compact = flexible(api_key, api_version)
            reader.skip_tags()
            if api_key == PRODUCE:
                acks = _produce_topics(reader, api_version, topics)
            elif api_key == FETCH:
                _fetch_topics(reader, api_version, topics)
        except _Short:
            pass  # a truncated frame still names the first topics
        request = _Request(api_key, api_version, client_id, topics, message.start_ns, message.end_ns, length)
        if acks == 0:
            records.append(self._record(request, message.end_ns, 0, None))  # acks=0: no response
        else:
            self._wait(correlation_id, request)

    def _response(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        # A client that reads the 4-byte size on its own first leaves only that in the capture.
        request = self._answered(struct.unpack_from(">i", head, 4)[0] if len(head) >= 8 else None)
        if request is None:
            return
        compact = flexible(request.api_key, request.api_version)
        reader = _Reader(head, 8, compact)
        error = 0
        try:
            if request.api_key != API_VERSIONS:  # ApiVersions responses always use header v0
                reader.skip_tags()
            error = _response_error(reader, request.api_key, request.api_version)
        except _Short:
            pass
        records.append(self._record(request, message.end_ns, length, error))

    def _unseen_response(self, request: _Request, message: base.Message) -> base.Record:
        return self._record(request, message.end_ns, 0, None)

    @staticmethod
    def _record(request: _Request, end_ns: int, response_size: int, error: int | None) -> base.Record:
        operation = API_KEYS.get(request.api_key, (str(request.api_key), 0))[0]
        attributes: dict[str, base.AttributeValue] = {
            "messaging.system": "kafka",
            "messaging.operation.name": operation,
        }
        if request.api_key in (PRODUCE, FETCH):
            attributes["messaging.operation.type"] = "send" if request.api_key == PRODUCE else "receive"
        name = operation
        unique = set(request.topics)
        if len(unique) == 1:
            # With several topics the request has no single destination, which semconv then omits.
            attributes["messaging.destination.name"] = request.topics[0]
            name = f"{operation} {request.topics[0]}"
        if request.client_id:
            attributes["messaging.client.id"] = request.client_id
        error_name = ERROR_NAMES.get(error, str(error)) if error else None
        if error_name is not None:
            attributes["error.type"] = error_name
        return base.Record(
            protocol="kafka",
            name=name,
            start_ns=request.start_ns,
            end_ns=max(end_ns, request.start_ns),
            attributes=attributes,
            error=error_name,
            request_size=request.size,
            response_size=response_size,
        )


def _produce_topics(reader: _Reader, version: int, topics: list[str]) -> int:
    """Read Produce topic names into `topics`; returns acks."""
    if version >= 3:
        reader.string()  # transactional id
    acks = reader.int16()
    reader.int32()  # timeout
    for _ in range(reader.length()):
        _topic(reader, version >= 13, topics)
        for _ in range(reader.length()):
            reader.int32()  # partition
            reader.skip_bytes()  # records
            reader.skip_tags()
        reader.skip_tags()
    return acks


def _fetch_topics(reader: _Reader, version: int, topics: list[str]) -> None:
    if version <= 14:
        reader.int32()  # replica id
    reader.take(8)  # max wait, min bytes
    reader.take((4 if version >= 3 else 0) + (1 if version >= 4 else 0) + (8 if version >= 7 else 0))
    # Per partition: id, [leader epoch v9+], fetch offset, [last fetched epoch v12+],
    # [log start offset v5+], partition max bytes.
    partition = (
        4 + (4 if version >= 9 else 0) + 8 + (4 if version >= 12 else 0) + (8 if version >= 5 else 0) + 4
    )
    for _ in range(reader.length()):
        _topic(reader, version >= 13, topics)
        for _ in range(reader.length()):
            reader.take(partition)
            reader.skip_tags()
        reader.skip_tags()


def _topic(reader: _Reader, by_id: bool, topics: list[str]) -> None:
    if by_id:
        reader.take(16)  # topic id: the name is not on the wire
        return
    name = reader.string()
    if name is not None and len(topics) < 16:
        topics.append(name)


def _response_error(reader: _Reader, api_key: int, version: int) -> int:
    """The first non-zero error code cheaply found in a response body, else 0."""
    if api_key == API_VERSIONS:
        return reader.int16()
    if api_key == FETCH:
        if version >= 1:
            reader.int32()  # throttle time
        if version >= 7:
            top = reader.int16()
            if top:
                return top
            reader.int32()  # session id
        for _ in range(reader.length()):
            _topic(reader, version >= 13, [])
            if reader.length() > 0:
                reader.int32()
                return reader.int16()  # first partition; records follow and may be huge
        return 0
    if api_key == PRODUCE:
        partition_tail = 8 + (8 if version >= 2 else 0) + (8 if version >= 5 else 0)
        for _ in range(reader.length()):
            _topic(reader, version >= 13, [])
            for _ in range(reader.length()):
                reader.int32()
                error = reader.int16()
                if error:
                    return error
                reader.take(partition_tail)
                if version >= 8:
                    for _ in range(reader.length()):
                        reader.int32()
                        reader.string()
                        reader.skip_tags()
                    reader.string()
                reader.skip_tags()
            reader.skip_tags()
    return 0
