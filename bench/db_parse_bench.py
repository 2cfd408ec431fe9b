"""Parse throughput of the database parsers (messages/s on one core) over the real fixture captures.

    .venv/bin/python bench/db_parse_bench.py [--seconds 2] [--capture-size 512]
"""

from __future__ import annotations

import argparse
import time

from podspan_agent.protocols import base, mysql, postgresql, redis
from tests.unit.protocols.fixtures import capture_db

CASES = {
    "redis": (redis, ["resp2_session", "pipeline"]),
    "postgresql": (postgresql, ["simple_session", "pgbench_prepared"]),
    "mysql": (mysql, ["cli_session", "prepared_session"]),
}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--seconds", type=float, default=2.0)
    args.add_argument("--capture-size", type=int, default=512)
    opts = args.parse_args()
    for protocol, (module, names) in CASES.items():
        connections = [c for n in names for c in capture_db.load(protocol, n, opts.capture_size)]
        messages = records = 0
        deadline = time.perf_counter() + opts.seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            for connection in connections:
                parser = module.Parser(base.CaptureSettings())
                for message in connection:
                    records += len(parser.feed(message))
                messages += len(connection)
        elapsed = time.perf_counter() - started
        print(f"{protocol:11s} {messages / elapsed:>10,.0f} messages/s  {records / elapsed:>10,.0f} records/s"
              f"  (capture size {opts.capture_size})")


if __name__ == "__main__":
    main()
