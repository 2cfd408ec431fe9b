"""Connection tracking: turns ring-buffer events into messages for protocol parsers and
exchanges (parser records with a frozen snapshot of their connection) for the span layer.

Data moves forward only: the table never calls into the span layer; the tracer takes the exchanges
it produced (`take_exchanges`) after each batch of events and hands them on."""

from __future__ import annotations

import collections
import dataclasses
import logging
import zlib
from collections.abc import Callable

from podspan_agent import _ringbuf, bpf_events, sockaddr
from podspan_agent.protocols import base, registry

log = logging.getLogger(__name__)

# A connection whose first runs match no parser is dropped from the kernel table.
_DETECT_ATTEMPTS = 3
# Bytes of a request hashed to link a client span with the server span of the same request.
_FINGERPRINT_BYTES = 128
# Request fingerprints kept per connection while their exchange is open (pipelining depth).
_MAX_OPEN_REQUESTS = 64
# Cgroups whose closed connections' parser drops are kept apart; beyond, they are summed under cgroup 0.
_MAX_DROP_CGROUPS = 4096
# Plain ints on the per-event path: an IntFlag operation builds a new enum member each time.
_DATAGRAM = int(bpf_events.ConnFlag.DATAGRAM)
_TLS = int(bpf_events.ConnFlag.TLS)
# Processes remembered as having opened TLS connections (for the TLS library report), most recent kept.
_MAX_TLS_PROCESSES = 4096
_CLIENT, _SERVER = int(bpf_events.Role.CLIENT), int(bpf_events.Role.SERVER)
_INGRESS, _EGRESS = int(bpf_events.Direction.INGRESS), int(bpf_events.Direction.EGRESS)
# Protocols whose parsers keep no state from one exchange to the next: the kernel may skip whole exchanges of theirs.
_SAMPLED = {"http": bpf_events.SampleProtocol.HTTP1, "redis": bpf_events.SampleProtocol.REDIS}


@dataclasses.dataclass(slots=True)
class Run:
    """A run whose first bytes arrived but whose end is not yet known."""

    from_client: bool
    data: bytes
    start_ns: int
    tid: int
    delivered: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the span layer sees of a connection: what it was when it opened, never changed after."""

    conn_id: int
    tgid: int
    fd: int
    role: int  # bpf_events.Role
    cgroup_id: int
    peer: sockaddr.Endpoint | None
    local: sockaddr.Endpoint | None
    datagram: bool  # UDP: every message is one datagram
    tls: bool  # its bytes came decrypted from a TLS library's probes
    tls_version: str | None  # "1.3", when the kernel could read it after the handshake


@dataclasses.dataclass(slots=True)
class Connection:
    conn_id: int
    tgid: int
    fd: int
    role: bpf_events.Role
    cgroup_id: int
    peer: sockaddr.Endpoint | None = None
    local: sockaddr.Endpoint | None = None
    tid: int = 0
    protocol: str | None = None
    parser: base.Parser | None = None
    detect_attempts: int = 0
    pending: Run | None = None
    flags: int = 0  # bpf_events.ConnFlag bits: the kernel's capture mode
    decrypted: bool = False  # a TLS connection whose plaintext the TLS probes delivered
    tls_version: str | None = None
    tls_version_read: bool = False  # looked up once, before its first exchange
    # start_ns of a request run -> (fingerprint, tid): attached to its exchange's record
    requests: collections.OrderedDict[int, tuple[int, int]] = dataclasses.field(
        default_factory=collections.OrderedDict
    )
    _info: ConnectionInfo | None = None

    def info(self) -> ConnectionInfo:
        """The connection's frozen snapshot, made once and shared by all its exchanges."""
        if self._info is None:
            self._info = ConnectionInfo(self.conn_id, self.tgid, self.fd, self.role, self.cgroup_id, self.peer,
                                        self.local, self.datagram, bool(self.flags & _TLS), self.tls_version)
        return self._info

    @property
    def datagram(self) -> bool:
        """UDP: every message is one datagram."""
        return bool(self.flags & _DATAGRAM)

    def from_client(self, direction: int) -> bool:
        # A client connection sends requests; a server connection receives them.
        return direction == (_EGRESS if self.role == _CLIENT else _INGRESS)


@dataclasses.dataclass(slots=True)
class Exchange:
    """A parser record plus what only the connection knows."""

    record: base.Record
    connection: ConnectionInfo
    tid: int
    fingerprint: int


@dataclasses.dataclass(slots=True)
class TableStats:
    opened: int = 0
    closed: int = 0
    evicted: int = 0
    unknown_connections: int = 0
    undetected: int = 0
    records: int = 0
    parser_errors: int = 0
    continuations_dropped: int = 0
    ended_by_exit: int = 0  # connections their process left open when it exited or was killed
    replaced: int = 0  # connections still tracked when their fd was opened again (their close event was lost)
    tls_handshakes: int = 0  # connections the kernel saw start TLS (their ciphertext is not captured)
    tls_undecrypted: int = 0  # TLS connections that ended with no plaintext from a TLS library probe


class ConnectionTable:
    """All tracked connections of one agent, bounded; least recently used are evicted."""

    def __init__(
        self,
        detect: registry.Detector,
        forget: Callable[[int, int, int], None],
        max_connections: int = 65536,
        tls_version: Callable[[int], str | None] = lambda _conn_id: None,
    ) -> None:
        self._detect = detect
        self._tls_version = tls_version  # conn_id -> the TLS version the kernel recorded for it
        self._exchanges: list[Exchange] = []  # produced since the last take_exchanges()
        self._forget = forget  # (tgid, fd, conn_id): drop the kernel's entry if it still holds that connection
        self._max = max_connections
        self._conns: collections.OrderedDict[int, Connection] = collections.OrderedDict()
        self._by_process: dict[int, dict[int, int]] = {}  # tgid -> fd -> conn_id
        self._listen_cache: dict[tuple[int, int], sockaddr.Endpoint | None] = {}
        self._closed_drops: collections.Counter[int] = collections.Counter()  # cgroup id -> parser drops
        self.stats = TableStats()
        # (tgid, fd, conn_id, protocol): let the kernel skip exchanges of a connection just detected (overhead budget)
        self.sample: Callable[[int, int, int, bpf_events.SampleProtocol], None] | None = None
        # (cgroup id, tgid) -> TLS handshakes seen outside the probed OpenSSL calls: what the TLS library
        # report needs to name processes whose TLS stack is not probed.
        self.tls_processes: collections.OrderedDict[tuple[int, int], int] = collections.OrderedDict()

    def set_detector(self, detect: registry.Detector) -> None:
        """New connections are detected (and their parsers configured) by `detect`; existing ones keep
        their parser."""
        self._detect = detect

    def __len__(self) -> int:
        return len(self._conns)

    def connections(self) -> list[Connection]:
        return list(self._conns.values())

    def take_exchanges(self) -> list[Exchange]:
        """The exchanges the events so far completed, oldest first; each is returned once."""
        taken, self._exchanges = self._exchanges, []
        return taken

    # ---- events ----
    def on_open(self, event: _ringbuf.OpenEvent) -> None:
        conn = Connection(
            conn_id=event.conn_id,
            tgid=event.tgid,
            fd=event.fd,
            role=bpf_events.Role(event.role),
            cgroup_id=event.cgroup_id,
            tid=event.tid,
            peer=sockaddr.decode(event.peer),
            flags=event.flags,
        )
        if conn.role == bpf_events.Role.SERVER:
            # The listener lives in the accepting process: for a socket a forked child inherited, its parent.
            conn.local = self._listen_endpoint(event.listen_tgid, event.listen_fd)
        self._insert(conn)
        self.stats.opened += 1

    def on_data(self, hdr: _ringbuf.Event, data: bytes) -> None:
        conn = self._tracked(hdr)
        # The kernel switches capture mode when it sees the HTTP/2 preface; on a TLS connection only the
        # TLS probes' plaintext comes as data.
        conn.flags = hdr.flags
        if hdr.flags & _TLS:
            conn.decrypted = True
        self._finish_run(conn, hdr.prev)
        run = Run(conn.from_client(hdr.direction), data, hdr.ts_ns, hdr.tid)
        conn.pending = run
        conn.tid = hdr.tid
        if run.from_client:
            self._note_request(conn, run)

    def on_tls(self, hdr: _ringbuf.Event) -> None:
        """The connection started TLS (a handshake record): from here on only plaintext from the TLS
        library probes comes as data; the run in progress is unaffected."""
        conn = self._tracked(hdr)
        conn.flags = hdr.flags
        self.stats.tls_handshakes += 1
        key = (hdr.cgroup_id, hdr.tgid)
        self.tls_processes[key] = self.tls_processes.get(key, 0) + 1
        self.tls_processes.move_to_end(key)
        while len(self.tls_processes) > _MAX_TLS_PROCESSES:
            self.tls_processes.popitem(last=False)

    def on_continuation(self, hdr: _ringbuf.Event, data: bytes) -> None:
        """More bytes of the pending run: a later chunk the kernel copied because the run's first
        chunks were short (a length header read on its own, a second message in a second write)."""
        conn = self._conns.get(hdr.conn_id)
        # No run to extend: its DATA event was lost, or the run went out already as idle.
        if conn is None or conn.pending is None or conn.pending.delivered:
            self.stats.continuations_dropped += 1
            return
        run = conn.pending
        had = len(run.data)
        run.data += data
        if run.from_client and had < _FINGERPRINT_BYTES:
            self._note_request(conn, run)  # the fingerprint covers the request's first bytes, wherever they came from

    def on_close(self, hdr: _ringbuf.Event) -> None:
        conn = self._conns.get(hdr.conn_id)
        if conn is not None:
            self.finish(conn, hdr.prev)

    def on_exit(self, tgid: int, kernel_run: Callable[[Connection], _ringbuf.Run | None]) -> None:
        """Process `tgid` is gone (exit, kill) with connections it never closed: each ends where the
        kernel last saw its run, and its kernel entry goes."""
        for conn_id in list(self._by_process.get(tgid, {}).values()):
            conn = self._conns[conn_id]
            self.finish(conn, kernel_run(conn))
            self._forget(conn.tgid, conn.fd, conn.conn_id)
            self.stats.ended_by_exit += 1

    def finish(self, conn: Connection, last: _ringbuf.Run | None) -> None:
        """End a connection: its pending run ends as `last` says (undelivered if unknown), and its
        parser gives up what it still holds."""
        if conn.flags & _TLS and not conn.decrypted:
            self.stats.tls_undecrypted += 1
        self._remove(conn)
        self._finish_run(conn, last)
        self._flush_parser(conn)
        self.stats.closed += 1

    def flush_idle(
        self, idle_before_ns: int, kernel_run: Callable[[Connection], _ringbuf.Run | None]
    ) -> None:
        """Deliver server-side runs that went quiet (the last response on a keep-alive
        connection has no following event to end it)."""
        for conn in list(self._conns.values()):
            run = conn.pending
            if run is None or run.from_client or run.delivered or conn.parser is None:
                continue
            if run.start_ns > idle_before_ns:
                continue
            live = kernel_run(conn)
            # A kernel run that started later is a chunk whose event is still in the ring buffer.
            if live is None or live.start_ns != run.start_ns or live.end_ns > idle_before_ns:
                continue
            self._deliver(conn, run, live.bytes, live.end_ns)
            run.delivered = True

    def parser_drops_by_cgroup(self) -> dict[int, int]:
        """Per cgroup id, the exchanges its connections' parsers could not report since the table started
        (open connections included; cumulative, like the kernel's counters)."""
        drops = collections.Counter(self._closed_drops)
        for conn in self._conns.values():
            if conn.parser is not None:
                drops[conn.cgroup_id] += conn.parser.dropped
        return {cgroup_id: count for cgroup_id, count in drops.items() if count}

    def busy_threads(self) -> set[tuple[int, int]]:
        """(tgid, tid) of every thread that has received a request it has not yet answered."""
        return {
            (conn.tgid, conn.tid)
            for conn in self._conns.values()
            if conn.role == _SERVER and conn.pending is not None and conn.pending.from_client
        }

    # ---- internals ----
    def _tracked(self, hdr: _ringbuf.Event) -> Connection:
        """The event's connection, made from its header if its open event was lost or it was evicted."""
        conn = self._conns.get(hdr.conn_id)
        if conn is None:
            conn = Connection(hdr.conn_id, hdr.tgid, hdr.fd, bpf_events.Role(hdr.role), hdr.cgroup_id,
                              flags=hdr.flags)
            self._insert(conn)
            self.stats.unknown_connections += 1
        else:
            self._conns.move_to_end(hdr.conn_id)
        return conn

    def _insert(self, conn: Connection) -> None:
        stale = self._by_process.get(conn.tgid, {}).get(conn.fd)
        if stale is not None:
            # The kernel sends a CLOSE before reusing a slot (a second connect() on one fd, as hiredis
            # does, or an fd reused): one still here means that event was lost.
            self.finish(self._conns[stale], None)
            self.stats.replaced += 1
        self._conns[conn.conn_id] = conn
        self._by_process.setdefault(conn.tgid, {})[conn.fd] = conn.conn_id
        while len(self._conns) > self._max:
            old = next(iter(self._conns.values()))
            self._remove(old)
            self._flush_parser(old)
            self._forget(old.tgid, old.fd, old.conn_id)
            self.stats.evicted += 1

    def _remove(self, conn: Connection) -> None:
        # Twice for one connection when finishing it delivers a run that fails detection for good.
        if self._conns.pop(conn.conn_id, None) is None:
            return
        fds = self._by_process[conn.tgid]
        del fds[conn.fd]
        if not fds:
            del self._by_process[conn.tgid]

    def _listen_endpoint(self, tgid: int, listen_fd: int) -> sockaddr.Endpoint | None:
        key = (tgid, listen_fd)
        if key not in self._listen_cache:
            if len(self._listen_cache) > 4096:
                self._listen_cache.clear()
            self._listen_cache[key] = sockaddr.local_endpoint(tgid, listen_fd)
        return self._listen_cache[key]

    def _note_request(self, conn: Connection, run: Run) -> None:
        conn.requests[run.start_ns] = (zlib.crc32(run.data[:_FINGERPRINT_BYTES]), run.tid)
        while len(conn.requests) > _MAX_OPEN_REQUESTS:
            conn.requests.popitem(last=False)

    def _finish_run(self, conn: Connection, prev: _ringbuf.Run | None) -> None:
        run = conn.pending
        conn.pending = None
        if run is None or run.delivered or prev is None or prev.direction == bpf_events.Direction.NONE:
            return
        self._deliver(conn, run, prev.bytes, prev.end_ns)

    def _deliver(self, conn: Connection, run: Run, size: int, end_ns: int) -> None:
        # Detection looks at either direction: some servers speak first (MySQL's greeting).
        if conn.parser is None and not self._detect_protocol(conn, run.data):
            return
        assert conn.parser is not None
        message = base.Message(run.from_client, run.data, max(size, len(run.data)), run.start_ns, end_ns)
        try:
            records = conn.parser.feed(message)
        except Exception:  # a parser bug must cost one message, never the agent
            self.stats.parser_errors += 1
            log.exception("%s parser failed on connection %d", conn.protocol, conn.conn_id)
            return
        self._emit(conn, records)

    def _detect_protocol(self, conn: Connection, data: bytes) -> bool:
        found = self._detect(data, conn.datagram)
        if found is not None:
            conn.protocol, conn.parser = found
            sampled = _SAMPLED.get(conn.protocol)
            if sampled is not None and self.sample is not None and not conn.datagram:
                self.sample(conn.tgid, conn.fd, conn.conn_id, sampled)
            return True
        conn.detect_attempts += 1
        if conn.detect_attempts >= _DETECT_ATTEMPTS:
            # Nothing we parse: stop the kernel from capturing it at all.
            self._forget(conn.tgid, conn.fd, conn.conn_id)
            self._remove(conn)
            self.stats.undetected += 1
        return False

    def _flush_parser(self, conn: Connection) -> None:
        if conn.parser is None:
            return
        try:
            records = conn.parser.flush()
        except Exception:
            self.stats.parser_errors += 1
            log.exception("%s parser failed to flush connection %d", conn.protocol, conn.conn_id)
            return
        self._emit(conn, records)
        dropped = conn.parser.dropped
        if dropped:
            key = conn.cgroup_id if (conn.cgroup_id in self._closed_drops
                                     or len(self._closed_drops) < _MAX_DROP_CGROUPS) else 0
            self._closed_drops[key] += dropped
        conn.parser = None  # its drops now live in _closed_drops

    def _emit(self, conn: Connection, records: list[base.Record]) -> None:
        if conn.decrypted and not conn.tls_version_read:  # before its snapshot is made
            conn.tls_version, conn.tls_version_read = self._tls_version(conn.conn_id), True
        for record in records:
            fingerprint, tid = conn.requests.get(record.start_ns, (0, conn.tid))
            self.stats.records += 1
            self._exchanges.append(Exchange(record, conn.info(), tid, fingerprint))
