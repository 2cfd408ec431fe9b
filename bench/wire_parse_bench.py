"""Parse throughput (messages/s on one core) of the HTTP/2+gRPC, Kafka, MongoDB and DNS parsers.

Replays the real captures under tests/unit/protocols/fixtures through fresh parsers until a
time budget is spent. Run: .venv/bin/python bench/wire_parse_bench.py [seconds per parser]
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from podspan_agent.protocols import base, dns, http2, kafka, mongodb
from tests.unit.protocols.fixtures import capture_db

CAPTURE_SIZE = 4096
CASES: dict[str, tuple[Callable[[], base.Parser], list[tuple[str, str]]]] = {
    "http2 (curl/nginx)": (http2.Parser, [("http2", "curl_nginx")]),
    "grpc (grpcio)": (http2.Parser, [("grpc", "echo_session")]),
    "kafka (kafka-python)": (kafka.Parser, [("kafka", "client_latest"), ("kafka", "legacy_versions")]),
    "mongodb (pymongo)": (mongodb.Parser, [("mongodb", "crud_session")]),
    "dns udp (dnspython)": (lambda: dns.Parser(transport="udp"), [("dns", "udp_lookups")]),
}


def measure(
    factory: Callable[[], base.Parser], connections: list[list[base.Message]], budget: float
) -> tuple[float, float]:
    """(messages/s, records/s) replaying every connection through a new parser until `budget` seconds."""
    messages = records = 0
    started = time.perf_counter()
    while time.perf_counter() - started < budget:
        for connection in connections:
            parser = factory()
            for message in connection:
                records += len(parser.feed(message))
            records += len(parser.flush())
            messages += len(connection)
    elapsed = time.perf_counter() - started
    return messages / elapsed, records / elapsed


def main() -> None:
    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"capture size {CAPTURE_SIZE} B, {budget:.1f} s per parser, one core")
    for label, (factory, fixtures) in CASES.items():
        connections = [
            c for protocol, name in fixtures for c in capture_db.load(protocol, name, CAPTURE_SIZE)
        ]
        per_second, records_per_second = measure(factory, connections, budget)
        print(f"{label:24} {per_second:12,.0f} messages/s {records_per_second:12,.0f} records/s")


if __name__ == "__main__":
    main()
