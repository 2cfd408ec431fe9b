"""gRPC (HTTP/2 cleartext) through the real kernel path: a grpcio client pod calls a grpcio server pod,
both traced, and both ends' spans arrive at a real OTLP receiver.

The calls cover what the per-chunk HTTP/2 capture is for: HEADERS of concurrent streams interleaved
on one connection, trailers after many DATA frames, and messages larger than the capture size.
"""

from __future__ import annotations

import collections.abc
import pathlib
import random
import sys
import uuid

from podspan_agent import tracer
from podspan_demo import otlp_receiver, pods
from tests.agent import conftest

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
STATUS_ERROR = 2
NOT_FOUND = 5

GRPC_SERVER = """
import sys, grpc
from concurrent import futures

def hello(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
    return b"hello " + request

def items(request, context):
    count, size = map(int, request.split(b"x"))
    for i in range(count):
        yield bytes([65 + i % 26]) * size

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
handlers = {"Hello": grpc.unary_unary_rpc_method_handler(hello), "Items": grpc.unary_stream_rpc_method_handler(items)}
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(sys.argv[2], handlers),))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
server.wait_for_termination()
"""

GRPC_CLIENT = """
import sys, grpc
port, service, traceparent = sys.argv[1:4]
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    hello = channel.unary_unary(f"/{service}/Hello")
    items = channel.unary_stream(f"/{service}/Items")
    print(hello(b"traced", metadata=(("traceparent", traceparent),)).decode())
    print(len(list(items(b"5x20"))))
    print(sum(map(len, items(b"3x40000"))))  # messages larger than the capture size
    calls = [hello.future(b"c%d" % i) for i in range(4)]  # concurrent streams on one connection
    print(*(call.result().decode() for call in calls))
    try:
        hello(b"fail")
    except grpc.RpcError as exc:
        print(exc.code().name)
"""

Spans = list[otlp_receiver.ReceivedSpan]
Select = collections.abc.Callable[[pods.Pod], None]  # the `traced` fixture


def _of_service(service: str, count: int) -> collections.abc.Callable[[Spans], bool]:
    return lambda spans: sum(1 for s in spans if s.attributes.get("rpc.service") == service) >= count


def test_grpc_unary_streaming_and_errors(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Select,
    tmp_path: pathlib.Path,
) -> None:
    service = f"demo{uuid.uuid4().hex[:8]}.Greeter"
    trace_id, parent_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    traceparent = f"00-{trace_id:032x}-{parent_id:016x}-01"
    port = conftest.free_port()
    server = pod_runner.start("grpc-server", [sys.executable, "-c", GRPC_SERVER, str(port), service])
    pods.wait_for_port("127.0.0.1", port)
    traced(server)
    gate, log = tmp_path / "go", tmp_path / "client.log"
    client_argv = [sys.executable, "-c", GRPC_CLIENT, str(port), service, traceparent]
    client = pod_runner.start("grpc-client", conftest.gated(gate, client_argv), log_path=log)
    traced(client)
    gate.touch()
    assert client.process is not None
    assert client.process.wait(timeout=30) == 0, log.read_text()
    assert log.read_text().splitlines() == ["hello traced", "5", "120000", "hello c0 hello c1 hello c2 hello c3",
                                            "NOT_FOUND"]

    # 8 calls, each seen by both ends.
    spans = receiver.wait_for(_of_service(service, 16), timeout=20)
    ours = [s for s in spans if s.attributes.get("rpc.service") == service]
    by_side = {
        kind: [s for s in ours if s.kind == kind and s.resource.get("process.pid") == pod.pid]
        for kind, pod in ((CLIENT, client), (SERVER, server))
    }
    assert len(by_side[CLIENT]) == len(by_side[SERVER]) == 8
    for side in by_side.values():
        assert all(s.attributes["rpc.system"] == "grpc" for s in side)
        outcomes = sorted((s.attributes["rpc.method"], s.attributes.get("rpc.grpc.status_code")) for s in side)
        assert outcomes == [("Hello", 0)] * 5 + [("Hello", NOT_FOUND)] + [("Items", 0)] * 2
        for span in side:
            assert span.name == f"{service}/{span.attributes['rpc.method']}"
            assert span.end_ns > span.start_ns
            failed = span.attributes["rpc.grpc.status_code"] == NOT_FOUND
            assert (span.status_code == STATUS_ERROR) == failed
        assert {s.attributes["server.port"] for s in side} == {port}

    # The caller's traceparent travels in HEADERS metadata; the server span adopts it.
    adopted = [s for s in by_side[SERVER] if s.trace_id == trace_id]
    assert len(adopted) == 1
    assert adopted[0].parent_span_id == parent_id
    assert adopted[0].attributes["rpc.method"] == "Hello"
