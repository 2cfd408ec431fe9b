"""The connection table (C extension, agent/podspan_agent/_conntable.c): batches of ring-buffer records into
exchanges for the span layer; connections.py names its types."""

import collections
from collections.abc import Callable
from typing import Final, final

from _typeshed import structseq

from podspan_agent import _ringbuf, connections
from podspan_agent.protocols import base, registry

MAX_OPEN_REQUESTS: Final[int]
FINGERPRINT_BYTES: Final[int]
DETECT_ATTEMPTS: Final[int]

@final
class Exchange(structseq[object], tuple[base.Record, connections.ConnectionInfo, int, int]):
    """A parser record plus what only the connection knows."""

    @property
    def record(self) -> base.Record: ...
    @property
    def connection(self) -> connections.ConnectionInfo: ...
    @property
    def tid(self) -> int:
        """The thread that sent (client) or received (server) the request."""

    @property
    def fingerprint(self) -> int:
        """CRC-32 of the request's first FINGERPRINT_BYTES bytes; 0 if unknown."""

@final
class TableStats(structseq[int], tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int, int]):
    """The table's counters, cumulative."""

    __match_args__: Final = (
        "opened", "closed", "evicted", "unknown_connections", "undetected", "records", "parser_errors",
        "continuations_dropped", "ended_by_exit", "replaced", "tls_handshakes", "tls_undecrypted", "events",
        "malformed_events", "event_errors",
    )
    @property
    def opened(self) -> int: ...
    @property
    def closed(self) -> int: ...
    @property
    def evicted(self) -> int: ...
    @property
    def unknown_connections(self) -> int: ...
    @property
    def undetected(self) -> int: ...
    @property
    def records(self) -> int: ...
    @property
    def parser_errors(self) -> int: ...
    @property
    def continuations_dropped(self) -> int: ...
    @property
    def ended_by_exit(self) -> int: ...
    @property
    def replaced(self) -> int: ...
    @property
    def tls_handshakes(self) -> int: ...
    @property
    def tls_undecrypted(self) -> int: ...
    @property
    def events(self) -> int: ...
    @property
    def malformed_events(self) -> int: ...
    @property
    def event_errors(self) -> int: ...

@final
class Table:
    """All tracked connections of one agent, bounded; least recently used are evicted."""

    def __init__(
        self,
        detect: registry.Detector,
        forget: Callable[[int, int, int], object],
        kernel_run: Callable[[int, int, int], _ringbuf.Run | None],
        tls_version: Callable[[int], str | None],
        max_connections: int = 65536,
        *,
        tls_failure: Callable[[int], list[base.Record]] | None = None,
    ) -> None: ...
    on_detected: Callable[[int, int, int, str], object] | None
    """Called as on_detected(tgid, fd, conn_id, protocol) once a stream connection's protocol is found."""
    def feed(self, records: list[_ringbuf.Event | _ringbuf.OpenEvent | _ringbuf.Malformed], /) -> None:
        """One batch of ring-buffer records, oldest first."""

    def flush_idle(self, before_ns: int, /) -> None:
        """Deliver server runs quiet since before_ns that the kernel says are complete."""

    def finish_all(self) -> None:
        """End every connection where the kernel last saw its run."""

    def take_exchanges(self) -> list[Exchange]:
        """The exchanges completed so far, oldest first; each is returned once."""

    def set_detector(self, detect: registry.Detector, /) -> None: ...
    def connections(self) -> list[connections.ConnectionInfo]:
        """Snapshots of the tracked connections, least recently used first."""

    def busy_threads(self) -> set[tuple[int, int]]:
        """(tgid, tid) of every thread that has received a request it has not yet answered."""

    def parser_drops_by_cgroup(self) -> dict[int, int]: ...
    @property
    def stats(self) -> TableStats: ...
    @property
    def tls_processes(self) -> collections.OrderedDict[tuple[int, int], int]: ...
    def __len__(self) -> int: ...
