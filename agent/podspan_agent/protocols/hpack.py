"""HPACK header decoding (RFC 7541) for one direction of one HTTP/2 connection.

A decoder that may have missed header blocks (capture joined late, bytes lost) reports
references it cannot resolve as unknown instead of guessing.
"""

from __future__ import annotations

import collections
import dataclasses

STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)

# RFC 7541 Appendix B is a canonical Huffman code, so the code lengths of symbols
# 0..256 (256 = EOS) determine every code; storing only lengths keeps the table auditable.
_HUFFMAN_LENGTHS: tuple[int, ...] = (
    13,
    23,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    24,
    30,
    28,
    28,
    30,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    30,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    28,
    6,
    10,
    10,
    12,
    13,
    6,
    8,
    11,
    10,
    10,
    8,
    11,
    8,
    6,
    6,
    6,
    5,
    5,
    5,
    6,
    6,
    6,
    6,
    6,
    6,
    6,
    7,
    8,
    15,
    6,
    12,
    10,
    13,
    6,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    8,
    7,
    8,
    13,
    19,
    13,
    14,
    6,
    15,
    5,
    6,
    5,
    6,
    5,
    6,
    6,
    6,
    5,
    7,
    7,
    6,
    6,
    6,
    5,
    6,
    7,
    6,
    5,
    5,
    6,
    7,
    7,
    7,
    7,
    7,
    15,
    11,
    14,
    13,
    28,
    20,
    22,
    20,
    20,
    22,
    22,
    22,
    23,
    22,
    23,
    23,
    23,
    23,
    23,
    24,
    23,
    24,
    24,
    22,
    23,
    24,
    23,
    23,
    23,
    23,
    21,
    22,
    23,
    22,
    23,
    23,
    24,
    22,
    21,
    20,
    22,
    22,
    23,
    23,
    21,
    23,
    22,
    22,
    24,
    21,
    22,
    23,
    23,
    21,
    21,
    22,
    21,
    23,
    22,
    23,
    23,
    20,
    22,
    22,
    22,
    23,
    22,
    22,
    23,
    26,
    26,
    20,
    19,
    22,
    23,
    22,
    25,
    26,
    26,
    26,
    27,
    27,
    26,
    24,
    25,
    19,
    21,
    26,
    27,
    27,
    26,
    27,
    24,
    21,
    21,
    26,
    26,
    28,
    27,
    27,
    27,
    20,
    24,
    20,
    21,
    22,
    21,
    21,
    23,
    22,
    22,
    25,
    25,
    24,
    24,
    26,
    23,
    26,
    27,
    26,
    26,
    27,
    27,
    27,
    27,
    27,
    28,
    27,
    27,
    27,
    27,
    27,
    26,
    30,
)
_EOS = 256
ENTRY_OVERHEAD = 32
DEFAULT_TABLE_SIZE = 4096
# Hard ceiling on a dynamic table we are willing to mirror, whatever the peers negotiate.
MAX_TABLE_SIZE = 65536
_MAX_INTEGER = 1 << 28


class HpackError(Exception):
    """Malformed or unresolvable input; the decoder catches it and desynchronises."""


def _canonical_codes() -> list[tuple[int, int]]:
    """(code, length) per symbol, assigned in (length, symbol) order as RFC 7541 does."""
    codes = [(0, 0)] * len(_HUFFMAN_LENGTHS)
    code = -1
    previous = 0
    for symbol in sorted(range(len(_HUFFMAN_LENGTHS)), key=lambda s: (_HUFFMAN_LENGTHS[s], s)):
        length = _HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        codes[symbol] = (code, length)
    return codes


def _build_nibble_machine() -> tuple[list[tuple[int, int, bool]], list[bool]]:
    """A 4-bit-at-a-time decoder: each tree node x nibble -> (next node, symbol or -1, failed).

    Codes are at least 5 bits long, so one nibble completes at most one symbol.
    `accepting[node]` says the bits consumed since the last symbol are valid padding
    (fewer than 8 bits, all ones: a prefix of EOS).
    """
    children: list[list[int]] = [[-1, -1]]
    leaf_symbol: dict[int, int] = {}
    for symbol, (code, length) in enumerate(_canonical_codes()):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if children[node][bit] < 0:
                children[node][bit] = len(children)
                children.append([-1, -1])
            node = children[node][bit]
        leaf_symbol[node] = symbol
    internal = [n for n in range(len(children)) if n not in leaf_symbol]
    state_of = {node: index for index, node in enumerate(internal)}
    accepting = [False] * len(internal)
    node = 0
    for depth in range(8):
        accepting[state_of[node]] = True
        if depth < 7:
            node = children[node][1]
    machine: list[tuple[int, int, bool]] = []
    for node in internal:
        for nibble in range(16):
            current, emitted, failed = node, -1, False
            for shift in (3, 2, 1, 0):
                current = children[current][(nibble >> shift) & 1]
                if current in leaf_symbol:
                    symbol = leaf_symbol[current]
                    failed = failed or symbol == _EOS
                    emitted = symbol
                    current = 0
            machine.append((state_of[current], emitted, failed))
    return machine, accepting


_MACHINE, _ACCEPTING = _build_nibble_machine()


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string literal; raises HpackError when malformed."""
    out = bytearray()
    state = 0
    machine = _MACHINE
    for byte in data:
        for nibble in (byte >> 4, byte & 0x0F):
            state, symbol, failed = machine[state * 16 + nibble]
            if failed:
                raise HpackError("EOS inside Huffman string")
            if symbol >= 0:
                out.append(symbol)
    if not _ACCEPTING[state]:
        raise HpackError("bad Huffman padding")
    return bytes(out)


@dataclasses.dataclass(slots=True)
class HeaderBlock:
    """Decoded headers in order; `unknown` counts fields that could not be resolved."""

    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unknown: int = 0

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def integer(self, prefix_bits: int) -> int:
        data = self.data
        if self.pos >= len(data):
            raise HpackError("truncated integer")
        mask = (1 << prefix_bits) - 1
        value = data[self.pos] & mask
        self.pos += 1
        if value < mask:
            return value
        shift = 0
        while True:
            if self.pos >= len(data):
                raise HpackError("truncated integer")
            byte = data[self.pos]
            self.pos += 1
            value += (byte & 0x7F) << shift
            if value > _MAX_INTEGER:
                raise HpackError("integer too large")
            if not byte & 0x80:
                return value
            shift += 7

    def string(self) -> bytes:
        if self.pos >= len(self.data):
            raise HpackError("truncated string")
        huffman = self.data[self.pos] & 0x80
        length = self.integer(7)
        end = self.pos + length
        if end > len(self.data):
            raise HpackError("truncated string")
        raw = self.data[self.pos : end]
        self.pos = end
        return huffman_decode(raw) if huffman else raw


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class Decoder:
    """HPACK decoder state for the header blocks one endpoint sends.

    While `synchronised` is false the table holds only entries inserted since the
    loss, which are still correct (eviction removes the oldest, unknown entries
    first); any index past them is counted unknown. A dynamic table size update to
    zero empties the table on both sides and so restores synchronisation.
    """

    def __init__(self, synchronised: bool = True, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.synchronised = synchronised
        self.max_size = min(max_size, MAX_TABLE_SIZE)
        # Newest entry first, as HPACK indexes them: (name, value, name octets).
        self._table: collections.deque[tuple[str, str, int]] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._size = 0
        self.desync_count = 0

    def desynchronise(self) -> None:
        """Header blocks were lost: from now on unresolvable references are unknown.

        Insertions we missed shifted every entry we hold to an unknown index, so the table
        restarts empty; only entries inserted from here on are trusted.
        """
        if self.synchronised:
            self.desync_count += 1
        self.synchronised = False
        self._clear()

    @property
    def table_size(self) -> int:
        return self._size

    def decode(self, block: bytes, complete: bool = True) -> HeaderBlock:
        """Decode one header block; never raises.

        `complete=False` means the block was cut off: what was decoded is returned
        and the decoder desynchronises, since later insertions were missed.
        """
        result = HeaderBlock()
        reader = _Reader(block)
        try:
            while reader.pos < len(block):
                self._field(reader, result)
        except HpackError:
            self.desynchronise()
        if not complete:
            self.desynchronise()
        return result

    def _field(self, reader: _Reader, result: HeaderBlock) -> None:
        first = reader.data[reader.pos]
        if first & 0x80:  # indexed field
            entry = self._lookup(reader.integer(7))
            if entry is None:
                result.unknown += 1
            else:
                result.headers.append((entry[0], entry[1]))
            return
        if first & 0xE0 == 0x20:  # dynamic table size update
            self._resize(reader.integer(5))
            return
        indexing = bool(first & 0x40)
        name_index = reader.integer(6 if indexing else 4)
        name: str | None = None
        name_octets = 0
        if name_index:
            entry = self._lookup(name_index)
            if entry is not None:
                name, _, name_octets = entry
        else:
            raw_name = reader.string()
            name, name_octets = _text(raw_name), len(raw_name)
        raw_value = reader.string()
        if name is None:
            result.unknown += 1
            if indexing:
                # The new entry's name is unknown, so every index through it would be a guess.
                self._clear()
            return
        value = _text(raw_value)
        result.headers.append((name, value))
        if indexing:
            self._insert(name, value, name_octets, len(raw_value))

    def _lookup(self, index: int) -> tuple[str, str, int] | None:
        """(name, value, name length in octets) for an index, None if unknown."""
        if index == 0:
            raise HpackError("index 0")
        if index <= len(STATIC_TABLE):
            name, value = STATIC_TABLE[index - 1]
            return name, value, len(name)
        position = index - len(STATIC_TABLE) - 1
        if position < len(self._table):
            return self._table[position]
        if self.synchronised:
            raise HpackError("index beyond dynamic table")
        return None

    def _resize(self, size: int) -> None:
        if size > MAX_TABLE_SIZE:
            raise HpackError("table size above ceiling")
        self.max_size = size
        self._evict(0)
        if size == 0:
            self.synchronised = True

    def _insert(self, name: str, value: str, name_octets: int, value_octets: int) -> None:
        size = name_octets + value_octets + ENTRY_OVERHEAD
        self._evict(size)
        # RFC 7541 4.4: an entry larger than the whole table just leaves it empty.
        if size <= self.max_size:
            self._table.appendleft((name, value, name_octets))
            self._sizes.appendleft(size)
            self._size += size

    def _evict(self, room: int) -> None:
        while self._table and self._size + room > self.max_size:
            self._table.pop()
            self._size -= self._sizes.pop()

    def _clear(self) -> None:
        self._table.clear()
        self._sizes.clear()
        self._size = 0
