"""Compile, load and attach the BPF capture program with bcc; the only module that imports bcc.

Owns the kernel objects: the cgroup/pid allow maps, the connection table, the sampling maps, the
ring buffer (consumed by the native `_ringbuf.RingBuffer`, not bcc's callback per
record) and the per-CPU stats. Everything else talks to the kernel through `Probes`.
"""

from __future__ import annotations

import collections.abc
import contextlib
import ctypes
import dataclasses
import logging
import os
import pathlib
import platform
import re
import select
import subprocess
import time
from collections.abc import Callable
from typing import Any

from podspan_agent import _ringbuf, bpf_events, gobinary, kernel_headers

log = logging.getLogger(__name__)

BPF_DIR_ENV = "PODSPAN_BPF_DIR"
_TRACEFS_MOUNTS = (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug"))


class ProbeError(RuntimeError):
    """The capture program could not be compiled, loaded or attached."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeOptions:
    capture_size: int = bpf_events.DEFAULT_CAPTURE_SIZE
    chunk_capture_size: int = bpf_events.DEFAULT_CHUNK_CAPTURE_SIZE  # every chunk of an HTTP/2 connection
    max_connections: int = 65536
    ringbuf_pages: int = 2048
    wakeup_every: int = 1024  # a forced wake-up costs 13-16 µs here; the consumer also polls every 50 ms

    def cflags(self) -> list[str]:
        top = bpf_events.MAX_CHUNK_CAPTURE_SIZE
        if not 16 <= self.capture_size <= top or self.capture_size & (self.capture_size - 1):
            raise ValueError(f"capture size must be a power of two from 16 to {top}, got {self.capture_size}")
        chunk = self.chunk_capture_size
        if chunk & (chunk - 1) or not self.capture_size <= chunk <= top:
            raise ValueError(
                f"chunk capture size must be a power of two from the capture size ({self.capture_size}) to {top}, "
                f"got {chunk}"
            )
        return [
            f"-DPODSPAN_CAPTURE_SIZE={self.capture_size}",
            f"-DPODSPAN_CHUNK_CAPTURE_SIZE={chunk}",
            f"-DPODSPAN_MAX_CONNS={self.max_connections}",
            f"-DPODSPAN_RINGBUF_PAGES={self.ringbuf_pages}",
            f"-DPODSPAN_WAKEUP_EVERY={self.wakeup_every}",
            f"-DPODSPAN_SELF_TGID={os.getpid()}",
        ]


def bpf_dir() -> pathlib.Path:
    """Where the BPF sources are: $PODSPAN_BPF_DIR (images) or the source checkout."""
    configured = os.environ.get(BPF_DIR_ENV)
    if configured:
        return pathlib.Path(configured)
    return pathlib.Path(__file__).resolve().parents[2] / "bpf"


# What the program uses when the kernel has it: -D flag -> the tracepoints it needs, each with the
# fields it reads that older kernels lack.
_OPTIONAL_TRACEPOINTS: dict[str, dict[str, tuple[str, ...]]] = {
    "PODSPAN_HAVE_MMSG": {f"syscalls/sys_{side}_{name}": () for side in ("enter", "exit")
                          for name in ("sendmmsg", "recvmmsg")},
    "PODSPAN_HAVE_EXIT": {"sched/sched_process_exit": ()},
    "PODSPAN_HAVE_EXIT_GROUP_DEAD": {"sched/sched_process_exit": ("group_dead",)},
    "PODSPAN_HAVE_FORK": {"sched/sched_process_fork": ("child_pid",), "sched/sched_process_exec": (),
                          "syscalls/sys_exit_clone": ()},
    "PODSPAN_HAVE_CLONE3": {"syscalls/sys_exit_clone3": ()},
    "PODSPAN_HAVE_SYS_FORK": {"syscalls/sys_exit_fork": (), "syscalls/sys_exit_vfork": ()},
}


def _has_tracepoint(events: pathlib.Path, name: str, fields: tuple[str, ...]) -> bool:
    try:
        text = (events / name / "format").read_text()
    except OSError:
        return False
    return all(re.search(rf"field:[^;]*\b{field};", text) for field in fields)


def _has_task_pt_regs() -> bool:
    """Kernel BTF and the bpf_task_pt_regs helper (5.15): the exit programs can read a syscall's
    arguments from the registers it was entered with, so no enter program is needed."""
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return False
    try:
        with open("/proc/kallsyms", "rb") as symbols:
            return any(line.endswith(b" bpf_task_pt_regs\n") for line in symbols)
    except OSError:
        return False


def kernel_features() -> frozenset[str]:
    """The optional flags this kernel supports (its tracepoints and their fields, read from tracefs;
    PODSPAN_HAVE_TASK_PT_REGS from BTF and kallsyms)."""
    roots = [pathlib.Path(mountpoint) / "events" for _, mountpoint in _TRACEFS_MOUNTS]
    events = next((root for root in roots if (root / "syscalls").is_dir()), None)
    if events is None:
        return frozenset()
    flags = {
        flag
        for flag, tracepoints in _OPTIONAL_TRACEPOINTS.items()
        if all(_has_tracepoint(events, name, fields) for name, fields in tracepoints.items())
    }
    if _has_task_pt_regs():
        flags.add("PODSPAN_HAVE_TASK_PT_REGS")
    return frozenset(flags)


def ensure_tracefs() -> None:
    """bcc reads tracepoint formats from tracefs; mount it if the host has not."""
    for fstype, mountpoint in _TRACEFS_MOUNTS:
        if not os.path.isdir(mountpoint) or os.path.exists(os.path.join(mountpoint, "events")):
            continue
        if os.path.ismount(mountpoint):
            continue
        mounted = subprocess.run(["mount", "-t", fstype, fstype, mountpoint], capture_output=True)
        if mounted.returncode != 0:
            log.warning("could not mount %s at %s", fstype, mountpoint)


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[^\n]*$', re.M)


def program_text(source: pathlib.Path, include_dir: pathlib.Path) -> str:
    """The capture program as one text: bcc rewrites map calls (`conns.lookup(...)`) and tracepoint
    `args` only in the file it compiles, not in included files, so the program's own headers (found next
    to the including file or in `include_dir`) are inlined, each once, with #line markers so compiler
    messages name the real file and line. System headers (<...>) are left to the compiler."""
    done: set[pathlib.Path] = set()

    def expand(path: pathlib.Path) -> str:
        def include(match: re.Match[str]) -> str:
            found = next((c for c in (path.parent / match[1], include_dir / match[1]) if c.is_file()), None)
            if found is None:
                return match[0]
            found = found.resolve()
            if found in done:
                return ""
            done.add(found)
            line = text.count("\n", 0, match.end()) + 2  # of the line after the #include
            return f'#line 1 "{found}"\n{expand(found)}\n#line {line} "{path}"'

        text = path.read_text()
        return _LOCAL_INCLUDE.sub(include, text)

    return expand(source.resolve())


# madvise(2): reclaim these pages now (Linux 5.4+; older kernels answer EINVAL, and nothing changes).
_MADV_PAGEOUT = 21
_COMPILER_LIBRARY = re.compile(r"/lib(?:LLVM|clang)[^/]*\.so[^/]*$")


def _release_compiler_memory() -> None:
    """Hand what clang/LLVM used for compiling back to the OS: the heap (glibc keeps freed memory otherwise:
    ~30 MB of the agent's resident size) and the libraries' code and read-only data (~85 MB resident after a
    compile, unused until the next one, which reads them in again)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for start, end in _compiler_mappings():
            libc.madvise(start, end - start, _MADV_PAGEOUT)


def _compiler_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's read-only mappings of the LLVM and clang libraries (their writable
    data is private to the process and stays)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "w" not in fields[1] and _COMPILER_LIBRARY.search(fields[5].rstrip("\n")):
                start, end = fields[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


EventRecord = _ringbuf.Event | _ringbuf.OpenEvent | _ringbuf.Malformed
EventCallback = Callable[[list[EventRecord]], None]  # a batch of decoded ring-buffer records, oldest first
# Records per drain() call, and drain() calls per poll(): under saturation a poll returns after this many
# records, so the tracer's housekeeping still runs; the rest wait in the ring (epoll says so at once).
_DRAIN_BATCH = 256
_MAX_BATCHES_PER_POLL = 64

# Per-thread syscall state stashed on enter for the exit handler, and what a fork hands to its child
# when the child first runs: stale after a detach.
_INFLIGHT_MAPS = (b"io_inflight", b"accept_inflight", b"connect_inflight", b"socket_inflight", b"forks_inflight",
                  b"tls_calls", b"go_tls_calls")
# Of those, the ones compiled in only with some flags: io_inflight without PODSPAN_ARGS_AT_EXIT,
# go_tls_calls with PODSPAN_GO_TLS.
_OPTIONAL_MAPS = (b"io_inflight", b"go_tls_calls")

# OpenSSL functions the TLS probes attach to: symbol -> entry program. Each also gets the return probe,
# except SSL_free, which only forgets its SSL object. SSL_read_ex/SSL_write_ex are new in 1.1.1;
# SSL_connect and SSL_accept run SSL_do_handshake. Only SSL_read and SSL_write are required: without the
# handshake probe, a first request a server read ahead with the handshake is missed.
TLS_CALL_PROBES = {b"SSL_read": b"tls_read_enter", b"SSL_read_ex": b"tls_read_ex_enter",
                   b"SSL_write": b"tls_write_enter", b"SSL_write_ex": b"tls_write_ex_enter",
                   b"SSL_do_handshake": b"tls_handshake_enter"}
_TLS_REQUIRED = (b"SSL_read", b"SSL_write")
_TLS_FREE = (b"SSL_free", b"tls_free_enter")
_TLS_RETURN = b"tls_return"
# Go crypto/tls functions: symbol -> (entry program, the program at each of its RET instructions).
GO_TLS_PROBES = {gobinary.READ: (b"go_tls_read_enter", b"go_tls_read_return"),
                 gobinary.WRITE: (b"go_tls_write_enter", b"go_tls_write_return"),
                 gobinary.SERVER_HANDSHAKE: (b"go_tls_handshake_enter", b"go_tls_handshake_return"),
                 gobinary.CLIENT_HANDSHAKE: (b"go_tls_handshake_enter", b"go_tls_handshake_return")}
_RUN_TIME = re.compile(rb"^run_time_ns:\s*(\d+)", re.M)  # in a program fd's fdinfo
_TLS_VERSIONS = {0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}  # SSL's `version` -> semconv


@dataclasses.dataclass(frozen=True, slots=True)
class TlsHandshake:
    """A connection's TLS handshake: from the first handshake call's entry to the last one's return (kernel
    monotonic ns), whether one succeeded, and the version negotiated when known."""

    start_ns: int
    end_ns: int
    established: bool
    version: str | None


class Probes:
    """The loaded capture program. Construct once; `close()` detaches everything."""

    def __init__(self, options: ProbeOptions, header_source: kernel_headers.HeaderSource) -> None:
        import bcc  # deferred: import costs ~80 MB and needs root-only files

        self.options = options
        self.header_source = header_source
        ensure_tracefs()
        source = bpf_dir() / "podspan.bpf.c"
        if not source.exists():
            raise ProbeError(f"BPF source not found at {source} (set {BPF_DIR_ENV})")
        self.features = kernel_features()
        started = time.monotonic()
        try:
            self._bpf: Any = bcc.BPF(
                text=program_text(source, bpf_dir() / "include").encode(),
                cflags=[f"-I{bpf_dir() / 'include'}", *options.cflags(), *(f"-D{f}=1" for f in sorted(self.features))],
            )
        except Exception as exc:  # bcc raises bare Exception on compile/attach failures
            raise ProbeError(f"loading {source.name} failed: {exc}") from exc
        try:  # the exit programs tail-call the capture program through this array
            self._load_capture(b"capture_chunk", bcc.BPF.TRACEPOINT, b"chunk_progs")
        except Exception as exc:
            self._bpf.cleanup()
            raise ProbeError(f"loading capture_chunk failed: {exc}") from exc
        self.load_seconds = time.monotonic() - started
        _release_compiler_memory()
        self._cgroups = self._bpf[b"traced_cgroups"]
        self._pids = self._bpf[b"traced_pids"]
        self._conns = self._bpf[b"conns"]
        self._dgram_socks = self._bpf[b"dgram_socks"]
        self._stats = self._bpf[b"stats"]
        self._lost_by_cgroup = self._bpf[b"lost_by_cgroup"]
        self._tls_handshakes = self._bpf[b"tls_handshakes"]
        self._skip_thresholds = self._bpf[b"skip_thresholds"]
        self._sampled_conns = self._bpf[b"sampled_conns"]
        self._skipped = self._bpf[b"skipped_exchanges"]
        self.skips_forgotten = 0  # skipped exchanges in progress on connections userspace removed: not counted
        # bcc attached every TRACEPOINT_PROBE while loading; remember them to re-attach after detach().
        self._tracepoints = tuple(self._bpf.tracepoint_fds)
        # attached TLS file -> (the functions probed, bcc's names of its uprobe events)
        self._tls: dict[str, tuple[list[str], set[bytes]]] = {}
        self._tls_capture_loaded = False
        self._kprobe_type: int = bcc.BPF.KPROBE
        self._events: _ringbuf.RingBuffer | None = None
        self._epoll: select.epoll | None = None
        self._on_events: EventCallback = lambda _records: None
        self._closed = False
        log.info("capture program loaded and attached in %.2fs using %s", self.load_seconds,
                 header_source.describe())

    # ---- attachment ----
    @property
    def attached(self) -> bool:
        return bool(self._bpf.tracepoint_fds)

    @property
    def tracepoints_attached(self) -> int:
        return len(self._bpf.tracepoint_fds)

    def detach(self) -> None:
        """Stop running the programs (nothing to trace): syscalls pay nothing while detached.
        The programs and maps stay loaded, so attach() is cheap."""
        for tracepoint in list(self._bpf.tracepoint_fds):
            self._bpf.detach_tracepoint(tp=tracepoint)
        log.info("capture programs detached (no targets)")

    def attach(self) -> None:
        """Run the programs again. Connections and half-done syscalls from before are forgotten:
        their close() or syscall exit may have been missed while detached."""
        if self.attached:
            return
        # dgram_socks too: a socket() missed while detached may have reused a UDP socket's fd.
        for name in (b"conns", b"dgram_socks", b"sampled_conns", *_INFLIGHT_MAPS):
            try:
                self._bpf[name].clear()
            except KeyError:
                if name not in _OPTIONAL_MAPS:
                    raise
        for tracepoint in self._tracepoints:
            self._bpf.attach_tracepoint(tp=tracepoint, fn_name=b"tracepoint__" + tracepoint.replace(b":", b"__"))
        log.info("capture programs attached to %d tracepoints", len(self._tracepoints))

    def _load_capture(self, name: bytes, prog_type: int, array: bytes) -> None:
        capture = self._bpf.load_func(name, prog_type)
        self._bpf[array][ctypes.c_int(0)] = ctypes.c_int(capture.fd)

    # ---- TLS libraries ----
    def attach_tls(self, path: str) -> list[str]:
        """Attach the OpenSSL probes to the library or executable at `path` (an absolute path the agent can
        open, e.g. through /proc/<pid>/root). A uprobe lives on the file, so it fires in every process that
        maps it, now or later; the programs return at once for processes not selected. Returns the symbols
        attached; raises ProbeError (nothing left attached) when SSL_read or SSL_write is missing or the
        kernel refuses."""
        def attach() -> list[str]:
            attached: list[str] = []
            for symbol, entry in TLS_CALL_PROBES.items():
                try:
                    self._bpf.attach_uprobe(name=path.encode(), sym=symbol, fn_name=entry)
                except Exception as exc:  # bcc: bare Exception, e.g. "could not determine address of symbol"
                    if symbol in _TLS_REQUIRED:
                        raise ProbeError(f"attaching to {symbol.decode()} in {path} failed: {exc}") from exc
                    continue  # OpenSSL 1.1.0 has no _ex variants; a static copy may not export every one
                self._bpf.attach_uretprobe(name=path.encode(), sym=symbol, fn_name=_TLS_RETURN)
                attached.append(symbol.decode())
            self._bpf.attach_uprobe(name=path.encode(), sym=_TLS_FREE[0], fn_name=_TLS_FREE[1])
            return attached

        return self._attach_tls_file(path, attach)

    def attach_go_tls(self, path: str, functions: collections.abc.Iterable[gobinary.Function]) -> list[str]:
        """Attach the Go crypto/tls probes to the executable at `path` (as attach_tls): one at each
        function's entry and one at each of its RET instructions. Returns the functions attached; raises
        ProbeError (nothing left attached) when the kernel refuses or lacks what the probes need."""
        if "PODSPAN_HAVE_TASK_PT_REGS" not in self.features or platform.machine() != "x86_64":
            raise ProbeError("Go crypto/tls probes need x86-64 and bpf_task_pt_regs (Linux 5.15+ with BTF)")

        def attach() -> list[str]:
            for function in functions:
                entry, ret = GO_TLS_PROBES[function.symbol]
                self._bpf.attach_uprobe(name=path.encode(), sym=function.symbol, fn_name=entry)
                for offset in function.returns:
                    self._bpf.attach_uprobe(name=path.encode(), sym=function.symbol, sym_off=offset, fn_name=ret)
            return [function.symbol.decode() for function in functions]

        return self._attach_tls_file(path, attach)

    def _attach_tls_file(self, path: str, attach: Callable[[], list[str]]) -> list[str]:
        """Run `attach` (placing uprobes on the file at `path`) once per file, undoing what it placed if it fails."""
        if path in self._tls:
            return self._tls[path][0]
        if not self._tls_capture_loaded:
            # The uprobes' own copy of capture_chunk (a prog array holds one program type), verified on first
            # use: ~0.35 s that agents tracing no TLS never pay.
            try:
                self._load_capture(b"capture_chunk_tls", self._kprobe_type, b"tls_chunk_progs")
            except Exception as exc:
                raise ProbeError(f"loading capture_chunk_tls failed: {exc}") from exc
            self._tls_capture_loaded = True
        before = set(self._bpf.uprobe_fds)
        try:
            attached = attach()
        except Exception as exc:
            self._detach_events(set(self._bpf.uprobe_fds) - before)
            if isinstance(exc, ProbeError):
                raise
            raise ProbeError(f"attaching the TLS probes to {path} failed: {exc}") from exc
        self._tls[path] = (attached, set(self._bpf.uprobe_fds) - before)
        log.info("TLS probes attached to %s (%s)", path, ", ".join(attached))
        return attached

    def tls_version(self, conn_id: int) -> str | None:
        """The TLS version connection `conn_id` negotiated ("1.2", "1.3"), when the kernel saw its handshake
        succeed and the SSL object holds it where OpenSSL 1.1 and 3.0-3.1 keep it; else None."""
        handshake = self.tls_handshake(conn_id)
        return handshake.version if handshake else None

    def tls_handshake(self, conn_id: int) -> TlsHandshake | None:
        """Connection `conn_id`'s TLS handshake as the probed handshake calls saw it, or None if none did."""
        try:
            raw = self._tls_handshakes[ctypes.c_uint64(conn_id)]
        except KeyError:
            return None
        return TlsHandshake(raw.start_ns, raw.end_ns, bool(raw.established), _TLS_VERSIONS.get(raw.version))

    def detach_tls(self, path: str) -> None:
        """Remove the probes attach_tls(`path`) placed."""
        found = self._tls.pop(path, None)
        if found is not None:
            self._detach_events(found[1])
            log.info("TLS probes detached from %s", path)

    def _detach_events(self, events: set[bytes]) -> None:
        for event in events:
            with contextlib.suppress(Exception):  # gone already: nothing to undo
                self._bpf.detach_uprobe_event(event)

    # ---- selection ----
    def trace_cgroup(self, cgroup_id: int) -> None:
        self._cgroups[ctypes.c_uint64(cgroup_id)] = ctypes.c_uint8(1)

    def untrace_cgroup(self, cgroup_id: int) -> None:
        self._cgroups.pop(ctypes.c_uint64(cgroup_id), None)

    def trace_pid(self, tgid: int) -> None:
        self._pids[ctypes.c_uint32(tgid)] = ctypes.c_uint8(1)

    def untrace_pid(self, tgid: int) -> None:
        self._pids.pop(ctypes.c_uint32(tgid), None)

    # ---- connections ----
    def connection(self, tgid: int, fd: int) -> bpf_events.Conn | None:
        """The kernel's live state of a connection (to finish idle runs)."""
        try:
            value = self._conns[bpf_events.ConnKey(tgid, fd)]
        except KeyError:
            return None
        # A copy: a view cast from byref(value) would not keep `value` alive (use after free).
        return bpf_events.Conn.from_buffer_copy(value)

    def forget_connection(self, tgid: int, fd: int, conn_id: int) -> None:
        """Stop capturing connection `conn_id` (a protocol we do not parse, an evicted one, one whose
        process exited); a UDP socket also stops being a candidate, else its next send would open it
        again. A slot that holds another connection by now (fd or pid reused) is left alone."""
        live = self.connection(tgid, fd)
        if live is None or live.conn_id != conn_id:
            return
        if live.skip.direction:
            self.skips_forgotten += 1
        key = bpf_events.ConnKey(tgid, fd)
        self._conns.pop(key, None)
        self._dgram_socks.pop(key, None)

    def sample_connection(self, tgid: int, fd: int, conn_id: int, protocol: bpf_events.SampleProtocol) -> None:
        """Let the kernel skip exchanges of connection `conn_id` (its `protocol`'s parser keeps no state from one
        exchange to the next) when its cgroup's capture fraction is below 1."""
        self._sampled_conns[bpf_events.ConnKey(tgid, fd)] = bpf_events.SampledConn(conn_id, protocol)

    # ---- overhead budget ----
    def set_capture_fraction(self, cgroup_id: int, fraction: float) -> None:
        """Capture about `fraction` (0 to 1) of the exchanges that start in cgroup `cgroup_id` on sampled
        connections; the rest are counted in skipped_exchanges only."""
        key = ctypes.c_uint64(cgroup_id)
        threshold = min(round((1.0 - fraction) * 2**32), 2**32 - 1)
        if threshold <= 0:
            self._skip_thresholds.pop(key, None)
        else:
            self._skip_thresholds[key] = ctypes.c_uint32(threshold)

    def skipped_exchanges(self) -> dict[bpf_events.SkipSeries, bpf_events.SkipTotals]:
        """Exchanges the kernel skipped so far, per series (cumulative)."""
        totals = {}
        for key, counts in self._skipped.items():
            series = bpf_events.SkipSeries.of(bpf_events.SkipKey.from_buffer_copy(key))
            totals[series] = bpf_events.SkipTotals(counts.count, counts.sum_ns, tuple(counts.buckets))
        return totals

    def bpf_run_time_ns(self) -> int:
        """In-kernel run time of every program loaded here, from their fdinfo (0 while kernel.bpf_stats_enabled
        is off: the kernel counts only then)."""
        total = 0
        for function in list(self._bpf.funcs.values()):
            with contextlib.suppress(OSError):
                with open(f"/proc/self/fdinfo/{function.fd}", "rb") as info:
                    found = _RUN_TIME.search(info.read())
                if found:
                    total += int(found.group(1))
        return total

    def connection_count(self, tgid: int) -> int:
        """How many connections of process `tgid` the kernel tracks (walks the whole table: for tests
        and diagnostics, not the event path)."""
        return sum(1 for key in self._conns if key.tgid == tgid)

    # ---- events ----
    def open_events(self, callback: EventCallback) -> None:
        """Deliver the ring buffer's records to `callback`, in batches, from `poll()`."""
        self._close_events()
        self._events = _ringbuf.RingBuffer(self._bpf[b"events"].map_fd)
        self._epoll = select.epoll()
        self._epoll.register(self._events.fileno(), select.EPOLLIN)
        self._on_events = callback

    def poll(self, timeout_ms: int) -> None:
        """Wait up to `timeout_ms` for records, then hand what is committed to the callback."""
        if self._events is None or self._epoll is None:
            raise ProbeError("poll() before open_events()")
        self._epoll.poll(timeout_ms / 1000)
        # Producers skip wake-ups below a backlog threshold: drain whether the wait woke or timed out.
        for _ in range(_MAX_BATCHES_PER_POLL):
            batch = self._events.drain(_DRAIN_BATCH)
            if batch:
                self._on_events(batch)
            if len(batch) < _DRAIN_BATCH:
                break

    def _close_events(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def events_lost_by_cgroup(self) -> dict[int, int]:
        """Ring-buffer events lost so far, per cgroup id of the process whose event it was."""
        return {key.value: value.value for key, value in self._lost_by_cgroup.items()}

    def stats(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for stat in bpf_events.Stat:
            per_cpu = self._stats[ctypes.c_int(stat.value)]
            totals[stat.name.lower()] = int(sum(per_cpu))
        totals["skips_forgotten"] = self.skips_forgotten
        return totals

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_events()
        self._bpf.cleanup()

