"""Python mirror of bpf/include/podspan_events.h (ctypes), checked against the C header by a test.

The agent reads map values with it (`ConnKey`, `Conn`, `Run`: loader.Probes.connection). Events are
decoded by the C extension `_ringbuf`, compiled against the header itself; the event structs here
serve the tests, which build kernel-layout records with them."""

from __future__ import annotations

import ctypes
import enum
from typing import NamedTuple


class EventKind(enum.IntEnum):
    OPEN = 1
    DATA = 2
    CLOSE = 3
    CONTINUATION = 4
    EXIT = 5
    TLS = 6


class Direction(enum.IntEnum):
    NONE = 0
    INGRESS = 1
    EGRESS = 2


class Role(enum.IntEnum):
    UNKNOWN = 0
    SERVER = 1
    CLIENT = 2


class Stat(enum.IntEnum):
    EVENTS = 0
    EVENTS_LOST = 1
    CHUNKS = 2
    CONN_FULL = 3
    SENDFILE = 4
    MMSG_SKIPPED = 5
    CONTINUATIONS = 6
    TLS_CIPHERTEXT = 7
    TLS_UNMAPPED = 8
    SKIPPED = 9
    SKIPPED_UNCOUNTED = 10


class ConnFlag(enum.IntFlag):
    DATAGRAM = 1
    UNCONNECTED = 2
    HTTP2 = 4
    TLS = 8


class SampleProtocol(enum.IntEnum):
    NONE = 0
    HTTP1 = 1
    REDIS = 2


class Method(enum.IntEnum):
    OTHER = 0
    GET = 1
    HEAD = 2
    POST = 3
    PUT = 4
    DELETE = 5
    CONNECT = 6
    OPTIONS = 7
    TRACE = 8
    PATCH = 9


class Version(enum.IntEnum):
    UNKNOWN = 0
    V10 = 1
    V11 = 2


STAT_COUNT = len(Stat)
SKIP_BUCKETS = 15
# Bucket bounds of skipped exchanges' durations in the kernel (ns), per protocol.
HTTP_BOUNDS_NS = (5_000_000, 10_000_000, 25_000_000, 50_000_000, 75_000_000, 100_000_000, 250_000_000, 500_000_000,
                  750_000_000, 1_000_000_000, 2_500_000_000, 5_000_000_000, 7_500_000_000, 10_000_000_000)
DB_BOUNDS_NS = (1_000_000, 5_000_000, 10_000_000, 50_000_000, 100_000_000, 500_000_000, 1_000_000_000,
                5_000_000_000, 10_000_000_000)
SOCKADDR_SIZE = 28
DEFAULT_CAPTURE_SIZE = 512
DEFAULT_CHUNK_CAPTURE_SIZE = 8192
MAX_CHUNK_CAPTURE_SIZE = 8192


class Run(ctypes.Structure):
    _fields_ = (
        ("start_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("chunks", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
    )


class Skip(ctypes.Structure):
    _fields_ = (
        ("start_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("status", ctypes.c_uint16),
        ("direction", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("method", ctypes.c_uint8),
        ("version", ctypes.c_uint8),
        ("error", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
    )


class EventHeader(ctypes.Structure):
    _fields_ = (
        ("kind", ctypes.c_uint8),
        ("role", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("conn_id", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("ts_ns", ctypes.c_uint64),
        ("prev", Run),
    )


class OpenEvent(ctypes.Structure):
    _fields_ = (
        ("hdr", EventHeader),
        ("listen_fd", ctypes.c_int32),
        ("addr_len", ctypes.c_uint32),
        ("peer", ctypes.c_uint8 * SOCKADDR_SIZE),
        ("listen_tgid", ctypes.c_uint32),
    )


class DataEventFixed(ctypes.Structure):
    """The fixed part of `struct podspan_data_event`; `data` follows at DATA_OFFSET."""

    _fields_ = (
        ("hdr", EventHeader),
        ("chunk_bytes", ctypes.c_uint32),
        ("captured", ctypes.c_uint32),
    )


DATA_OFFSET = ctypes.sizeof(DataEventFixed)


class ConnKey(ctypes.Structure):
    _fields_ = (("tgid", ctypes.c_uint32), ("fd", ctypes.c_int32))


class Conn(ctypes.Structure):
    _fields_ = (
        ("conn_id", ctypes.c_uint64),
        ("run", Run),
        ("role", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("captured", ctypes.c_uint16),
        ("continuations", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("skip", Skip),
    )


class SampledConn(ctypes.Structure):
    _fields_ = (("conn_id", ctypes.c_uint64), ("protocol", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 7))


class SkipKey(ctypes.Structure):
    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("status", ctypes.c_uint16),
        ("role", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("method", ctypes.c_uint8),
        ("version", ctypes.c_uint8),
        ("error", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 5),
    )


class SkipCounts(ctypes.Structure):
    _fields_ = (
        ("count", ctypes.c_uint64),
        ("sum_ns", ctypes.c_uint64),
        ("buckets", ctypes.c_uint64 * SKIP_BUCKETS),
    )


class SkipSeries(NamedTuple):
    """A `SkipKey` as a value (ctypes structures hash by identity)."""

    cgroup_id: int
    tgid: int
    status: int
    role: int
    protocol: int
    method: int
    version: int
    error: int

    @classmethod
    def of(cls, key: SkipKey) -> SkipSeries:
        return cls(key.cgroup_id, key.tgid, key.status, key.role, key.protocol, key.method, key.version, key.error)


class SkipTotals(NamedTuple):
    """`SkipCounts` as a value."""

    exchanges: int
    sum_ns: int
    buckets: tuple[int, ...]
