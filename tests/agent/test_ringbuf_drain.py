"""The native ring-buffer consumer on the real capture program: every event the kernel wrote (its `events`
counter) comes out of `Probes.poll()` decoded, in batches, with the fields the traffic implies. Its own
`Probes` (the session's feeds the tracer thread), a real nginx in a traced cgroup pod; the client is
this process, which is not traced."""

from __future__ import annotations

import mmap
import pathlib
import socket
import time

import pytest

from podspan_agent import _ringbuf, bpf_events, kernel_headers, loader, sockaddr
from podspan_demo import pods, servers
from tests.agent import conftest

pytestmark = pytest.mark.bpf

CONNECTIONS, REQUESTS = 4, 100  # 808 events at least: more than three batches
REQUEST = b"GET /api/ringbuf HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _exchange(conn: socket.socket) -> bytes:
    conn.sendall(REQUEST)
    response = b""
    while b"\r\n\r\n" not in response or not response.endswith(b'{"ok":true}'):
        chunk = conn.recv(4096)
        assert chunk, f"connection closed mid-response: {response!r}"
        response += chunk
    return response


def _settled(probes: loader.Probes, timeout: float = 10.0) -> int:
    """The kernel's event count once it has stopped moving (nginx closes after our FIN, on its own time)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = probes.stats()["events"]
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > 0.5:
            return count
        time.sleep(0.05)
    raise AssertionError(f"kernel event count still moving after {timeout}s ({last})")


def test_every_event_arrives_decoded_in_batches(pod_runner: pods.PodRunner, tmp_path: pathlib.Path) -> None:
    probes = loader.Probes(loader.ProbeOptions(), kernel_headers.resolve())
    try:
        batches: list[list[loader.EventRecord]] = []
        probes.open_events(batches.append)
        port = conftest.free_port()
        conf = servers.nginx_config(tmp_path, "127.0.0.1", port)
        nginx = pod_runner.start("nginx", [conftest.nginx_binary(), "-c", str(conf), "-p", str(tmp_path)])
        pods.wait_for_port("127.0.0.1", port)
        probes.trace_cgroup(nginx.cgroup_id)

        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CONNECTIONS)]
        client_ports = {c.getsockname()[1] for c in clients}
        for _ in range(REQUESTS):
            for client in clients:
                assert _exchange(client).startswith(b"HTTP/1.1 200")
        for client in clients:
            client.close()
        written = _settled(probes)
        assert probes.stats()["events_lost"] == 0

        probes.poll(0)  # everything is committed by now: one poll takes it all
        records = [record for batch in batches for record in batch]
        assert len(records) == written >= CONNECTIONS * (2 * REQUESTS + 2)
        assert all(0 < len(batch) <= loader._DRAIN_BATCH for batch in batches)
        assert all(len(batch) == loader._DRAIN_BATCH for batch in batches[:-1])  # a short batch ends a poll
        probes.poll(0)
        assert sum(map(len, batches)) == written  # nothing more, nothing twice

        assert not [r for r in records if isinstance(r, _ringbuf.Malformed)]
        every_open = [r for r in records if isinstance(r, _ringbuf.OpenEvent)]
        # nginx may accept wait_for_port's connection only after tracing began: the one other allowed.
        opens = [r for r in every_open if sockaddr.decode(r.peer).port in client_ports]  # type: ignore[union-attr]
        assert len(every_open) - len(opens) <= 1
        conn_ids = {r.conn_id for r in opens}
        closes = [r for r in records if r.kind == _ringbuf.CLOSE and r.conn_id in conn_ids]
        data = [r for r in records if isinstance(r, _ringbuf.Event) and r.kind == _ringbuf.DATA
                and r.conn_id in conn_ids]
        assert len(opens) == len(closes) == CONNECTIONS
        assert {r.conn_id for r in closes} == {r.conn_id for r in data} == conn_ids
        for opened in opens:
            assert opened.role == bpf_events.Role.SERVER and opened.listen_tgid == opened.tgid
            peer = sockaddr.decode(opened.peer)
            assert peer is not None and peer.address == "127.0.0.1"
        assert {sockaddr.decode(r.peer).port for r in opens} == client_ports  # type: ignore[union-attr]

        requests = [r for r in data if r.direction == bpf_events.Direction.INGRESS]
        responses = [r for r in data if r.direction == bpf_events.Direction.EGRESS]
        assert len(requests) == CONNECTIONS * REQUESTS
        assert all(r.data == REQUEST and r.chunk_bytes == len(REQUEST) for r in requests)
        assert all(r.data.startswith(b"HTTP/1.1 200") for r in responses)
        # A response's event carries the summary of the request run it ends.
        for response in responses:
            assert response.prev.direction == bpf_events.Direction.INGRESS
            assert response.prev.bytes == len(REQUEST) and response.prev.chunks >= 1
            assert response.prev.start_ns <= response.prev.end_ns <= response.ts_ns
    finally:
        probes.close()


def test_ring_buffer_refuses_other_maps(probes: loader.Probes) -> None:
    with pytest.raises(ValueError, match="not a ring buffer"):
        _ringbuf.RingBuffer(probes._bpf[b"conns"].map_fd)  # a hash map
    # A second mapping of the session's ring (the tracer thread consumes it): drain(0) writes nothing.
    ring = _ringbuf.RingBuffer(probes._bpf[b"events"].map_fd)
    assert ring.size == probes.options.ringbuf_pages * mmap.PAGESIZE
    with ring:
        assert ring.drain(0) == []
    with pytest.raises(ValueError, match="closed"):
        ring.drain(1)
    ring.close()  # again: nothing to do
