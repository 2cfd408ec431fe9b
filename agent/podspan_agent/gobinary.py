"""Go executables for the crypto/tls probes: the Go release (from the build info), and where
`crypto/tls.(*Conn).Read`/`Write`/`serverHandshake`/`clientHandshake` start and return (from the ELF symbol
table and the functions' machine code). Return probes go on the RET instructions, never uretprobes: those rewrite the
return address on the goroutine's stack, which Go moves when it grows."""

from __future__ import annotations

import dataclasses
import re
import struct

import capstone

from podspan_agent import elffile

READ, WRITE = b"crypto/tls.(*Conn).Read", b"crypto/tls.(*Conn).Write"
# The handshakes themselves, which run only while there is one (not handshakeContext: Read and Write call it
# every time, and every probe hit is a trap). A program may link only one of them.
SERVER_HANDSHAKE, CLIENT_HANDSHAKE = b"crypto/tls.(*Conn).serverHandshake", b"crypto/tls.(*Conn).clientHandshake"
_REQUIRED = (READ, WRITE)
_PROBED = (*_REQUIRED, SERVER_HANDSHAKE, CLIENT_HANDSHAKE)
_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_VERSION = re.compile(r"go(\d+)\.(\d+)")
# The register ABI (ABIInternal: arguments in RAX, RBX, ..., the goroutine in R14) is amd64's from Go 1.17.
_FIRST_REGISTER_ABI = (1, 17)
_MAX_FUNCTION = 1 << 16  # bytes: far above what these functions compile to


@dataclasses.dataclass(frozen=True, slots=True)
class Function:
    symbol: bytes
    returns: tuple[int, ...]  # offsets of its RET instructions from the symbol's start


@dataclasses.dataclass(frozen=True, slots=True)
class GoBinary:
    """A Go executable that links crypto/tls: what to probe in it, or why nothing (`problem`)."""

    version: str  # "go1.19.8", or "go" when the build info does not say
    functions: tuple[Function, ...] = ()
    problem: str = ""


def inspect(path: str) -> GoBinary | None:
    """What the executable at `path` offers the Go TLS probes; None if it is not a Go program that links
    crypto/tls (or cannot be read)."""
    try:
        with open(path, "rb") as elf:
            parsed = elffile.parse(elf)
            if parsed is None:
                return None
            buildinfo = parsed.section(b".go.buildinfo")
            if buildinfo is None:
                return None
            version = _version(elffile.read(elf, buildinfo, 0, 4096))
            if version is None:
                return None
            symbols = elffile.functions(elf, parsed, elffile.SHT_SYMTAB, _PROBED)
            if not all(name in symbols for name in _REQUIRED):
                pclntab = parsed.section(b".gopclntab")
                if pclntab is None or READ + b"\0" not in elffile.read(elf, pclntab):
                    return None  # no crypto/tls in it
                return GoBinary(version, problem="stripped: no symbols to probe")
            problem = _unsupported(version, parsed.machine)
            if problem:
                return GoBinary(version, problem=problem)
            found = []
            for name, symbol in symbols.items():
                section = parsed.containing(symbol.address)
                if section is None or not 0 < symbol.size <= _MAX_FUNCTION:
                    return GoBinary(version, problem=f"{name.decode()} is not in a section")
                code = elffile.read(elf, section, symbol.address - section.addr, symbol.size)
                returns = return_offsets(code)
                if not returns:
                    return GoBinary(version, problem=f"could not decode {name.decode()}")
                found.append(Function(name, returns))
            return GoBinary(version, tuple(found))
    except (OSError, struct.error):
        return None


def _version(head: bytes) -> str | None:
    """The Go release in a .go.buildinfo section's first bytes: Go 1.18+ writes it inline (a varint length,
    then the text) after the 32-byte header; older releases point at it, which is not followed: "go"."""
    if not head.startswith(_BUILDINFO_MAGIC) or len(head) < 33:
        return None
    if not head[15] & 2:
        return "go"
    length, at, shift = 0, 32, 0
    while at < len(head) and shift < 35:
        byte = head[at]
        length |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            break
    text = head[at:at + length].decode("ascii", "replace")
    return text if _VERSION.match(text) else "go"


def _unsupported(version: str, machine: int) -> str:
    if machine != elffile.EM_X86_64:
        return "not x86-64: probes read the amd64 register ABI"
    found = _VERSION.match(version)
    if found is None:
        return "Go release unknown (build info before Go 1.18)"
    if (int(found[1]), int(found[2])) < _FIRST_REGISTER_ABI:
        return "before Go 1.17: stack-based calling convention"
    return ""


def return_offsets(code: bytes) -> tuple[int, ...]:
    """Offsets of the RET instructions in x86-64 machine code `code` (one whole function), decoded from
    its start, so only instruction boundaries count (0xC3 inside another instruction is not a RET).
    Empty if some bytes do not decode."""
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    returns, end = [], 0
    for address, size, mnemonic, _operands in decoder.disasm_lite(code, 0):
        if mnemonic == "ret":
            returns.append(address)
        end = address + size
    return tuple(returns) if end == len(code) else ()
