"""HTTP/1.x tracing through the real kernel path: real servers in real cgroups, spans at a real
OTLP receiver."""

from __future__ import annotations

import http.client
import os
import pathlib

from podspan_agent import loader, tracer
from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest
from tests.support import bpftool

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
STATUS_ERROR = 2

Spans = list[otlp_receiver.ReceivedSpan]


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _start_app(pod_runner: pods.PodRunner) -> tuple[pods.Pod, pods.Pod, int]:
    backend_port, frontend_port = conftest.free_port(), conftest.free_port()
    backend = pod_runner.start("backend", [*conftest.SAMPLE_APP, "backend", "--port", str(backend_port)],
                               env={"OTEL_SERVICE_NAME": "backend"})
    frontend = pod_runner.start(
        "frontend",
        [*conftest.SAMPLE_APP, "frontend", "--port", str(frontend_port),
         "--backend", f"http://127.0.0.1:{backend_port}"],
        env={"OTEL_SERVICE_NAME": "frontend"},
    )
    pods.wait_for_port("127.0.0.1", backend_port)
    pods.wait_for_port("127.0.0.1", frontend_port)
    return frontend, backend, frontend_port


def test_frontend_backend_trace(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object
) -> None:
    frontend, backend, port = _start_app(pod_runner)
    traced(frontend)  # type: ignore[operator]
    traced(backend)  # type: ignore[operator]
    assert _get(port, "/users/42") == 200

    spans = receiver.wait_for(conftest.with_path("/users/42", 3), timeout=20)
    ours = [s for s in spans if s.attributes.get("url.path") == "/users/42"]
    entry, call, backend_span = conftest.frontend_backend_trace(ours, "frontend", "backend")
    for span in ours:
        assert span.name == "GET /users/{id}"
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["http.route"] == "/users/{id}"
        assert span.attributes["http.response.status_code"] == 200
        assert span.status_code != STATUS_ERROR
        assert span.end_ns > span.start_ns
    assert entry.resource["process.pid"] == frontend.pid
    assert backend_span.resource["process.pid"] == backend.pid
    assert entry.attributes["server.port"] == port
    assert entry.attributes["network.peer.address"] == "127.0.0.1"
    assert call.attributes["user_agent.original"] == "sample-frontend"


def test_incoming_context_is_adopted(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object
) -> None:
    frontend, backend, port = _start_app(pod_runner)
    traced(frontend)  # type: ignore[operator]
    traced(backend)  # type: ignore[operator]
    cases = {
        "/users/1": ({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                      "tracestate": "vendor=1"}, 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331),
        "/users/2": ({"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"},
                     0x80F198EE56343BA864FE8B2A57D3EFF7, 0xE457B5A2E4D86BD1),
        "/users/3": ({"X-B3-TraceId": "463ac35c9f6413ad", "X-B3-SpanId": "a2fb4a1d1a96d312"},
                     0x463AC35C9F6413AD, 0xA2FB4A1D1A96D312),
    }
    for path, (headers, _, _) in cases.items():
        assert _get(port, path, headers) == 200
    for path, (_, trace_id, parent_id) in cases.items():
        spans = receiver.wait_for(conftest.with_path(path, 3), timeout=20)
        ours = [s for s in spans if s.attributes.get("url.path") == path]
        entry = next(s for s in ours if s.kind == SERVER and s.resource.get("service.name") == "frontend")
        assert entry.trace_id == trace_id, path
        assert entry.parent_span_id == parent_id, path
        # The whole request, down to the backend, stays in the caller's trace.
        assert {s.trace_id for s in ours} == {trace_id}, path
    tp_entry = next(
        s for s in receiver.spans()
        if s.attributes.get("url.path") == "/users/1" and s.kind == SERVER
        and s.resource.get("service.name") == "frontend"
    )
    assert tp_entry.trace_state == "vendor=1"


def test_nginx_keepalive_and_statuses(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner,
    traced: object, tmp_path: pathlib.Path,
) -> None:
    port = conftest.free_port()
    conf = servers.nginx_config(tmp_path, "127.0.0.1", port)
    nginx = pod_runner.start("nginx", [conftest.nginx_binary(), "-c", str(conf), "-p", str(tmp_path)])
    pods.wait_for_port("127.0.0.1", port)
    traced(nginx)  # type: ignore[operator]

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    for path in ("/index.html", "/api/items/123", "/nope-404"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    assert statuses == [200, 200, 404]

    spans = receiver.wait_for(conftest.with_path("/nope-404", 1), timeout=20)
    by_path = {s.attributes.get("url.path"): s for s in spans if s.attributes.get("server.port") == port}
    assert by_path["/index.html"].attributes["http.response.status_code"] == 200
    assert by_path["/api/items/123"].attributes["http.route"] == "/api/items/{id}"
    missing = by_path["/nope-404"]
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status_code != STATUS_ERROR  # a 404 is the client's fault: not a server error
    assert {s.kind for s in by_path.values()} == {SERVER}
    # One connection carried all three requests, so they are three separate traces.
    assert len({s.trace_id for s in by_path.values()}) == 3


def test_unselected_server_yields_no_spans(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: object
) -> None:
    quiet_port, loud_port = conftest.free_port(), conftest.free_port()
    quiet = pod_runner.start("quiet", [*conftest.SAMPLE_APP, "backend", "--port", str(quiet_port)])
    loud = pod_runner.start("loud", [*conftest.SAMPLE_APP, "backend", "--port", str(loud_port)])
    pods.wait_for_port("127.0.0.1", quiet_port)
    pods.wait_for_port("127.0.0.1", loud_port)
    traced(loud)  # type: ignore[operator]
    assert _get(quiet_port, "/users/777") == 200
    assert _get(loud_port, "/users/778") == 200
    # Spans flow in order; once the later request's span is in, the earlier one would be too.
    spans = receiver.wait_for(conftest.with_path("/users/778", 1), timeout=20)
    assert not [s for s in spans if s.attributes.get("url.path") == "/users/777"]
    assert quiet.pid not in {s.resource.get("process.pid") for s in spans}


def test_detached_probes_see_nothing_and_reattach(
    agent: tracer.Tracer, probes: loader.Probes, receiver: otlp_receiver.OtlpReceiver,
    pod_runner: pods.PodRunner, traced: object
) -> None:
    port = conftest.free_port()
    server = pod_runner.start("detach", [*conftest.SAMPLE_APP, "backend", "--port", str(port)])
    pods.wait_for_port("127.0.0.1", port)
    traced(server)  # type: ignore[operator]
    probes.detach()
    try:
        assert not probes.attached and not bpftool.attached_programs(os.getpid())
        assert _get(port, "/users/61") == 200
    finally:
        probes.attach()
    assert probes.attached and bpftool.attached_programs(os.getpid())
    assert _get(port, "/users/62") == 200
    spans = receiver.wait_for(conftest.with_path("/users/62", 1), timeout=20)
    assert not any(s.attributes.get("url.path") == "/users/61" for s in spans)

