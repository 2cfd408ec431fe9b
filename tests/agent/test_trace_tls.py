"""HTTPS through the real kernel path: OpenSSL (Debian's libssl.so.3) in real servers and clients in real
cgroups, the TLS probes attached by the agent's own discovery, spans at a real OTLP receiver."""

from __future__ import annotations

import collections.abc
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import time

import pytest

from podspan_agent import cgroups, loader, tls, tracer
from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest
from tests.support import bpftool, db_servers

SERVER, CLIENT = conftest.SERVER_KIND, conftest.CLIENT_KIND
Spans = list[otlp_receiver.ReceivedSpan]
Certificate = conftest.Certificate



@pytest.fixture
def tracker(probes: loader.Probes) -> collections.abc.Iterator[tls.Tracker]:
    found = tls.Tracker(probes)
    yield found
    found.close()


def _follow(tracker: tls.Tracker, *traced_pods: pods.Pod) -> list[tls.LibraryState]:
    """What the agent does on its ticks: look at the traced pods' processes and attach to their OpenSSL."""
    pids = [pid for pod in traced_pods for pid in cgroups.processes(pod.cgroup_dir)]
    tracker.sync(pids)
    return [state for pid in pids for state in tracker.libraries(pid)]



def _https_nginx(pod_runner: pods.PodRunner, name: str, certificate: Certificate, root: pathlib.Path,
                 http2: bool = False) -> tuple[pods.Pod, int]:
    port = conftest.free_port()
    conf = servers.nginx_config(root, "127.0.0.1", port, tls=certificate, http2=http2)
    pod = pod_runner.start(name, [conftest.nginx_binary(), "-c", str(conf), "-p", str(root)])
    pods.wait_for_port("127.0.0.1", port)
    return pod, port


def test_https_frontend_backend_trace(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate,
) -> None:
    backend, backend_port = conftest.https_app(pod_runner, "tls-backend", certificate, ("backend",))
    frontend, port = conftest.https_app(pod_runner, "tls-frontend", certificate, (
        "frontend", "--backend", f"https://127.0.0.1:{backend_port}", "--backend-ca", str(certificate[0])))
    traced(frontend)  # type: ignore[operator]
    traced(backend)  # type: ignore[operator]
    libraries = _follow(tracker, frontend, backend)
    assert libraries and all(not state.error for state in libraries)
    assert {state.library.name for state in libraries} == {f"openssl-{ssl.OPENSSL_VERSION.split()[1]} (libssl.so.3)"}
    assert set(libraries[0].symbols) == {"SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_do_handshake"}

    assert conftest.https_get(port, "/users/4242", certificate[0]) == 200
    spans = receiver.wait_for(conftest.with_path("/users/4242", 3), timeout=20)
    ours = [s for s in spans if s.attributes.get("url.path") == "/users/4242"]
    entry, call, _ = conftest.frontend_backend_trace(ours, "tls-frontend", "tls-backend")  # across both TLS hops
    for span in ours:
        assert span.name == "GET /users/{id}"
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["url.scheme"] == "https"
        assert span.attributes["tls.protocol.version"] == "1.3"  # Python's ssl defaults to TLS 1.3
        assert span.attributes["tls.protocol.name"] == "tls"
    assert entry.attributes["server.port"] == port
    assert call.attributes["server.port"] == backend_port
    assert len(ours) == 3  # one span per hop: the ciphertext of the same connections made none


def test_curl_against_nginx_and_python_https(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate, tmp_path: pathlib.Path,
) -> None:
    nginx, nginx_port = _https_nginx(pod_runner, "tls-nginx", certificate, tmp_path)
    python_server, python_port = conftest.https_app(pod_runner, "tls-python", certificate, ("backend",))
    gate = tmp_path / "gate"
    urls = [f"https://127.0.0.1:{nginx_port}/api/items/7", f"https://127.0.0.1:{nginx_port}/nope-tls-404",
            f"https://127.0.0.1:{python_port}/users/77"]
    curl = pod_runner.start("tls-curl", conftest.gated(gate, [
        "curl", "-sS", "--cacert", str(certificate[0]), "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
        *urls]))
    for pod in (nginx, python_server, curl):
        traced(pod)  # type: ignore[operator]
    # curl is still the gate's shell: it maps the same libssl when it starts, already probed by then.
    assert {state.library.path for state in _follow(tracker, nginx, python_server, curl)} == {
        "/usr/lib/x86_64-linux-gnu/libssl.so.3"}
    gate.touch()
    assert curl.process is not None and curl.process.wait(timeout=30) == 0

    spans = receiver.wait_for(lambda found: (conftest.with_path("/users/77", 2)(found)
                                             and conftest.with_path("/nope-tls-404", 2)(found)), timeout=20)
    nginx_spans = {(s.attributes["url.path"], s.kind): s for s in spans
                   if s.attributes.get("server.port") == nginx_port}
    assert set(nginx_spans) == {(path, kind) for path in ("/api/items/7", "/nope-tls-404") for kind in (SERVER, CLIENT)}
    assert nginx_spans[("/api/items/7", SERVER)].attributes["http.response.status_code"] == 200
    assert nginx_spans[("/api/items/7", SERVER)].attributes["http.route"] == "/api/items/{id}"
    assert nginx_spans[("/nope-tls-404", SERVER)].attributes["http.response.status_code"] == 404
    assert nginx_spans[("/nope-tls-404", CLIENT)].attributes["http.response.status_code"] == 404
    python_spans = [s for s in spans if s.attributes.get("url.path") == "/users/77"]
    assert {s.kind for s in python_spans} == {SERVER, CLIENT}
    for span in [*nginx_spans.values(), *python_spans]:
        assert span.attributes["url.scheme"] == "https"
        # nginx 1.22 offers TLS 1.3 only when configured to; Python's ssl does by default.
        assert span.attributes["tls.protocol.version"] == ("1.3" if span in python_spans else "1.2")
        assert span.attributes["http.request.method"] == "GET"
        pid = curl.pid if span.kind == CLIENT else (python_server.pid if span in python_spans else None)
        if pid is not None:
            assert span.resource["process.pid"] == pid
    # curl's client span and the server's span of one request are one trace, parent and child.
    for client, server in ((nginx_spans[("/api/items/7", CLIENT)], nginx_spans[("/api/items/7", SERVER)]),
                           tuple(sorted(python_spans, key=lambda s: -s.kind))):
        assert server.trace_id == client.trace_id and server.parent_span_id == client.span_id


def test_without_tls_probes_ciphertext_yields_nothing(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    probes: loader.Probes, certificate: Certificate, tmp_path: pathlib.Path,
) -> None:
    nginx, port = _https_nginx(pod_runner, "tls-off", certificate, tmp_path)
    traced(nginx)  # type: ignore[operator]  # no tls.Tracker: capture.tls switched off
    handshakes, records = agent.table.stats.tls_handshakes, agent.table.stats.records
    undetected, undecrypted = agent.table.stats.undetected, agent.table.stats.tls_undecrypted
    ciphertext = probes.stats()["tls_ciphertext"]
    for _ in range(3):
        assert conftest.https_get(port, "/api/items/9", certificate[0]) == 200
    # The connections are closed: their CLOSE events follow the TLS ones, so once the counters moved the
    # agent has seen everything the kernel sent about them.
    deadline = time.monotonic() + 10
    while agent.table.stats.tls_undecrypted < undecrypted + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.table.stats.tls_undecrypted == undecrypted + 3  # three TLS connections ended, none decrypted
    assert agent.table.stats.tls_handshakes == handshakes + 3
    assert probes.stats()["tls_ciphertext"] >= ciphertext + 3 * 2  # at least a record each way, not captured
    assert agent.table.stats.undetected == undetected  # no ciphertext went to protocol detection
    assert agent.table.stats.records == records
    assert not [s for s in receiver.spans() if s.attributes.get("server.port") == port]
    assert (nginx.cgroup_id, _worker(nginx)) in agent.table.tls_processes


def _worker(pod: pods.Pod) -> int:
    """nginx's worker: the process that accepts (its master only forks)."""
    children = subprocess.run(["pgrep", "-P", str(pod.pid)], capture_output=True, text=True).stdout.split()
    return int(children[0])


def test_http2_over_tls_from_curl_to_nginx(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate, tmp_path: pathlib.Path,
) -> None:
    # ALPN picks h2: the plaintext starts with the client preface, so the connection switches to capturing
    # every chunk, which the TLS probes do through their own tail-called capture program.
    nginx, port = _https_nginx(pod_runner, "tls-h2", certificate, tmp_path, http2=True)
    traced(nginx)  # type: ignore[operator]
    assert _follow(tracker, nginx)
    done = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(certificate[0]),
                           "-o", "/dev/null", "-w", "%{http_version}", f"https://127.0.0.1:{port}/api/items/55"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "2", done.stderr
    spans = receiver.wait_for(conftest.with_path("/api/items/55", 1), timeout=20)
    span = next(s for s in spans if s.attributes.get("url.path") == "/api/items/55")
    assert span.kind == SERVER
    assert span.attributes["network.protocol.version"] == "2"
    assert span.attributes["url.scheme"] == "https"
    assert span.attributes["tls.protocol.version"] == "1.2"  # nginx 1.22's default protocols end at TLS 1.2
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == 200


@pytest.fixture
def tls_postgresql(pod_runner: pods.PodRunner,
                   certificate: Certificate) -> collections.abc.Iterator[db_servers.Server]:
    try:
        with db_servers.postgresql(db_servers.spawn_in_pod(pod_runner), tls=certificate) as server:
            yield server
    except db_servers.Unavailable as missing:  # raised before the server starts
        pytest.skip(str(missing))


def test_psql_with_sslmode_require(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, tls_postgresql: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    # PostgreSQL asks for TLS in plaintext first (SSLRequest, 'S'), then the handshake follows on the same
    # connection: the parser sees the plaintext protocol again after it, from the TLS probes.
    server = tls_postgresql
    server_pod = next(pod for pod in pod_runner.pods if pod.process is server.process)
    gate, out = tmp_path / "gate", tmp_path / "psql.out"
    script = tmp_path / "script.sql"
    script.write_text("SELECT 40 + 2 AS answer;\nSELECT * FROM no_such_table;\n")
    client = pod_runner.start("tls-psql", conftest.gated(gate, [
        "env", f"PGPASSWORD={db_servers.PASSWORD}", "PGSSLMODE=require", "psql", "-h", server.host, "-p",
        str(server.port), "-U", db_servers.USER, "-d", db_servers.DATABASE, "-X", "-q", "-c", "SELECT ssl "
        "FROM pg_stat_ssl WHERE pid = pg_backend_pid();", "-f", str(script)]), log_path=out)
    for pod in (server_pod, client):
        traced(pod)  # type: ignore[operator]
    assert _follow(tracker, server_pod, client)
    gate.touch()
    assert client.process is not None and client.process.wait(timeout=60) == 0, out.read_text()
    assert out.read_text().split()[:3] == ["ssl", "-----", "t"]  # the session was encrypted

    def client_spans(spans: Spans) -> Spans:
        return sorted((s for s in spans if s.resource.get("process.pid") == client.pid and s.kind == CLIENT),
                      key=lambda s: s.start_ns)

    ours = client_spans(receiver.wait_for(lambda got: len(client_spans(got)) >= 3, timeout=30))
    assert [s.attributes["db.query.text"] for s in ours] == [
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();", "SELECT ? + ? AS answer;",
        "SELECT * FROM no_such_table;"]
    assert {s.attributes["db.system.name"] for s in ours} == {"postgresql"}
    assert {s.attributes["tls.protocol.version"] for s in ours} == {"1.3"}
    assert ours[2].attributes["db.response.status_code"] == "42P01"
    # The server side, traced too (its backend is a forked child that inherits the connection):
    served = receiver.wait_for(lambda got: any(s.kind == SERVER and s.parent_span_id == ours[1].span_id
                                               for s in got), timeout=20)
    child = next(s for s in served if s.kind == SERVER and s.parent_span_id == ours[1].span_id)
    assert child.attributes["db.query.text"] == "SELECT ? + ? AS answer;"
    assert child.attributes["tls.protocol.version"] == "1.3"


GRPC_TLS_SERVER = """
import sys, grpc
from concurrent import futures
port, cert, key = sys.argv[1:4]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
handlers = {"Hello": grpc.unary_unary_rpc_method_handler(lambda request, context: b"hello " + request)}
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tls.Greeter", handlers),))
credentials = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
server.add_secure_port(f"127.0.0.1:{port}", credentials)
server.start()
server.wait_for_termination()
"""


def test_grpcio_boringssl_is_reported_not_guessed(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate,
) -> None:
    # grpcio carries BoringSSL inside its extension module, not exported: nothing to probe. The agent must
    # say so for the process rather than yield nothing (or garbage) silently.
    grpc = pytest.importorskip("grpc")
    port = conftest.free_port()
    server = pod_runner.start("tls-grpc", [sys.executable, "-c", GRPC_TLS_SERVER, str(port), str(certificate[0]),
                                           str(certificate[1])])
    pods.wait_for_port("127.0.0.1", port)
    traced(server)  # type: ignore[operator]
    _follow(tracker, server)
    assert not any(state.library.name.startswith("openssl (static") for state in tracker.libraries(server.pid))
    records = agent.table.stats.records
    with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(certificate[0].read_bytes())) as channel:
        assert channel.unary_unary("/tls.Greeter/Hello")(b"there", timeout=10) == b"hello there"
    deadline = time.monotonic() + 10
    while not tracker.unsupported(agent.table.tls_processes, server.cgroup_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.unsupported(agent.table.tls_processes, server.cgroup_id) == [server.pid]
    assert agent.table.stats.records == records  # no span, and no parser fed ciphertext


def test_one_attachment_per_file_while_a_traced_process_maps_it(
    pod_runner: pods.PodRunner, traced: object, tracker: tls.Tracker, certificate: Certificate,
) -> None:
    first, _ = conftest.https_app(pod_runner, "tls-first", certificate, ("backend",))
    second, _ = conftest.https_app(pod_runner, "tls-second", certificate, ("backend",))
    probes_per_file = 2 * len(loader.TLS_CALL_PROBES) + 1  # entry and return of each, and SSL_free
    assert not bpftool.uprobe_files(os.getpid())  # every other test's tracker detached at its end
    states = _follow(tracker, first, second)
    assert len({state.library.key for state in states}) == 1 and len(states) == 2  # one file, two users
    [(path, probes)] = bpftool.uprobe_files(os.getpid()).items()
    assert path.endswith("/usr/lib/x86_64-linux-gnu/libssl.so.3") and probes == probes_per_file
    pod_runner.stop(first)  # the process whose /proc/<pid>/root path the probes were placed through
    assert [state.library.name for state in _follow(tracker, second)] == [states[0].library.name]
    assert list(bpftool.uprobe_files(os.getpid()).values()) == [probes_per_file]  # kept for the other user
    tracker.sync([])
    assert not bpftool.uprobe_files(os.getpid())


NODE_HTTPS_SERVER = """
const https = require("https"), fs = require("fs");
const [port, cert, key] = process.argv.slice(1);  // with -e there is no script name
https.createServer({cert: fs.readFileSync(cert), key: fs.readFileSync(key)}, (req, res) => res.end("ok"))
    .listen(Number(port), "127.0.0.1");
"""


def test_node_static_openssl_is_attached_and_its_memory_bios_reported(
    agent: tracer.Tracer, pod_runner: pods.PodRunner, traced: object, probes: loader.Probes, tracker: tls.Tracker,
    certificate: Certificate,
) -> None:
    # Node links OpenSSL into its executable and exports it, so the probes attach there; but its TLS runs
    # over memory BIOs (libuv moves the ciphertext), so no syscall ties an SSL object to its socket: the
    # plaintext is counted as unmapped and the process named, not guessed at.
    node = shutil.which("node")
    if node is None or not tls.exports(os.path.realpath(node), [b"SSL_read"]):
        pytest.skip("no node executable with OpenSSL linked in")
    port = conftest.free_port()
    server = pod_runner.start("tls-node", [node, "-e", NODE_HTTPS_SERVER, str(port), str(certificate[0]),
                                           str(certificate[1])])
    pods.wait_for_port("127.0.0.1", port)
    traced(server)  # type: ignore[operator]
    [state] = _follow(tracker, server)
    assert state.library.name == "openssl (static, node)" and not state.error
    unmapped = probes.stats()["tls_unmapped"]
    assert conftest.https_get(port, "/node", certificate[0]) == 200
    deadline = time.monotonic() + 10
    while not tracker.unsupported(agent.table.tls_processes, server.cgroup_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.unsupported(agent.table.tls_processes, server.cgroup_id) == [server.pid]
    assert probes.stats()["tls_unmapped"] > unmapped  # its SSL_read returned the request: counted, not captured


HANDSHAKING_CLIENT = """
import socket, ssl, sys
port, minimum, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
context = ssl.create_default_context(cafile=ca[0] if ca else None)  # else the system's CAs: self-signed fails
context.minimum_version = ssl.TLSVersion[minimum]
with socket.create_connection(("127.0.0.1", port)) as sock:
    try:
        context.wrap_socket(sock, server_hostname="127.0.0.1").close()  # no request: no plaintext either way
        print("established")
    except ssl.SSLError as exc:
        print(type(exc).__name__, exc.reason)
"""


@pytest.mark.parametrize(("server", "minimum", "reason"), [
    ("python", "TLSv1_2", "CERTIFICATE_VERIFY_FAILED"),  # the client rejects the self-signed certificate
    ("nginx", "TLSv1_3", "TLSV1_ALERT_PROTOCOL_VERSION"),  # nginx 1.22 offers up to TLS 1.2 by default
])
def test_failed_handshake_is_an_error_span_on_both_sides(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object,
    tracker: tls.Tracker, certificate: Certificate, tmp_path: pathlib.Path, server: str, minimum: str, reason: str,
) -> None:
    if server == "nginx":
        server_pod, port = _https_nginx(pod_runner, "tls-fail-nginx", certificate, tmp_path)
    else:
        server_pod, port = conftest.https_app(pod_runner, "tls-fail-python", certificate, ("backend",))
    gate, out = tmp_path / "gate", tmp_path / "client.out"
    client = pod_runner.start("tls-fail-client", conftest.gated(gate, [
        sys.executable, "-c", HANDSHAKING_CLIENT, str(port), minimum]), log_path=out)
    for pod in (server_pod, client):
        traced(pod)  # type: ignore[operator]
    _follow(tracker, server_pod, client)  # the client's libssl is the server's file: probed before it starts
    gate.touch()
    assert client.process is not None and client.process.wait(timeout=30) == 0
    assert out.read_text().split()[1] == reason

    def handshakes(spans: Spans) -> Spans:
        return [s for s in spans if s.name == "TLS handshake"
                and port in (s.attributes.get("server.port"), s.attributes.get("network.local.port"))]

    found = {s.kind: s for s in handshakes(receiver.wait_for(lambda got: len(handshakes(got)) >= 2, timeout=20))}
    assert set(found) == {SERVER, CLIENT}
    assert found[CLIENT].resource["process.pid"] == client.pid
    for span in found.values():
        assert span.status_code == 2 and span.status_message == "TLS handshake failed"  # STATUS_CODE_ERROR
        assert span.attributes["tls.established"] is False
        assert span.attributes["error.type"] == "tls_handshake_failed"
        assert 0 < span.end_ns - span.start_ns < 10_000_000_000
    assert found[CLIENT].attributes["server.port"] == port


def test_a_handshake_that_succeeds_makes_no_span_without_requests(
    agent: tracer.Tracer, pod_runner: pods.PodRunner, traced: object, tracker: tls.Tracker,
    certificate: Certificate, tmp_path: pathlib.Path,
) -> None:
    server_pod, port = conftest.https_app(pod_runner, "tls-idle-python", certificate, ("backend",))
    gate, out = tmp_path / "gate", tmp_path / "client.out"
    client = pod_runner.start("tls-idle-client", conftest.gated(gate, [
        sys.executable, "-c", HANDSHAKING_CLIENT, str(port), "TLSv1_2", str(certificate[0])]), log_path=out)
    for pod in (server_pod, client):
        traced(pod)  # type: ignore[operator]
    _follow(tracker, server_pod, client)
    records, closed = agent.table.stats.records, agent.table.stats.closed
    gate.touch()
    assert client.process is not None and client.process.wait(timeout=30) == 0
    assert out.read_text().split() == ["established"]
    deadline = time.monotonic() + 10  # both ends closed: their CLOSE events are the last the agent gets of them
    while agent.table.stats.closed < closed + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.table.stats.closed == closed + 2  # both ends of the connection
    assert agent.table.stats.records == records  # no failed-handshake record (and no request)
