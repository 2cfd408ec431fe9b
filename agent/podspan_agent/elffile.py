"""The little of ELF the TLS discovery reads: a 64-bit little-endian file's sections and the functions its
symbol tables define (pure Python, no ELF library)."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import BinaryIO

SHT_SYMTAB, SHT_DYNSYM = 2, 11
EM_X86_64 = 62
_STT_FUNC, _SHN_UNDEF = 2, 0


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    name: bytes
    type: int
    addr: int
    offset: int
    size: int
    link: int  # for a symbol table: the index of its string table


@dataclasses.dataclass(frozen=True, slots=True)
class Symbol:
    address: int  # virtual address
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class Elf:
    machine: int
    sections: tuple[Section, ...]

    def section(self, name: bytes) -> Section | None:
        return next((section for section in self.sections if section.name == name), None)

    def containing(self, address: int) -> Section | None:
        """The allocated section whose addresses include `address`."""
        return next((s for s in self.sections if s.addr and s.addr <= address < s.addr + s.size), None)


def parse(elf: BinaryIO) -> Elf | None:
    """The section table of the open file `elf`, or None if it is not a 64-bit little-endian ELF file."""
    ident = elf.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        return None
    machine, = struct.unpack_from("<H", ident, 0x12)
    shoff, = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
    if shentsize < 64 or not 0 < shnum < 65536:
        return None
    elf.seek(shoff)
    table = elf.read(shentsize * shnum)
    raw = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(len(table) // shentsize)]
    names = b""
    if shstrndx < len(raw):
        elf.seek(raw[shstrndx][4])
        names = elf.read(raw[shstrndx][5])
    return Elf(machine, tuple(Section(names[s[0]:names.find(b"\0", s[0])] if s[0] < len(names) else b"", s[1], s[3],
                                      s[4], s[5], s[6]) for s in raw))


def read(elf: BinaryIO, section: Section, start: int = 0, size: int | None = None) -> bytes:
    """Bytes of `section` from `start` (relative to it), `size` of them or to its end."""
    elf.seek(section.offset + start)
    return elf.read(section.size - start if size is None else size)


def functions(elf: BinaryIO, parsed: Elf, table_type: int, names: Iterable[bytes]) -> dict[bytes, Symbol]:
    """Which of `names` the symbol tables of type `table_type` (SHT_SYMTAB, SHT_DYNSYM) define as functions."""
    wanted = set(names)
    found: dict[bytes, Symbol] = {}
    for table in parsed.sections:
        if table.type != table_type or table.link >= len(parsed.sections):
            continue
        strings = read(elf, parsed.sections[table.link])
        if not any(b"\0" + name + b"\0" in strings for name in wanted):
            continue  # the common case for an executable: no need to walk its symbols
        symbols = read(elf, table)
        for offset in range(0, len(symbols) - 23, 24):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", symbols, offset)
            if st_info & 0xF != _STT_FUNC or st_shndx == _SHN_UNDEF:
                continue
            name = strings[st_name:strings.find(b"\0", st_name)]
            if name in wanted:
                found[name] = Symbol(st_value, st_size)
    return found
