"""HTTPS through Go's crypto/tls on the real kernel path: a Go server and client (built here from
tests/support/gotls with Debian's Go) in real cgroups, probed by the agent's own discovery (symbols from the
ELF symtab, return probes on RET instructions), talking to OpenSSL peers (curl, Python's ssl), spans at a
real OTLP receiver."""

from __future__ import annotations

import collections.abc
import os
import pathlib
import time

import pytest

from podspan_agent import cgroups, loader, tls, tracer
from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest
from tests.support import bpftool, go_programs

SERVER, CLIENT = conftest.SERVER_KIND, conftest.CLIENT_KIND
Spans = list[otlp_receiver.ReceivedSpan]
Certificate = conftest.Certificate



@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> go_programs.Programs:
    return go_programs.build_for_test(tmp_path_factory.mktemp("gotls-bin"))


@pytest.fixture
def tracker(probes: loader.Probes) -> collections.abc.Iterator[tls.Tracker]:
    found = tls.Tracker(probes)
    yield found
    found.close()


def _follow(tracker: tls.Tracker, *traced_pods: pods.Pod) -> dict[int, list[tls.LibraryState]]:
    """What the agent does on its ticks: look at the traced pods' processes and attach to their TLS."""
    pids = [pid for pod in traced_pods for pid in cgroups.processes(pod.cgroup_dir)]
    tracker.sync(pids)
    return {pid: tracker.libraries(pid) for pid in pids}


def _go_server(pod_runner: pods.PodRunner, binary: pathlib.Path, certificate: Certificate) -> tuple[pods.Pod, int]:
    port = conftest.free_port()
    pod = pod_runner.start(binary.name, [str(binary), "server", str(port), str(certificate[0]), str(certificate[1])],
                           env={"OTEL_SERVICE_NAME": binary.name})
    pods.wait_for_port("127.0.0.1", port)
    return pod, port



def _check_http(span: otlp_receiver.ReceivedSpan, path: str, status: int) -> None:
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == path
    assert span.attributes["http.response.status_code"] == status
    assert span.attributes["url.scheme"] == "https"


def test_go_https_server_behind_python_ssl_frontend(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate, programs: go_programs.Programs,
) -> None:
    backend, backend_port = _go_server(pod_runner, programs.unstripped, certificate)
    frontend, port = conftest.https_app(pod_runner, "go-frontend", certificate, (
        "frontend", "--backend", f"https://127.0.0.1:{backend_port}", "--backend-ca", str(certificate[0])))
    for pod in (frontend, backend):
        traced(pod)  # type: ignore[operator]
    [state] = _follow(tracker, frontend, backend)[backend.pid]
    assert state.library.name.startswith("go1.") and state.library.name.endswith(" (gohttps)")
    assert not state.error and state.describe() == f"{state.library.name}: attached"
    assert set(state.symbols) == {"crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write",
                                  "crypto/tls.(*Conn).serverHandshake", "crypto/tls.(*Conn).clientHandshake"}
    assert state.library.go is not None  # one uprobe at each function's entry and at each of its RETs, no uretprobes
    on_go = {path: n for path, n in bpftool.uprobe_files(os.getpid()).items() if path.endswith("/gohttps")}
    assert list(on_go.values()) == [sum(1 + len(f.returns) for f in state.library.go.functions)]

    assert conftest.https_get(port, "/users/8131", certificate[0]) == 200
    assert conftest.https_get(port, "/missing-go", certificate[0]) == 502  # the Go server said 404
    def missing_spans(spans: Spans) -> dict[int, otlp_receiver.ReceivedSpan]:
        return {s.kind: s for s in spans
                if s.attributes.get("url.path") == "/nope" and s.attributes.get("server.port") == backend_port}

    spans = receiver.wait_for(lambda got: conftest.with_path("/users/8131", 3)(got) and len(missing_spans(got)) == 2,
                              timeout=20)
    ours = [s for s in spans if s.attributes.get("url.path") == "/users/8131"]
    _entry, call, served = conftest.frontend_backend_trace(ours, "go-frontend", "gohttps")  # across the TLS hops
    for span in ours:
        _check_http(span, "/users/8131", 200)
    assert served.resource["process.pid"] == backend.pid and served.attributes["server.port"] == backend_port
    assert served.attributes["http.route"] == "/users/{id}"
    assert call.attributes["tls.protocol.version"] == "1.3"  # from the OpenSSL side
    assert "tls.protocol.version" not in served.attributes  # not read from Go's tls.Conn (yet)
    missing = missing_spans(spans)
    assert set(missing) == {CLIENT, SERVER}
    for span in missing.values():
        _check_http(span, "/nope", 404)
    assert missing[SERVER].parent_span_id == missing[CLIENT].span_id
    assert len([s for s in spans if s.resource.get("process.pid") == backend.pid]) == 2  # ciphertext made none
    # Go's handshake ran inside a probed call: no TLS event, so the process is not reported as unprobed.
    assert tracker.unsupported(agent.table.tls_processes, backend.cgroup_id) == []
    _follow(tracker, frontend)  # the Go server is no longer traced: its probes go
    assert not [path for path in bpftool.uprobe_files(os.getpid()) if path.endswith("/gohttps")]


def test_go_https_client_traced_against_python_ssl(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate, programs: go_programs.Programs, tmp_path: pathlib.Path,
) -> None:
    backend, port = conftest.https_app(pod_runner, "go-backend", certificate, ("backend",))
    urls = [f"https://127.0.0.1:{port}/users/{n}" for n in (501, 502, 503)]  # one keep-alive connection
    client = _go_client(pod_runner, tracker, traced, programs, certificate, certificate[0], tmp_path, backend, urls)
    assert client.process is not None and client.process.wait(timeout=30) == 0

    paths = [f"/users/{n}" for n in (501, 502, 503)]
    spans = receiver.wait_for(lambda got: all(conftest.with_path(path, 2)(got) for path in paths), timeout=20)
    for path in paths:
        ours = {s.kind: s for s in spans if s.attributes.get("url.path") == path}
        assert set(ours) == {CLIENT, SERVER}
        for span in ours.values():
            _check_http(span, path, 200)
        assert ours[CLIENT].resource["process.pid"] == client.pid
        assert ours[CLIENT].attributes["server.port"] == port
        assert ours[SERVER].trace_id == ours[CLIENT].trace_id
        assert ours[SERVER].parent_span_id == ours[CLIENT].span_id


def test_go_client_rejecting_the_certificate_is_an_error_span(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate, programs: go_programs.Programs, tmp_path: pathlib.Path,
) -> None:
    backend, port = conftest.https_app(pod_runner, "go-reject-backend", certificate, ("backend",))
    (tmp_path / "other").mkdir()
    other_ca, _ = servers.self_signed_certificate(tmp_path / "other")  # not the server's certificate
    client = _go_client(pod_runner, tracker, traced, programs, certificate, other_ca, tmp_path, backend,
                        [f"https://127.0.0.1:{port}/users/504"])
    assert client.process is not None and client.process.wait(timeout=30) == 1  # x509: unknown authority

    def handshakes(spans: Spans) -> Spans:
        return [s for s in spans if s.name == "TLS handshake"
                and port in (s.attributes.get("server.port"), s.attributes.get("network.local.port"))]

    found = {s.kind: s for s in handshakes(receiver.wait_for(lambda got: len(handshakes(got)) >= 2, timeout=20))}
    assert set(found) == {SERVER, CLIENT}  # Go's clientHandshake returned an error; OpenSSL's handshake failed
    assert found[CLIENT].resource["process.pid"] == client.pid
    for span in found.values():
        assert span.status_code == 2 and span.attributes["tls.established"] is False  # STATUS_CODE_ERROR


def _go_client(pod_runner: pods.PodRunner, tracker: tls.Tracker, traced: object, programs: go_programs.Programs,
               certificate: Certificate, ca: pathlib.Path, tmp_path: pathlib.Path, backend: pods.Pod,
               urls: list[str]) -> pods.Pod:
    """The Go client, traced from its start, GETting `urls` with `ca` as its only root (`backend` traced)."""
    gate = tmp_path / "gate"
    client = pod_runner.start("go-client", conftest.gated(gate, [str(programs.unstripped), "client", str(ca), *urls]))
    # Another pod runs the same executable: the probes are on the file when the client starts (the gate's
    # shell execs it), as a uprobe fires in every process that maps the file.
    same_image, _ = _go_server(pod_runner, programs.unstripped, certificate)
    for pod in (backend, client, same_image):
        traced(pod)  # type: ignore[operator]
    _follow(tracker, backend, client, same_image)
    assert tracker.libraries(client.pid) == []  # still the shell
    gate.touch()
    return client


def test_stripped_go_binary_is_reported_not_probed(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    probes: loader.Probes, tracker: tls.Tracker, certificate: Certificate, programs: go_programs.Programs,
) -> None:
    server, port = _go_server(pod_runner, programs.stripped, certificate)
    traced(server)  # type: ignore[operator]
    [state] = _follow(tracker, server)[server.pid]
    assert state.library.name.startswith("go1.") and state.library.name.endswith(" (gohttps-stripped)")
    assert state.describe() == f"{state.library.name}: not attached (stripped: no symbols to probe)"
    records = agent.table.stats.records
    for _ in range(2):
        assert conftest.https_get(port, "/go-items/9", certificate[0]) == 200
    deadline = time.monotonic() + 10
    while not tracker.unsupported(agent.table.tls_processes, server.cgroup_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.unsupported(agent.table.tls_processes, server.cgroup_id) == [server.pid]
    assert agent.table.stats.records == records  # no span, and no parser fed ciphertext
    assert not [s for s in receiver.spans() if s.attributes.get("server.port") == port]
    assert server.process is not None and server.process.poll() is None  # not crashed
