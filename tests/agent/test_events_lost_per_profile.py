"""Ring-buffer overflow is counted per cgroup in the kernel, and each profile's status reports only the
losses of its own pods: a one-page ring that nobody drains overflows for the pod that talks, not for the
quiet one (real kernel, real nginx pods), and the agent's router attributes the counts to the profiles
that trace those cgroups."""

from __future__ import annotations

import pathlib
import socket

import pytest

from podspan_agent import kernel_headers, loader, node_agent
from podspan_agent.metrics import red
from podspan_api import models
from podspan_demo import pods, servers
from tests.agent import conftest

pytestmark = pytest.mark.bpf

REQUEST = b"GET /api/lost HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _nginx(pod_runner: pods.PodRunner, root: pathlib.Path, name: str) -> tuple[pods.Pod, int]:
    root.mkdir()
    port = conftest.free_port()
    conf = servers.nginx_config(root, "127.0.0.1", port)
    pod = pod_runner.start(name, [conftest.nginx_binary(), "-c", str(conf), "-p", str(root)])
    pods.wait_for_port("127.0.0.1", port)
    return pod, port


def _requests(port: int, count: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for _ in range(count):
            conn.sendall(REQUEST)
            response = b""
            while not response.endswith(b'{"ok":true}'):
                chunk = conn.recv(4096)
                assert chunk, response
                response += chunk


def _profile(key: str, name: str) -> models.ResolvedProfile:
    return models.ResolvedProfile(
        key=key, kind=models.ProfileKind.TRACE_PROFILE, namespace="shop", name=name,
        protocols=[models.Protocol("http")],
        export=models.Export(otlp=models.OtlpExport(endpoint="http://127.0.0.1:9", protocol=models.OtlpProtocol.GRPC,
                                                    insecure=True)),
    )


def _plan(cgroup_id: int, profile: str) -> node_agent.TargetPlan:
    status = models.TargetStatus(pod_uid=f"uid-{cgroup_id}", container="app", container_id="containerd://ab",
                                 state=models.TargetState.ATTACHED)
    return node_agent.TargetPlan(status, cgroup_id, None, {}, (profile,), None)


def test_overflow_is_counted_for_the_pod_that_lost_events_only(pod_runner: pods.PodRunner,
                                                                tmp_path: pathlib.Path) -> None:
    busy, busy_port = _nginx(pod_runner, tmp_path / "busy", "busy")
    quiet, quiet_port = _nginx(pod_runner, tmp_path / "quiet", "quiet")
    probes = loader.Probes(loader.ProbeOptions(ringbuf_pages=1), kernel_headers.resolve())
    try:
        probes.open_events(lambda _records: None)  # never polled: the one-page ring fills up
        probes.trace_cgroup(busy.cgroup_id)
        probes.trace_cgroup(quiet.cgroup_id)
        _requests(quiet_port, 2)  # a few events: they fit
        quiet_lost = probes.events_lost_by_cgroup().get(quiet.cgroup_id, 0)
        _requests(busy_port, 300)  # ~600 events of ~200-450 bytes into 4 KiB
        lost = probes.events_lost_by_cgroup()
        total = probes.stats()["events_lost"]
    finally:
        probes.close()
    assert quiet_lost == 0
    assert lost.get(busy.cgroup_id, 0) > 500
    assert lost.get(quiet.cgroup_id, 0) == 0  # the ring was full for it too, but it sent nothing more
    assert sum(lost.values()) == total  # every loss has its cgroup

    router = node_agent.Router(export_queue=16, metrics=red.RedMetrics())
    try:
        router.configure([_profile("TraceProfile/shop/busy", "busy"), _profile("TraceProfile/shop/quiet", "quiet")],
                         [_plan(busy.cgroup_id, "TraceProfile/shop/busy"),
                          _plan(quiet.cgroup_id, "TraceProfile/shop/quiet")])
        by_profile = {c.profile: c.events_lost for c in router.counters(lost, {})}
        assert by_profile == {"TraceProfile/shop/busy": lost[busy.cgroup_id], "TraceProfile/shop/quiet": 0}
        # Counters are cumulative: the same kernel totals again add nothing; a reloaded program (counts
        # from zero) adds what it counts anew; a target that goes keeps its profile's count.
        assert {c.profile: c.events_lost for c in router.counters(lost, {})} == by_profile
        router.configure([_profile("TraceProfile/shop/busy", "busy"), _profile("TraceProfile/shop/quiet", "quiet")],
                         [_plan(quiet.cgroup_id, "TraceProfile/shop/quiet")])
        again = {c.profile: c.events_lost for c in router.counters({quiet.cgroup_id: 3, busy.cgroup_id: 7}, {})}
        assert again == {"TraceProfile/shop/busy": lost[busy.cgroup_id], "TraceProfile/shop/quiet": 3}
    finally:
        router.shutdown()
