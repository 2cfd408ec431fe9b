"""Python mirror of bpf/include/podspan_events.h (ctypes), checked against the C header by a test.

The agent reads map values with it (`ConnKey`, `Conn`, `Run`: loader.Probes.connection). Events are
decoded by the C extension `_ringbuf`, compiled against the header itself; the event structs here
serve the tests, which build kernel-layout records with them."""

from __future__ import annotations

import ctypes
import enum


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


class ConnFlag(enum.IntFlag):
    DATAGRAM = 1
    UNCONNECTED = 2
    HTTP2 = 4
    TLS = 8


STAT_COUNT = len(Stat)
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
    )
