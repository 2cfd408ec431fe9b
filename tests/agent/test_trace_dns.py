"""DNS over UDP through the real kernel path: both resolver shapes, spans at a real OTLP receiver.

dnspython sends from an unconnected UDP socket (sendto with a destination, recvfrom); glibc's
resolver (`socket.getaddrinfo`) connects its UDP socket and sends A and AAAA in one sendmmsg.
The resolvers run in traced pods against the test's DNS responder.
"""

from __future__ import annotations

import collections.abc
import pathlib
import sys
import uuid

import dns.message
import dns.query
import dns.rcode
import pytest

from podspan_agent import loader, tracer
from podspan_demo import otlp_receiver, pods
from tests.agent import conftest
from tests.support import wire_responders

CLIENT = 3  # OTLP SpanKind
STATUS_ERROR = 2

DNSPYTHON_CLIENT = """
import sys, dns.message, dns.query, dns.rcode
port = int(sys.argv[1])
for name, rdtype in zip(sys.argv[2::2], sys.argv[3::2]):
    reply = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5)
    print(name, rdtype, dns.rcode.to_text(reply.rcode()), flush=True)
"""

GLIBC_CLIENT = """
import socket, sys
for name in sys.argv[1:]:
    try:
        found = sorted({info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        found = [f"error {exc.errno}"]
    print(name, *found, flush=True)
"""

DNS_SERVER = """
import sys, time
from tests.support import wire_responders
wire_responders.DnsResponder(port=int(sys.argv[1]))
time.sleep(3600)
"""

REPO = pathlib.Path(__file__).resolve().parents[2]

Spans = list[otlp_receiver.ReceivedSpan]
Select = collections.abc.Callable[[pods.Pod], None]  # the `traced` fixture


def _questions(names: set[str], count: int) -> collections.abc.Callable[[Spans], bool]:
    return lambda spans: sum(1 for s in spans if s.attributes.get("dns.question.name") in names) >= count


def _run_gated(pod_runner: pods.PodRunner, traced: Select,
               tmp_path: pathlib.Path, argv: list[str], netns: bool = False,
               before_release: collections.abc.Callable[[pods.Pod], None] | None = None) -> tuple[pods.Pod, str]:
    """Start a traced client pod, let it run to completion, return it and its output."""
    gate, log = tmp_path / "go", tmp_path / "client.log"
    pod = pod_runner.start("dns-client", conftest.gated(gate, argv), netns=netns, log_path=log)
    traced(pod)
    if before_release is not None:
        before_release(pod)
    gate.touch()
    assert pod.process is not None
    assert pod.process.wait(timeout=30) == 0, log.read_text()
    return pod, log.read_text()


def test_unconnected_udp_dnspython(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Select,
    tmp_path: pathlib.Path,
) -> None:
    responder = wire_responders.DnsResponder()
    ok, missing = f"api-{uuid.uuid4().hex[:8]}.test", f"nope-{uuid.uuid4().hex[:8]}.example"
    queries = [f"{ok}.", "A", "fail.test.", "A", f"{missing}.", "AAAA"]
    try:
        pod, output = _run_gated(pod_runner, traced, tmp_path,
                                 [sys.executable, "-c", DNSPYTHON_CLIENT, str(responder.port), *queries])
    finally:
        responder.close()
    assert output.split("\n")[:3] == [f"{ok}. A NOERROR", "fail.test. A SERVFAIL", f"{missing}. AAAA NXDOMAIN"]

    names = {ok, "fail.test", missing}
    spans = receiver.wait_for(_questions(names, 3), timeout=20)
    ours = {s.attributes["dns.question.name"]: s for s in spans
            if s.attributes.get("dns.question.name") in names and s.resource.get("process.pid") == pod.pid}
    assert set(ours) == names
    for span in ours.values():
        assert span.kind == CLIENT
        assert span.attributes["network.transport"] == "udp"
        # The flow's peer is the destination of its first sendto.
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == responder.port
        assert span.end_ns > span.start_ns
    assert ours[ok].attributes["dns.question.type"] == "A"
    assert ours[ok].attributes["dns.response_code"] == "NOERROR"
    assert ours[ok].status_code != STATUS_ERROR
    assert ours["fail.test"].attributes["dns.response_code"] == "SERVFAIL"
    assert ours["fail.test"].status_code == STATUS_ERROR
    # NXDOMAIN is an answer, not a failure (search-domain expansion produces it all the time).
    assert ours[missing].attributes["dns.question.type"] == "AAAA"
    assert ours[missing].attributes["dns.response_code"] == "NXDOMAIN"
    assert ours[missing].status_code != STATUS_ERROR


def test_connected_udp_glibc_sendmmsg(
    agent: tracer.Tracer, probes: loader.Probes, receiver: otlp_receiver.OtlpReceiver,
    pod_runner: pods.PodRunner, traced: Select, tmp_path: pathlib.Path,
) -> None:
    if "PODSPAN_HAVE_MMSG" not in probes.features:
        pytest.skip("this kernel has no sendmmsg/recvmmsg tracepoints: glibc's queries are not captured")
    name = f"svc-{uuid.uuid4().hex[:8]}.test"
    # glibc always asks port 53: serve it on the host's address on the pods' bridge, which only
    # this test's pods use, and point the pod's private /etc/resolv.conf there.
    host_ip = pod_runner.host_ip
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {host_ip}\noptions timeout:5 attempts:1\n")
    responders: list[wire_responders.DnsResponder] = []

    # A private mount namespace whose /etc/resolv.conf is ours; nothing leaks to the host.
    private_resolv = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    argv = ["unshare", "-m", "sh", "-c", private_resolv, str(resolv), sys.executable, "-c", GLIBC_CLIENT, f"{name}."]
    try:
        # The bridge address exists once the pod's namespace does, so bind only then.
        pod, output = _run_gated(
            pod_runner, traced, tmp_path, argv, netns=True,
            before_release=lambda _pod: responders.append(wire_responders.DnsResponder(host=host_ip, port=53)),
        )
    finally:
        for responder in responders:
            responder.close()
    assert output.split() == [f"{name}.", "192.0.2.7", "2001:db8::7"]

    spans = receiver.wait_for(_questions({name}, 2), timeout=20)
    ours = {s.attributes["dns.question.type"]: s for s in spans if s.attributes.get("dns.question.name") == name}
    # Both queries of the one sendmmsg call became spans, each paired with its own answer.
    assert set(ours) == {"A", "AAAA"}
    for span in ours.values():
        assert span.kind == CLIENT
        assert span.resource["process.pid"] == pod.pid
        assert span.attributes["dns.response_code"] == "NOERROR"
        assert span.attributes["network.transport"] == "udp"
        assert span.attributes["server.address"] == host_ip
        assert span.attributes["server.port"] == 53
        assert span.status_code != STATUS_ERROR


def test_udp_server_replies_open_no_client_flow(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Select,
    tmp_path: pathlib.Path,
) -> None:
    # A DNS server in a traced pod: its UDP socket is bound to a port, so the replies it sends with
    # sendto() must not open "client" flows to whichever client asked first.
    port, gate = conftest.free_port(), tmp_path / "server-go"
    argv = conftest.gated(gate, [sys.executable, "-c", DNS_SERVER, str(port)])
    server = pod_runner.start("dns-server", argv, env={"PYTHONPATH": str(REPO)})
    traced(server)
    gate.touch()
    pods.wait_for_port("127.0.0.1", port)  # its TCP listener, bound right after the UDP socket
    served = f"served-{uuid.uuid4().hex[:8]}.test"
    for _ in range(4):  # with a flow, the 2nd and later exchanges would each have made a span
        reply = dns.query.udp(dns.message.make_query(f"{served}.", "A"), "127.0.0.1", port=port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR

    # A traced client's lookup made afterwards: once its span is in, a server span would be too.
    responder = wire_responders.DnsResponder()
    marker = f"marker-{uuid.uuid4().hex[:8]}.test"
    try:
        _run_gated(pod_runner, traced, tmp_path, [sys.executable, "-c", DNSPYTHON_CLIENT, str(responder.port),
                                                  f"{marker}.", "A"])
    finally:
        responder.close()
    spans = receiver.wait_for(_questions({marker}, 1), timeout=20)
    assert not [s for s in spans if s.attributes.get("dns.question.name") == served]
    assert server.pid not in {s.resource.get("process.pid") for s in spans}
