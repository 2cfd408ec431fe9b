"""Fuzz inputs as connection scenarios, and the invariants every parser must keep on them.

Shared by the atheris harness (tests/fuzz/fuzz_parsers.py), the seed builder and the pytest
replay (tests/fuzz/test_fuzz_corpus.py). One input is one connection:

    byte 0            capture settings: bit 0 headers, 1 query, 2 bodies, 3 statement parameters
    then per message  op byte: bit 0 from_client, bit 1 truncated, bit 2 flush after,
                      bits 3-7 gap before it (in µs); 2-byte big-endian data length;
                      if truncated a 4-byte big-endian count of bytes not captured; the data

The parser comes from protocols/registry.py, so whatever implementation the registry returns is
what is checked.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from podspan_agent.protocols import base, registry

_CLIENT, _TRUNCATED, _FLUSH = 1, 2, 4
BODY_LIMIT = 256  # when byte 0 turns bodies on

# The most entries a parser may hold (its `state_size`, or HTTP/1's `pending`), from the limits
# its module declares.
STATE_LIMITS: dict[str, Callable[[ModuleType], int]] = {
    "http": lambda module: module.MAX_PENDING + 1,  # plus one gap absorbing the dropped requests' answers
    "redis": lambda module: module.MAX_PENDING,
    "mongodb": lambda module: module.MAX_PENDING,
    "postgresql": lambda module: module.MAX_PENDING + module.MAX_STATEMENTS + module.MAX_PORTALS,
    "mysql": lambda module: module.MAX_PENDING + module.MAX_STATEMENTS,
    "http2": lambda module: module.MAX_STREAMS,
    "kafka": lambda module: module.MAX_PENDING,
    "dns": lambda module: module.MAX_PENDING,
}
_ATTRIBUTE_TYPES = (str, int, float, bool)


class Violation(Exception):
    """A parser broke one of the invariants below."""


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    message: base.Message
    flush_after: bool


def spec(protocol: str) -> registry.ProtocolSpec:
    """The registry's entry serving `protocol` (any name in spec.protocols, e.g. grpc -> http2)."""
    for candidate in registry.ALL:
        if protocol in candidate.names:
            return candidate
    raise SystemExit(f"unknown protocol {protocol!r}; the registry has {', '.join(registry.NAMES)}")


def settings_of(flags: int) -> base.CaptureSettings:
    bodies = bool(flags & 4)
    return base.CaptureSettings(
        headers=bool(flags & 1), query=bool(flags & 2), bodies=bodies,
        body_limit=BODY_LIMIT if bodies else 0, statement_parameters=bool(flags & 8),
    )


def decode(data: bytes) -> tuple[base.CaptureSettings, list[Step]]:
    """The settings and message sequence an input stands for; a cut-off tail is dropped."""
    if not data:
        return base.CaptureSettings(), []
    steps: list[Step] = []
    pos, now = 1, 1_000_000
    while pos + 3 <= len(data):
        op = data[pos]
        (length,) = struct.unpack_from(">H", data, pos + 1)
        pos += 3
        hidden = 0
        if op & _TRUNCATED:
            if pos + 4 > len(data):
                break
            (hidden,) = struct.unpack_from(">I", data, pos)
            pos += 4
        chunk = data[pos : pos + length]
        pos += len(chunk)
        start = now + (op >> 3) * 1000
        now = start + 1000 + len(chunk)
        steps.append(Step(base.Message(bool(op & _CLIENT), chunk, len(chunk) + hidden, start, now), bool(op & _FLUSH)))
    return settings_of(data[0]), steps


def encode(flags: int, steps: list[Step]) -> bytes:
    """The input that decodes to `steps` (gaps are not kept: decode spaces messages evenly)."""
    out = bytearray([flags])
    for step in steps:
        message = step.message
        hidden = message.size - len(message.data)
        op = _CLIENT if message.from_client else 0
        op |= (_TRUNCATED if hidden else 0) | (_FLUSH if step.flush_after else 0)
        data = message.data[:0xFFFF]
        out += struct.pack(">BH", op, len(data))
        if hidden:
            out += struct.pack(">I", min(hidden, 0xFFFFFFFF))
        out += data
    return bytes(out)


def state_size(parser: object) -> int | None:
    """Entries the parser holds, if it says (`state_size`, or `pending` for HTTP/1)."""
    for name in ("state_size", "pending"):
        value = getattr(parser, name, None)
        if isinstance(value, int):
            return value
    return None


def check_record(record: object, first_ns: int, last_ns: int) -> None:
    """A record is well-formed: typed fields, times within the messages' span, typed attributes."""
    if not isinstance(record, base.Record):
        raise Violation(f"not a Record: {record!r}")
    if not isinstance(record.protocol, str) or not isinstance(record.name, str) or not record.name:
        raise Violation(f"protocol/name must be non-empty strings: {record!r}")
    if not first_ns <= record.start_ns <= record.end_ns <= last_ns:
        raise Violation(f"times {record.start_ns}..{record.end_ns} reversed or not in {first_ns}..{last_ns}: {record}")
    if record.error is not None and not isinstance(record.error, str):
        raise Violation(f"error must be a string: {record!r}")
    for key, value in record.attributes.items():
        if not isinstance(key, str) or not isinstance(value, _ATTRIBUTE_TYPES):
            raise Violation(f"attribute {key!r}={value!r} has a type OTLP cannot carry")
    for key, value in record.context_headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise Violation(f"context header {key!r}={value!r} is not str -> str")
    for size in (record.request_size, record.response_size):
        if not isinstance(size, int) or size < 0:
            raise Violation(f"sizes must be non-negative ints: {record!r}")


def run(protocol: str, data: bytes) -> list[base.Record]:
    """Feed one input through a fresh parser of `protocol` and its detect(); raise Violation (or
    whatever escapes the parser) on a broken invariant; return the records it produced."""
    entry = spec(protocol)
    settings, steps = decode(data)
    parser = entry.new_parser(settings)
    first_ns = steps[0].message.start_ns if steps else 0
    last_ns = steps[-1].message.end_ns if steps else 0
    records: list[base.Record] = []
    for step in steps:
        entry.detect(step.message.data)
        batch = list(parser.feed(step.message))
        if step.flush_after:
            batch += parser.flush()
        size = state_size(parser)
        if size is not None and size > (limit := STATE_LIMITS[entry.name](entry.module)):
            raise Violation(f"parser holds {size} entries, its limit is {limit}")
        records += batch
    records += parser.flush()
    for record in records:
        check_record(record, first_ns, last_ns)
    return records


def hidden_errors(call: Callable[[], object]) -> list[str]:
    """Exceptions raised inside the parser code during `call()` of a kind a parser's catch-all would
    hide: any but struct.error and the parsers' own exception classes (raised on purpose for malformed
    or cut-off input). Traces Python frames only, so it is for replaying a corpus, not for fuzzing."""
    found: list[str] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "exception":
            error = arg[1]
            own = type(error).__module__.startswith("podspan_agent.protocols")
            if not own and not isinstance(error, struct.error | StopIteration | GeneratorExit):
                found.append(f"{type(error).__name__}({error}) at {frame.f_code.co_filename}:{frame.f_lineno}")
        return local

    def enter(frame: FrameType, event: str, arg: Any) -> Any:
        return local if "podspan_agent/protocols/" in frame.f_code.co_filename else None

    sys.settrace(enter)
    try:
        call()
    finally:
        sys.settrace(None)
    return found
