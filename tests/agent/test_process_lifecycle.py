"""Connections across a process's life, through the real kernel path: a process killed without close()
ends its connections (its last exchange is reported, the kernel keeps no entry), and a socket accepted
before a fork is traced in the child that serves it, until that child execs. Real nginx and CPython
processes in traced cgroup pods; spans as a real OTLP receiver got them."""

from __future__ import annotations

import collections.abc
import os
import pathlib
import signal
import socket
import sys

import pytest

from podspan_agent import loader, tracer
from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
STATUS_ERROR = 2

Spans = list[otlp_receiver.ReceivedSpan]
Select = collections.abc.Callable[[pods.Pod], None]


def _of_process(pid: int) -> collections.abc.Callable[[Spans], Spans]:
    return lambda spans: [s for s in spans if s.resource.get("process.pid") == pid]


# Two requests answered on one keep-alive connection, then one nginx passes to an upstream that never
# answers; once that request is out, the client opens the FIFO argv[2] and waits for its response.
_HELD_CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=120)
for path in ("/api/1", "/api/2"):
    conn.request("GET", path)
    conn.getresponse().read()
conn.request("GET", "/upstream/held")
open(sys.argv[2], "wb").close()
conn.getresponse()
"""


def test_killed_client_ends_its_connection(
    agent: tracer.Tracer, probes: loader.Probes, receiver: otlp_receiver.OtlpReceiver,
    pod_runner: pods.PodRunner, traced: Select, tmp_path: pathlib.Path,
) -> None:
    if "PODSPAN_HAVE_EXIT" not in probes.features:
        pytest.skip("this kernel has no sched_process_exit tracepoint")
    # A listener nobody accepts on: nginx connects, passes the request on and waits for an answer.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = conftest.free_port()
        conf = servers.nginx_config(tmp_path, "127.0.0.1", port, upstream=silent.getsockname()[1])
        pod_runner.start("nginx", [conftest.nginx_binary(), "-c", str(conf), "-p", str(tmp_path)])
        pods.wait_for_port("127.0.0.1", port)
        gate, fifo = tmp_path / "go", tmp_path / "held"
        os.mkfifo(fifo)
        client = pod_runner.start("held-client",
                                  conftest.gated(gate, [sys.executable, "-c", _HELD_CLIENT, str(port), str(fifo)]))
        traced(client)
        gate.touch()
        with open(fifo, "rb") as held:  # returns once the client has sent its last request
            held.read()
        os.kill(client.pid, signal.SIGKILL)  # no close(): the kernel closes the socket on its own
        assert client.process is not None
        client.process.wait(timeout=10)
        ours = _of_process(client.pid)
        spans = ours(receiver.wait_for(lambda spans: len(ours(spans)) >= 3, timeout=20))

    by_path = {s.attributes.get("url.path"): s for s in spans}
    assert sorted(by_path) == ["/api/1", "/api/2", "/upstream/held"]
    assert {s.kind for s in spans} == {CLIENT}
    assert [by_path[path].attributes["http.response.status_code"] for path in ("/api/1", "/api/2")] == [200, 200]
    # Only the end of the connection gives up the request still waiting, and only the exit ends it.
    held_span = by_path["/upstream/held"]
    assert "http.response.status_code" not in held_span.attributes
    assert held_span.status_code == STATUS_ERROR and held_span.status_message == "no response"
    # The exit was handled (its spans are out): nothing of the process is left, in the kernel or here.
    assert probes.connection_count(client.pid) == 0
    assert not [c for c in agent.table.connections() if c.tgid == client.pid]


# Listens (then opens the FIFO argv[2]), accepts one connection and forks; the parent closes its
# copy, the child answers one request on it and execs a program that opens the FIFO argv[3]. The
# socket is close-on-exec, as Python makes every socket: the exec closes it without close(). The
# spare fds (close-on-exec too) put the socket above any fd the new program opens and closes itself,
# which would end the connection's kernel entry with no help from the exec.
_FORKING_SERVER = """
import os, socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
spare = [os.dup(listener.fileno()) for _ in range(40)]
open(sys.argv[2], "wb").close()
conn, _ = listener.accept()
if os.fork() == 0:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    os.execv(sys.executable, [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'wb').close(); "
                              "time.sleep(600)", sys.argv[3]])
conn.close()
os.wait()
"""


def test_forked_child_serves_the_accepted_socket_until_it_execs(
    agent: tracer.Tracer, probes: loader.Probes, receiver: otlp_receiver.OtlpReceiver,
    pod_runner: pods.PodRunner, traced: Select, tmp_path: pathlib.Path,
) -> None:
    if "PODSPAN_HAVE_FORK" not in probes.features:
        pytest.skip("this kernel lacks the fork/exec tracepoints the hand-over needs")
    port = conftest.free_port()
    gate, listening, executed = tmp_path / "go", tmp_path / "listening", tmp_path / "executed"
    os.mkfifo(listening)
    os.mkfifo(executed)
    argv = [sys.executable, "-c", _FORKING_SERVER, str(port), str(listening), str(executed)]
    server = pod_runner.start("forking-server", conftest.gated(gate, argv))
    traced(server)
    gate.touch()
    with open(listening, "rb") as ready:  # returns once the server listens
        ready.read()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /forked/1 HTTP/1.1\r\nHost: test\r\n\r\n")
        assert conn.recv(4096).endswith(b"\r\n\r\nok")
    with open(executed, "rb") as child_ran:  # returns once the child runs its new program
        child_ran.read()

    def served(spans: Spans) -> Spans:
        return [s for s in spans if s.attributes.get("url.path") == "/forked/1"]

    (span,) = served(receiver.wait_for(lambda spans: bool(served(spans)), timeout=20))
    child = span.resource["process.pid"]
    assert span.kind == SERVER and child != server.pid
    assert span.attributes["http.response.status_code"] == 200
    # The peer came with the accept, the local address from the parent's listening socket.
    assert span.attributes["client.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == port
    # The parent closed its copy; the exec ended the child's, whose fd a file may now reuse.
    assert probes.connection_count(server.pid) == 0
    assert probes.connection_count(child) == 0
