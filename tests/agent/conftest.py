"""Session fixtures for kernel tests: the capture program is loaded once (compile+attach
costs seconds), one tracer thread exports to a real OTLP receiver, pods are real cgroups."""

from __future__ import annotations

import collections.abc
import http.client
import os
import pathlib
import ssl
import sys
import threading

import pytest

from podspan_agent import kernel_headers, loader, process_info, tracer
from podspan_agent.export import otlp
from podspan_demo import k8s_api_emulator, otlp_receiver, pods, servers


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    try:
        kernel_headers.resolve()
    except kernel_headers.HeadersNotFound as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    for item in items:
        if "tests/agent" in str(item.path):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def receiver() -> collections.abc.Iterator[otlp_receiver.OtlpReceiver]:
    with otlp_receiver.OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="session")
def probes() -> collections.abc.Iterator[loader.Probes]:
    loaded = loader.Probes(loader.ProbeOptions(), kernel_headers.resolve())
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def agent(
    probes: loader.Probes, receiver: otlp_receiver.OtlpReceiver
) -> collections.abc.Iterator[tracer.Tracer]:
    exporter = otlp.OtlpExporter(receiver.grpc_endpoint, protocol="grpc", schedule_delay=0.1)
    settings = tracer.TracerSettings(hold_ns=300_000_000)
    the_tracer = tracer.Tracer(probes, settings, [exporter], process_info.ResourceResolver(lambda _c: {}))
    stop = threading.Event()
    thread = threading.Thread(target=the_tracer.run, args=(stop,), name="tracer", daemon=True)
    thread.start()
    yield the_tracer
    stop.set()
    thread.join(timeout=10)
    exporter.shutdown()


@pytest.fixture
def api(tmp_path: pathlib.Path) -> collections.abc.Iterator[k8s_api_emulator.EmulatorThread]:
    """A Kubernetes API (the emulator over HTTP) with a kubeconfig for agents started in the test."""
    with k8s_api_emulator.EmulatorThread(kubeconfig=tmp_path / "kubeconfig") as thread:
        yield thread


@pytest.fixture
def pod_runner() -> collections.abc.Iterator[pods.PodRunner]:
    runner = pods.PodRunner()
    yield runner
    runner.stop_all()


@pytest.fixture
def traced(probes: loader.Probes) -> collections.abc.Iterator[collections.abc.Callable[[pods.Pod], None]]:
    """Select pods for tracing for the duration of one test."""
    selected: list[int] = []

    def select(pod: pods.Pod) -> None:
        probes.trace_cgroup(pod.cgroup_id)
        selected.append(pod.cgroup_id)

    yield select
    for cgroup in selected:
        probes.untrace_cgroup(cgroup)


SAMPLE_APP = [sys.executable, "-m", "podspan_demo.sample_app"]


def gated(gate: pathlib.Path, argv: list[str], stdin: pathlib.Path | None = None) -> list[str]:
    """`argv`, run only once the file `gate` exists: start the pod, select it, then create the
    gate, and the pod is traced from its first syscall (its first socket, connect, send).
    `stdin`: a file the command reads as its standard input."""
    wait = 'while [ ! -e "$0" ]; do sleep 0.01; done; '
    if stdin is None:
        return ["sh", "-c", wait + 'exec "$@"', str(gate), *argv]
    return ["sh", "-c", wait + 'stdin=$1; shift; exec "$@" < "$stdin"', str(gate), str(stdin), *argv]


SERVER_KIND, CLIENT_KIND = 2, 3  # OTLP SpanKind values


def frontend_backend_trace(
    spans: list[otlp_receiver.ReceivedSpan], frontend: str, backend: str
) -> tuple[otlp_receiver.ReceivedSpan, otlp_receiver.ReceivedSpan, otlp_receiver.ReceivedSpan]:
    """The three spans of one request through the sample app (the frontend's server span, its call, the
    backend's server span, by service.name), checked to be one trace of parent and children, nested in time."""
    by_role = {(s.resource.get("service.name"), s.kind): s for s in spans}
    entry, call = by_role[(frontend, SERVER_KIND)], by_role[(frontend, CLIENT_KIND)]
    backend_span = by_role[(backend, SERVER_KIND)]
    assert entry.parent_span_id is None
    assert call.parent_span_id == entry.span_id
    assert backend_span.parent_span_id == call.span_id
    assert entry.trace_id == call.trace_id == backend_span.trace_id != 0
    # Nesting in time: the backend call happens inside the frontend's handling.
    assert entry.start_ns <= call.start_ns <= backend_span.start_ns
    assert backend_span.end_ns <= call.end_ns <= entry.end_ns
    return entry, call, backend_span


def https_get(port: int, path: str, ca: pathlib.Path) -> int:
    """GET `path` from an HTTPS server on loopback `port` whose certificate `ca` signed; the status."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl.create_default_context(cafile=ca))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


free_port = servers.free_port
nginx_binary = servers.nginx_binary


Certificate = tuple[pathlib.Path, pathlib.Path]  # (certificate, key) files


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, shared by the TLS tests."""
    return servers.self_signed_certificate(tmp_path_factory.mktemp("tls-cert"))


def https_app(pod_runner: pods.PodRunner, name: str, certificate: Certificate, extra: tuple[str, ...] = ()
              ) -> tuple[pods.Pod, int]:
    """The sample app (`extra`: its role and options) serving HTTPS with `certificate` on a free loopback port,
    in pod `name` (also its service name), once it listens."""
    port = free_port()
    pod = pod_runner.start(name, [*SAMPLE_APP, *extra, "--port", str(port), "--tls-cert", str(certificate[0]),
                                  "--tls-key", str(certificate[1])], env={"OTEL_SERVICE_NAME": name})
    pods.wait_for_port("127.0.0.1", port)
    return pod, port


def with_path(path: str, count: int) -> collections.abc.Callable[[list[otlp_receiver.ReceivedSpan]], bool]:
    """A receiver predicate: at least `count` spans of `url.path` `path` arrived."""
    return lambda spans: sum(1 for s in spans if s.attributes.get("url.path") == path) >= count
