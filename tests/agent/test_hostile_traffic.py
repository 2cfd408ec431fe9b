"""Hostile traffic through the real kernel path: random bytes, oversized and truncated heads, slowloris
and 10k connections opened and dropped against a traced nginx, while a second traced pod keeps being
traced correctly; the agent survives with its connection table and memory bounded (issue 12)."""

from __future__ import annotations

import os
import pathlib
import random
import socket
import threading
import time

import psutil

from podspan_agent import tracer
from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest, test_trace_http


def _send_and_drop(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(payload)
            conn.settimeout(0.2)
            conn.recv(4096)
        except OSError:
            pass  # the server may close or reset first: that is part of the traffic


def _slowloris(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            if stop.is_set():
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return
            stop.wait(0.01)


def test_hostile_traffic_costs_the_victim_nothing_but_its_own_spans(
        agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
        tmp_path: pathlib.Path) -> None:
    victim_port = conftest.free_port()
    conf = servers.nginx_config(tmp_path, "127.0.0.1", victim_port)
    victim = pod_runner.start("victim", [conftest.nginx_binary(), "-c", str(conf), "-p", str(tmp_path)])
    frontend, backend, healthy_port = test_trace_http._start_app(pod_runner)
    pods.wait_for_port("127.0.0.1", victim_port)
    for pod in (victim, frontend, backend):
        traced(pod)  # type: ignore[operator]
    me = psutil.Process(os.getpid())  # the session's tracer runs in this process
    rss_before, errors_before = me.memory_info().rss, agent.table.stats.event_errors
    rng = random.Random(9)

    stop = threading.Event()
    slow = [threading.Thread(target=_slowloris, args=(victim_port, stop)) for _ in range(50)]
    for thread in slow:
        thread.start()
    for _ in range(300):  # random bytes, some of them looking like the start of a request
        prefix = rng.choice([b"", b"GET /", b"HTTP/1.1 200 OK\r\n", b"PRI * HTTP/2.0\r\n", b"\x16\x03\x01"])
        _send_and_drop(victim_port, prefix + rng.randbytes(rng.randint(1, 4096)))
    for _ in range(30):  # oversized head that never ends, and requests cut mid-line
        _send_and_drop(victim_port, b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 65536)
        _send_and_drop(victim_port, b"GET /users/1 HT")
    for i in range(10_000):  # connections opened and dropped: fd numbers reused at once
        socket.create_connection(("127.0.0.1", victim_port), timeout=5).close()
        if i % 1000 == 0:  # the healthy pod is traced meanwhile
            assert test_trace_http._get(healthy_port, f"/users/{7000 + i // 1000}") == 200
    stop.set()
    for thread in slow:
        thread.join()

    # Every healthy request became its whole trace: frontend server and client spans, backend server span.
    for i in range(10):
        spans = receiver.wait_for(conftest.with_path(f"/users/{7000 + i}", 3), timeout=30)
        ours = [s for s in spans if s.attributes.get("url.path") == f"/users/{7000 + i}"]
        assert {s.attributes.get("http.response.status_code") for s in ours} == {200}
        assert len({s.trace_id for s in ours}) == 1
    # The victim is still served, and its real requests are still traced.
    assert test_trace_http._get(victim_port, "/api/after-the-storm") == 200
    receiver.wait_for(conftest.with_path("/api/after-the-storm", 1), timeout=30)

    deadline = time.monotonic() + 30
    while len(agent.table) > 50 and time.monotonic() < deadline:  # closed connections leave the table
        time.sleep(0.2)
    assert len(agent.table) <= 50
    assert agent.table.stats.event_errors == errors_before  # no handler raised on any of it
    assert me.memory_info().rss - rss_before < 150 * 2**20
