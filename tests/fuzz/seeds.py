"""Seed inputs for the parser fuzzer, from the recorded protocol fixtures (tests/unit/protocols/fixtures).

    .venv/bin/python -m tests.fuzz.seeds OUTDIR    # writes OUTDIR/<protocol>/<fixture>-<n>-<flags>

Each recorded connection becomes two inputs, default settings and every capture option on, at the
agent's default capture size, so the fuzzer starts from real sessions rather than random bytes.
"""

from __future__ import annotations

import pathlib
import sys

from podspan_agent.protocols import base
from tests.fuzz import scenario
from tests.unit.protocols.fixtures import capture_db, capture_http1

CAPTURE_SIZE = 512  # the agent's default --capture-size
MAX_MESSAGES = 24  # the start of a session: handshakes and the first exchanges
FLAG_SETS = (0b0010, 0b1111)  # CaptureSettings defaults (query on); everything on
FIXTURES = {  # registry protocol -> (fixture directory, fixture names)
    "redis": ("redis", ("pipeline", "resp2_session", "resp3_session", "resp3_types")),
    "mongodb": ("mongodb", ("crud_session",)),
    "postgresql": ("postgresql", ("pgbench_extended", "pgbench_prepared", "simple_session", "ssl_refused")),
    "mysql": ("mysql", ("cli_session", "prepared_session")),
    "kafka": ("kafka", ("client_latest", "legacy_versions")),
    "dns": ("dns", ("tcp_lookups", "udp_lookups")),
}
HTTP2_FIXTURES = (("http2", "curl_nginx"), ("grpc", "echo_session"))


def _captured(from_client: bool, data: bytes, index: int) -> base.Message:
    return base.Message(from_client, data[:CAPTURE_SIZE], len(data), index, index)


def connections(protocol: str) -> dict[str, list[list[base.Message]]]:
    """Recorded connections of `protocol` by fixture name, as the default capture size delivers them."""
    if protocol == "http":
        return {name: [[_captured(side, data, i) for i, (side, data) in enumerate(capture_http1.load(name))]]
                for name in capture_http1.names()}
    sources = HTTP2_FIXTURES if protocol == "http2" else [(FIXTURES[protocol][0], n) for n in FIXTURES[protocol][1]]
    return {name: capture_db.load(directory, name, CAPTURE_SIZE) for directory, name in sources}


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = pathlib.Path(sys.argv[1])
    for protocol in scenario.STATE_LIMITS:
        target = out / protocol
        target.mkdir(parents=True, exist_ok=True)
        for name, conns in connections(protocol).items():
            for index, messages in enumerate(conns):
                steps = [scenario.Step(message, False) for message in messages[:MAX_MESSAGES]]
                for flags in FLAG_SETS:
                    (target / f"{name}-{index}-{flags:x}").write_bytes(scenario.encode(flags, steps))


if __name__ == "__main__":
    main()
