"""Which protocol parsers exist, in detection order, and how to pick one for a connection."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType

from podspan_agent.protocols import base, dns, http1, http2, kafka, mongodb, mysql, postgresql, redis


@dataclasses.dataclass(frozen=True, slots=True)
class ProtocolSpec:
    name: str  # the name used in TraceProfile spec.protocols
    module: ModuleType  # has detect(data) -> bool and Parser(settings)
    also: tuple[str, ...] = ()  # further spec.protocols names this parser serves
    datagram: bool = False  # also spoken over UDP, one message per datagram

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.also)

    def detect(self, data: bytes) -> bool:
        return bool(self.module.detect(data))

    def new_parser(self, settings: base.CaptureSettings) -> base.Parser:
        parser: base.Parser = self.module.Parser(settings)
        return parser


# Order matters: cheaper and more specific detectors first. MongoDB (an exact opcode at bytes
# 12-15) goes before PostgreSQL and MySQL, whose mid-stream detectors also accept a MongoDB
# message whose little-endian length happens to start with, e.g., b"F" (326 bytes) or b"X".
ALL: tuple[ProtocolSpec, ...] = (
    ProtocolSpec("http", http1),
    ProtocolSpec("redis", redis),
    ProtocolSpec("mongodb", mongodb),
    ProtocolSpec("postgresql", postgresql),
    ProtocolSpec("mysql", mysql),
    ProtocolSpec("http2", http2, also=("grpc",)),
    ProtocolSpec("kafka", kafka),
    ProtocolSpec("dns", dns, datagram=True),
)

NAMES: tuple[str, ...] = tuple(name for spec in ALL for name in spec.names)


# (a connection's first client bytes, whether it is a UDP flow) -> (protocol, parser) or None
Detector = Callable[[bytes, bool], tuple[str, base.Parser] | None]


def detector(enabled: frozenset[str] | None, settings: base.CaptureSettings) -> Detector:
    """A function that picks and builds the parser for a connection's first client bytes."""
    specs = tuple(spec for spec in ALL if enabled is None or not enabled.isdisjoint(spec.names))

    def detect(data: bytes, datagram: bool) -> tuple[str, base.Parser] | None:
        for spec in specs:
            if (spec.datagram or not datagram) and spec.detect(data):
                return spec.name, spec.new_parser(settings)
        return None

    return detect
