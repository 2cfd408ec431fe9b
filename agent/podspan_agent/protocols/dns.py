"""DNS parser over UDP (one datagram per message) and TCP (2-byte length prefix), paired by id.

NXDOMAIN is reported as a response code but not as an error: Kubernetes resolvers expand short
names through the search domains (ndots:5), so most lookups see NXDOMAIN before succeeding.
"""

from __future__ import annotations

import dataclasses
import struct

from podspan_agent.protocols import base, framing, pairing

MAX_PENDING = 256
HEADER_SIZE = 12
MAX_LABELS = 128
MAX_JUMPS = 16
NAME_LIMIT = 255
SPAN_NAME = "dns.query"

TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR",
    41: "OPT", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF", 252: "AXFR",
    255: "ANY", 257: "CAA",
}  # fmt: skip
RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
    "NOTAUTH", "NOTZONE",
)  # fmt: skip
NXDOMAIN = 3
_CLASSES = {1, 3, 254, 255}  # IN, CH, NONE, ANY


@dataclasses.dataclass(slots=True, frozen=True)
class Question:
    id: int
    is_response: bool
    rcode: int
    name: str
    qtype: int


def _name(data: bytes, pos: int) -> tuple[str, int] | None:
    """(dotted name, position after it in the question) with loop-safe compression pointers."""
    labels: list[str] = []
    after = -1
    jumps = 0
    total = 0
    while len(labels) <= MAX_LABELS:
        if pos >= len(data):
            return None
        length = data[pos]
        if length == 0:
            return ".".join(labels), (pos + 1 if after < 0 else after)
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or jumps >= MAX_JUMPS:
                return None
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if after < 0:
                after = pos + 2
            if target >= pos:  # pointers must go backwards, which also rules out loops
                return None
            pos = target
            jumps += 1
            continue
        if length & 0xC0:
            return None  # obsolete label types
        label = data[pos + 1 : pos + 1 + length]
        total += length + 1
        if len(label) < length or total > NAME_LIMIT:
            return None
        labels.append(pairing.printable(label, 63).replace(".", "\\."))
        pos += 1 + length
    return None


def parse(data: bytes) -> Question | None:
    """Header and first question of one DNS message, or None when it is not one."""
    if len(data) < HEADER_SIZE + 5:
        return None
    ident, flags, qdcount = struct.unpack_from(">HHH", data)
    if qdcount != 1 or (flags >> 11) & 0xF > 5:  # opcodes above UPDATE are unassigned
        return None
    parsed = _name(data, HEADER_SIZE)
    if parsed is None or parsed[1] + 4 > len(data):
        return None
    name, pos = parsed
    qtype, qclass = struct.unpack_from(">HH", data, pos)
    if qclass & 0x7FFF not in _CLASSES:  # the top bit is mDNS's unicast-response flag
        return None
    return Question(ident, bool(flags & 0x8000), flags & 0xF, name, qtype)


def _looks_like_query(data: bytes) -> bool:
    question = parse(data)
    if question is None or question.is_response:
        return False
    ancount, nscount, arcount = struct.unpack_from(">HHH", data, 6)
    return ancount == 0 and nscount == 0 and arcount <= 2


def detect(data: bytes, from_client: bool = True) -> bool:
    """A query: a bare datagram, or one behind TCP's 2-byte length prefix."""
    if not from_client:
        return False
    if _looks_like_query(data):
        return True
    return (
        len(data) > 2 and struct.unpack_from(">H", data)[0] >= len(data) - 2 and _looks_like_query(data[2:])
    )


def _tcp_length(data: bytes, pos: int) -> int | None:
    (length,) = struct.unpack_from(">H", data, pos)
    return length + 2 if length >= HEADER_SIZE else None


@dataclasses.dataclass(slots=True)
class _Query:
    question: Question
    start_ns: int
    size: int


class Parser:
    """Per-flow DNS parser. `transport` is "udp", "tcp" or None to decide from the first message."""

    def __init__(
        self,
        settings: base.CaptureSettings | None = None,
        transport: str | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.settings = settings or base.CaptureSettings()
        self.transport = transport
        self._framers = {True: framing.LengthFramer(2, _tcp_length), False: framing.LengthFramer(2, _tcp_length)}
        self._pending: pairing.BoundedDict[tuple[int, str, int], _Query] = pairing.BoundedDict(max_pending)
        self.unanswered = 0
        self.malformed = 0

    @property
    def dropped(self) -> int:
        return self._pending.dropped + self.malformed + sum(framer.lost for framer in self._framers.values())

    @property
    def state_size(self) -> int:
        """Requests waiting for their response: bounded by `max_pending`."""
        return len(self._pending)

    def feed(self, message: base.Message) -> list[base.Record]:
        records: list[base.Record] = []
        try:
            if self.transport is None:
                self.transport = "udp" if parse(message.data) is not None else "tcp"
            if self.transport == "udp":
                self._message(message.data, message.size, message, records)
            else:
                for head, length in self._framers[message.from_client].frames(message.data, message.size):
                    self._message(head[2:], length - 2, message, records)
        except Exception:  # a parser must never raise; the message is simply not reported
            self.malformed += 1
        return records

    def flush(self) -> list[base.Record]:
        # pairing.BoundedDict cannot list its entries, so unanswered queries are only counted.
        self.unanswered += len(self._pending)
        self._pending = pairing.BoundedDict(self._pending.limit)
        return []

    def _message(self, data: bytes, size: int, message: base.Message, records: list[base.Record]) -> None:
        question = parse(data)
        if question is None:
            self.malformed += 1
            return
        # The question is echoed in the answer, so it disambiguates ids reused across names.
        key = (question.id, question.name.lower(), question.qtype)
        if not question.is_response:
            self._pending.put(key, _Query(question, message.start_ns, size))
            return
        query = self._pending.pop(key)
        if query is None:
            return
        rcode = RCODE_NAMES[question.rcode] if question.rcode < len(RCODE_NAMES) else str(question.rcode)
        name = query.question.name
        records.append(
            base.Record(
                protocol="dns",
                name=SPAN_NAME,
                start_ns=query.start_ns,
                end_ns=max(message.end_ns, query.start_ns),
                attributes={
                    "dns.question.name": name,
                    "dns.question.type": TYPE_NAMES.get(query.question.qtype, str(query.question.qtype)),
                    "dns.response_code": rcode,
                },
                error=None if question.rcode in (0, NXDOMAIN) else rcode,
                request_size=query.size,
                response_size=size,
            )
        )
