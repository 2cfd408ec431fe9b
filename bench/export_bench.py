"""Export throughput: spans/s the OTLP exporter encodes, and encodes + sends to a local receiver, per core.

The receiver runs in a separate process (podspan_demo.otlp_receiver) so the CPU time measured
here (all threads of this process, gRPC's included) is the exporter's alone.
Run: `.venv/bin/python bench/export_bench.py [--spans N]`.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

from podspan_agent.export import otlp, otlp_settings
from podspan_agent.protocols import base
from podspan_agent.spans import model

ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_records(count: int) -> list[model.SpanRecord]:
    """HTTP server spans shaped like the agent's: 8 attributes, 16 pods, a few routes."""
    resources: list[dict[str, base.AttributeValue]] = [
        {
            "service.name": f"svc-{pod % 4}",
            "k8s.namespace.name": "shop",
            "k8s.pod.name": f"svc-{pod % 4}-{pod}",
            "k8s.pod.uid": f"00000000-0000-0000-0000-{pod:012d}",
            "container.id": f"{pod:064x}",
            "process.pid": 1000 + pod,
        }
        for pod in range(16)
    ]
    start = time.time_ns()
    return [
        model.SpanRecord(
            trace_id=(0x5EED << 100) + i,
            span_id=0x1000 + i,
            parent_span_id=0x2000 + i if i % 2 else None,
            name="GET /api/items/{id}",
            kind=model.SpanKind.SERVER,
            start_ns=start + i * 1000,
            end_ns=start + i * 1000 + 250_000,
            attributes={
                "http.request.method": "GET",
                "url.path": f"/api/items/{i % 1000}",
                "http.route": "/api/items/{id}",
                "http.response.status_code": 200 if i % 50 else 500,
                "server.address": "10.0.0.1",
                "server.port": 8080,
                "network.peer.address": f"10.0.1.{i % 200}",
                "network.protocol.version": "1.1",
            },
            resource=resources[i % len(resources)],
            protocol="http",
            error=None if i % 50 else "500 Internal Server Error",
        )
        for i in range(count)
    ]


def bench_encode(records: list[model.SpanRecord], batch_size: int) -> float:
    base = otlp_settings.base_resource({})
    started = time.process_time()
    for offset in range(0, len(records), batch_size):
        otlp.encode_request(records[offset : offset + batch_size], base)
    return len(records) / (time.process_time() - started)


def bench_send(records: list[model.SpanRecord], protocol: str, endpoint: str) -> tuple[float, float]:
    exporter = otlp.OtlpExporter(
        endpoint, protocol=protocol, max_queue_size=len(records), schedule_delay=0.05, environ={}
    )
    cpu, wall = time.process_time(), time.perf_counter()
    for record in records:
        exporter.export(record)
    exporter.shutdown(timeout=120)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = exporter.stats()
    if stats.spans_exported != len(records):
        raise SystemExit(f"{protocol}: only {stats.spans_exported} of {len(records)} spans exported: {stats}")
    return len(records) / cpu, len(records) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    records = make_records(args.spans)

    print(f"{'encode only:':<22}{bench_encode(records, args.batch):>10,.0f} spans/s per core")
    receiver = subprocess.Popen(
        [sys.executable, "-m", "podspan_demo.otlp_receiver"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        ports = dict(item.split("=") for item in receiver.stdout.readline().split())
        for protocol, endpoint in (
            (otlp_settings.GRPC, f"http://127.0.0.1:{ports['grpc']}"),
            (otlp_settings.HTTP_PROTOBUF, f"http://127.0.0.1:{ports['http']}/v1/traces"),
        ):
            per_core, wall = bench_send(records, protocol, endpoint)
            label = f"{protocol} + gzip:"
            print(f"{label:<22}{per_core:>10,.0f} spans/s per core  ({wall:,.0f} spans/s wall clock)")
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)


if __name__ == "__main__":
    main()
