"""Throughput of the HTTP/1 parser on typical small keep-alive GETs: prints request+response records/s.

Run: .venv/bin/python bench/http1_parse_bench.py [pairs]
"""

from __future__ import annotations

import gc
import sys
import time

from podspan_agent.protocols import base, http1

REQUEST = (
    b"GET /api/v1/users/%d?page=2 HTTP/1.1\r\nHost: users.default.svc:8080\r\n"
    b"User-Agent: Go-http-client/1.1\r\nAccept: application/json\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Accept-Encoding: gzip\r\n\r\n"
)
ROUNDS = 5
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Length: 27\r\n\r\n{\"id\": 42, \"name\": \"alice\"}"
)


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    # Distinct ids so route templating is not flattered by a repeated path.
    messages = []
    for index in range(pairs):
        request = REQUEST % (index % 100_000)
        messages.append((base.Message(True, request, len(request), index, index + 1),
                         base.Message(False, RESPONSE, len(RESPONSE), index + 2, index + 3)))
    gc.freeze()  # the pre-built messages are the bench's heap, not the parser's: keep GC off them
    for headers in (False, True):
        # Best of several rounds of CPU time: the least disturbed by other load on the machine.
        rates = sorted(_round(messages, base.CaptureSettings(headers=headers)) for _ in range(ROUNDS))
        print(f"headers={headers!s:5}  best {rates[-1]:>9,.0f}  median {rates[ROUNDS // 2]:>9,.0f} records/s"
              f"  ({1e6 / rates[-1]:.2f} us/pair)")


def _round(messages: list[tuple[base.Message, base.Message]], settings: base.CaptureSettings) -> float:
    parser = http1.Parser(settings)
    records = 0
    started = time.process_time()
    for request, response in messages:
        parser.feed(request)
        records += len(parser.feed(response))
    elapsed = time.process_time() - started
    assert records == len(messages), records
    return records / elapsed

if __name__ == "__main__":
    main()
