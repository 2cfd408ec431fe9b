"""TLS library discovery: which OpenSSL each traced process maps, or whether its executable is a Go program
with crypto/tls (from /proc/<pid>/maps, opened through /proc/<pid>/root so a container's own files are
found), kept attached by the loader once per file for as long as some traced process maps it, and reported
per process."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import struct
from collections.abc import Iterable

from podspan_agent import elffile, gobinary, loader
from podspan_agent.protocols import base

log = logging.getLogger(__name__)

_LIBSSL = re.compile(r"/libssl\.so(?:\.[0-9.]+)?$")
_LIBCRYPTO_VERSION = re.compile(rb"OpenSSL (\d+\.\d+\.\d+[a-z]?) ")
# Executables (statically linked OpenSSL) get probes only if they export both.
_REQUIRED_EXPORTS = (b"SSL_read", b"SSL_write")
_MAX_EXAMINED = 16384  # files remembered as OpenSSL or not


@dataclasses.dataclass(frozen=True, slots=True)
class Library:
    """A file with OpenSSL in it, mapped executable by a process."""

    # (device, inode) from /proc/<pid>/maps: one attachment per file. Containers see their overlay mount's
    # device, so two of one image may attach the same layer file twice: both probes fire, the second entry
    # stores the same call again and the second return finds it gone, so the plaintext still goes out once.
    key: tuple[str, int]
    path: str  # as the process sees it
    host_path: str  # the same file from the agent's mount namespace: /proc/<pid>/root/<path> of a process
    # that maps it (the probes stay on the file when that process is gone)
    name: str  # e.g. "openssl-3.0.19 (libssl.so.3)", "openssl (static, node)", "go1.19.8 (server)"
    go: gobinary.GoBinary | None = None  # a Go executable: what its crypto/tls offers the probes


@dataclasses.dataclass(frozen=True, slots=True)
class LibraryState:
    """What became of a library: attached (with the functions probed) or why not."""

    library: Library
    symbols: tuple[str, ...] = ()
    error: str = ""

    def describe(self) -> str:
        if self.error:
            return f"{self.library.name}: not attached ({self.error})"
        return f"{self.library.name}: attached"


def mapped_files(pid: int) -> dict[str, tuple[str, int]]:
    """Executable file mappings of process `pid`: path -> (device, inode). Empty if it is gone."""
    files: dict[str, tuple[str, int]] = {}
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                # address perms offset dev inode path; only a path-named, executable, existing file counts
                if len(fields) < 6 or "x" not in fields[1] or fields[4] == "0":
                    continue
                path = fields[5].rstrip("\n")
                if path.startswith("/") and not path.endswith(" (deleted)"):
                    files[path] = (fields[3], int(fields[4]))
    except (OSError, ValueError):
        return {}
    return files


def is_libssl(path: str) -> bool:
    """Whether `path` names OpenSSL's libssl (libssl.so, libssl.so.3, libssl.so.1.1)."""
    return _LIBSSL.search(path) is not None


def exports(path: str, names: Iterable[bytes]) -> set[bytes]:
    """Which of `names` the ELF file at `path` defines as functions in its dynamic symbol table (what a
    uprobe by name can find); empty for anything that is not a readable 64-bit little-endian ELF."""
    try:
        with open(path, "rb") as elf:
            parsed = elffile.parse(elf)
            return set(elffile.functions(elf, parsed, elffile.SHT_DYNSYM, names)) if parsed else set()
    except (OSError, struct.error):
        return set()


def _openssl_version(host_root: str, libssl_path: str) -> str | None:
    """The OpenSSL release of a libssl, from the libcrypto next to it (libssl itself names no release)."""
    directory, _, name = libssl_path.rpartition("/")
    crypto = f"{host_root}{directory}/{name.replace('libssl', 'libcrypto', 1)}"
    try:
        with open(crypto, "rb") as library:
            found = _LIBCRYPTO_VERSION.search(library.read())
    except OSError:
        return None
    return found.group(1).decode() if found else None


class Tracker:
    """Keeps the TLS probes on exactly the OpenSSL files that traced processes map. Call `sync` with the
    traced processes whenever the selection may have changed or processes may have started (it is cheap:
    one read of /proc/<pid>/maps per process; files are examined once)."""

    def __init__(self, probes: loader.Probes) -> None:
        self._probes = probes
        self._states: dict[tuple[str, int], LibraryState] = {}  # files in use by traced processes
        self._by_pid: dict[int, tuple[tuple[str, int], ...]] = {}
        # every file looked at: its Library's name and Go binary if it holds TLS to probe, else None
        self._examined: dict[tuple[str, int], tuple[str, gobinary.GoBinary | None] | None] = {}

    def sync(self, pids: Iterable[int]) -> None:
        by_pid: dict[int, tuple[tuple[str, int], ...]] = {}
        seen: dict[tuple[str, int], Library] = {}  # each file as a process that maps it now sees it
        for pid in pids:
            found = self._libraries(pid)
            by_pid[pid] = tuple(library.key for library in found)
            for library in found:
                seen.setdefault(library.key, library)
        for key in set(seen) - set(self._states):
            library = seen[key]
            try:
                if library.go is None:
                    symbols = tuple(self._probes.attach_tls(library.host_path))
                elif library.go.problem:
                    raise loader.ProbeError(library.go.problem)
                else:
                    symbols = tuple(self._probes.attach_go_tls(library.host_path, library.go.functions))
                self._states[key] = LibraryState(library, symbols)
            except loader.ProbeError as exc:  # kept until no process maps it: not retried on every sync
                log.warning("TLS library %s: %s", library.name, exc)
                self._states[key] = LibraryState(library, error=str(exc))
        for key in set(self._states) - set(seen):
            state = self._states.pop(key)
            if not state.error:
                self._probes.detach_tls(state.library.host_path)
        self._by_pid = by_pid

    def libraries(self, pid: int) -> list[LibraryState]:
        """The OpenSSL files process `pid` mapped at the last sync, and whether they are attached."""
        return [self._states[key] for key in self._by_pid.get(pid, ()) if key in self._states]

    def unsupported(self, tls_processes: Iterable[tuple[int, int]], cgroup_id: int | None = None) -> list[int]:
        """Traced processes (of `cgroup_id`, or any) among `tls_processes`: (cgroup id, tgid) whose TLS
        handshake the kernel saw outside every probed OpenSSL call. An OpenSSL handshake runs inside
        SSL_do_handshake, SSL_read or SSL_write, so theirs comes from a TLS stack that is not probed (Go
        crypto/tls, BoringSSL in grpcio, rustls, ...) or from OpenSSL over memory BIOs (Node.js), whose
        plaintext cannot be tied to a socket: those connections yield no spans. (Go crypto/tls, when probed,
        runs its handshake inside a probed call too.)"""
        return sorted({tgid for cgroup, tgid in tls_processes
                       if tgid in self._by_pid and (cgroup_id is None or cgroup == cgroup_id)})

    def close(self) -> None:
        """Detach everything (the selection is empty)."""
        self.sync(())

    def _libraries(self, pid: int) -> list[Library]:
        files = mapped_files(pid)
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        root = f"/proc/{pid}/root"
        found = []
        if len(self._examined) > _MAX_EXAMINED:
            self._examined.clear()
        for path, key in files.items():
            if key not in self._examined:
                self._examined[key] = _examine(root, path, path == exe)
            examined = self._examined[key]
            if examined is not None:
                found.append(Library(key, path, root + path, *examined))
        return found


def _examine(root: str, path: str, executable: bool) -> tuple[str, gobinary.GoBinary | None] | None:
    """What the file at `path` (seen from `root`) is, as a Library's name and Go binary, if it holds a TLS
    stack we know: OpenSSL, or Go's crypto/tls in the executable."""
    name = path.rpartition("/")[2]
    if is_libssl(path):
        version = _openssl_version(root, path)
        return (f"openssl-{version} ({name})" if version else f"openssl ({name})"), None
    if not executable:
        return None
    if exports(root + path, _REQUIRED_EXPORTS) == set(_REQUIRED_EXPORTS):
        return f"openssl (static, {name})", None
    go = gobinary.inspect(root + path)
    return (f"{go.version} ({name})", go) if go else None


def failed_handshake(handshake: loader.TlsHandshake | None) -> list[base.Record]:
    """What a TLS connection that ended without plaintext yields: one error record (an error span on the
    connection) when the probed handshake calls on it never succeeded: a rejected certificate, no common
    version or cipher, or the peer gone mid-handshake. Nothing for a handshake that succeeded or that no
    probe saw (an unprobed TLS stack: reported per process instead)."""
    if handshake is None or handshake.established:
        return []
    return [base.Record("tls", "TLS handshake", handshake.start_ns, handshake.end_ns,
                        {"tls.established": False, "error.type": "tls_handshake_failed"},
                        error="TLS handshake failed")]
