"""`podspan-agent run`: the agent follows its NodeTraceConfig from a real HTTP Kubernetes API,
attaches to the targets' real cgroups, exports with k8s resource attributes, reports status."""

from __future__ import annotations

import collections.abc
import http.client
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import sys
import time
from typing import Any

from podspan_agent import loader
from podspan_api import models
from podspan_demo import k8s_api_emulator as emu
from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest
from tests.support import bpftool

NTC = "podspan.dev/v1alpha1/nodetraceconfigs"
NODE = "node-a"
PROFILE = "TraceProfile/shop/web"
LOOPBACK_METRICS = ("--metrics-port", "0", "--metrics-address", "127.0.0.1")  # tests listen on loopback only


def _wait(probe: collections.abc.Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _target(pod: pods.Pod, name: str) -> models.PodTarget:
    return models.PodTarget(
        uid=pod.uid, namespace="shop", name=name, qos_class=models.QOSClass.BEST_EFFORT,
        service_name=name.rsplit("-", 1)[0], workload=models.Workload(kind="Deployment", name="web"),
        containers=[models.ContainerTarget(name="app", container_id=f"containerd://{pod.container_id}",
                                           profiles=[PROFILE])],
    )


def _spec(targets: list[models.PodTarget], endpoint: str, tls: bool = True) -> dict[str, Any]:
    profile = models.ResolvedProfile(
        key=PROFILE, kind=models.ProfileKind.TRACE_PROFILE, namespace="shop", name="web",
        protocols=[models.Protocol("http")],
        export=models.Export(otlp=models.OtlpExport(endpoint=endpoint, protocol=models.OtlpProtocol.GRPC,
                                                    insecure=True)),
        capture=models.Capture(tls=tls),
        resource_attributes={"deployment.environment.name": "e2e"},
    )
    return models.NodeTraceConfigSpec(targets=targets, profiles=[profile]).to_k8s()


def _get(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    conn.getresponse().read()
    conn.close()


def _target_states(kc: emu.KubeClient) -> dict[str, str]:
    status = (kc.get(NTC, NODE) or {}).get("status") or {}
    return {t["podUID"]: t["state"] for t in status.get("targets", [])}


def test_run_mode_follows_node_config(
    api: emu.EmulatorThread, pod_runner: pods.PodRunner, receiver: otlp_receiver.OtlpReceiver
) -> None:
    kc = emu.KubeClient(api.url)
    ports = [conftest.free_port(), conftest.free_port()]
    first = pod_runner.start("web-1", [*conftest.SAMPLE_APP, "backend", "--port", str(ports[0])])
    second = pod_runner.start("web-2", [*conftest.SAMPLE_APP, "backend", "--port", str(ports[1])])
    for port in ports:
        pods.wait_for_port("127.0.0.1", port)
    targets = [_target(first, "web-1"), _target(second, "web-2")]
    kc.create(NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                    "metadata": {"name": NODE}, "spec": _spec(targets, receiver.grpc_endpoint)})
    agent = subprocess.Popen(
        [sys.executable, "-m", "podspan_agent.cli", "run", "--node", NODE, *LOOPBACK_METRICS],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)}, stderr=subprocess.PIPE, text=True,
    )
    try:
        both = {first.uid: "attached", second.uid: "attached"}
        _wait(lambda: _target_states(kc) == both, "attached targets")
        attached = bpftool.attached_programs(agent.pid)
        assert attached
        status = (kc.get(NTC, NODE) or {})["status"]
        assert status["heartbeatTime"] and "kernel headers" in status["headerSource"]
        assert status["observedGeneration"] == (kc.get(NTC, NODE) or {})["metadata"]["generation"]

        _get(ports[0], "/users/11")
        spans = receiver.wait_for(
            lambda got: any(s.attributes.get("url.path") == "/users/11" for s in got), timeout=20)
        span = next(s for s in spans if s.attributes.get("url.path") == "/users/11")
        assert span.resource["k8s.pod.name"] == "web-1"
        assert span.resource["k8s.namespace.name"] == "shop"
        assert span.resource["k8s.pod.uid"] == first.uid
        assert span.resource["k8s.container.name"] == "app"
        assert span.resource["k8s.node.name"] == NODE
        assert span.resource["k8s.deployment.name"] == "web"
        assert span.resource["container.id"] == first.container_id
        assert span.resource["service.name"] == "web"
        assert span.resource["deployment.environment.name"] == "e2e"

        # The operator drops web-2 from the node: its traffic stops producing spans, without a restart.
        kc.patch(NTC, NODE, {"spec": _spec(targets[:1], receiver.grpc_endpoint)})
        _wait(lambda: _target_states(kc) == {first.uid: "attached"}, "web-2 detached in status")
        _get(ports[1], "/users/22")
        _get(ports[0], "/users/12")
        spans = receiver.wait_for(
            lambda got: any(s.attributes.get("url.path") == "/users/12" for s in got), timeout=20)
        assert not any(s.attributes.get("url.path") == "/users/22" for s in spans)
        _wait(lambda: any(p["spansExported"] >= 2 for p in
                          ((kc.get(NTC, NODE) or {}).get("status") or {}).get("profiles", [])),
              "exported span counters in status", timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert not attached & bpftool.program_ids()


def test_probe_load_failure_is_reported_then_recovered(
    api: emu.EmulatorThread, pod_runner: pods.PodRunner, receiver: otlp_receiver.OtlpReceiver,
    tmp_path: pathlib.Path
) -> None:
    kc = emu.KubeClient(api.url)
    port = conftest.free_port()
    web = pod_runner.start("web-1", [*conftest.SAMPLE_APP, "backend", "--port", str(port)])
    kc.create(NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig", "metadata": {"name": NODE},
                    "spec": _spec([_target(web, "web-1")], receiver.grpc_endpoint)})
    # A capture program this kernel's compiler rejects, as a broken image or header mismatch would give.
    bpf_dir = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), bpf_dir)
    source = bpf_dir / "podspan.bpf.c"
    good = source.read_text()
    source.write_text(good + "\n#error broken on purpose by the test\n")
    agent = subprocess.Popen(
        [sys.executable, "-m", "podspan_agent.cli", "run", "--node", NODE, "--probe-retry", "1", *LOOPBACK_METRICS],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig), loader.BPF_DIR_ENV: str(bpf_dir)},
        stderr=subprocess.PIPE, text=True,
    )
    try:
        status = _wait(lambda: ((kc.get(NTC, NODE) or {}).get("status") or {}).get("probeErrors") and
                       (kc.get(NTC, NODE) or {})["status"], "probe errors in the node status")
        [error] = status["probeErrors"]
        assert error["probe"] == "capture program" and "podspan.bpf.c" in error["message"]
        assert status["probesAttached"] is False and status["heartbeatTime"]
        source.write_text(good)  # fixed: the next retry loads it
        _wait(lambda: _target_states(kc) == {web.uid: "attached"}, "attached after the retry", timeout=60)
        assert not (kc.get(NTC, NODE) or {})["status"].get("probeErrors")
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert "cannot load the capture program" in stderr


def test_tls_libraries_in_status_and_capture_tls_switch(
    api: emu.EmulatorThread, pod_runner: pods.PodRunner, receiver: otlp_receiver.OtlpReceiver,
    tmp_path: pathlib.Path,
) -> None:
    kc = emu.KubeClient(api.url)
    cert, key = servers.self_signed_certificate(tmp_path)
    port = conftest.free_port()
    pod = pod_runner.start("web-tls", [*conftest.SAMPLE_APP, "backend", "--port", str(port), "--tls-cert", str(cert),
                                       "--tls-key", str(key)])
    pods.wait_for_port("127.0.0.1", port)
    targets = [_target(pod, "web-tls")]
    kc.create(NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                    "metadata": {"name": NODE}, "spec": _spec(targets, receiver.grpc_endpoint)})
    agent = subprocess.Popen([sys.executable, "-m", "podspan_agent.cli", "run", "--node", NODE],
                             env={**os.environ, "KUBECONFIG": str(api.kubeconfig)}, stderr=subprocess.PIPE, text=True)

    def target_tls() -> list[str] | None:
        found = ((kc.get(NTC, NODE) or {}).get("status") or {}).get("targets") or []
        if not found or found[0]["state"] != "attached":
            return None
        assert found[0]["tlsUnprobed"] == []  # Python's ssl is OpenSSL over sockets: all of it is probed
        return list(found[0]["tls"])

    try:
        [library] = _wait(target_tls, "the target's TLS library in status")
        assert library.startswith("openssl-3.") and library.endswith("(libssl.so.3): attached"), library
        assert any(name.endswith("/usr/lib/x86_64-linux-gnu/libssl.so.3") for name in bpftool.uprobe_files(agent.pid))
        context = ssl.create_default_context(cafile=cert)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        conn.request("GET", "/users/31")
        conn.getresponse().read()
        conn.close()
        spans = receiver.wait_for(lambda got: any(s.attributes.get("url.path") == "/users/31" for s in got),
                                  timeout=20)
        span = next(s for s in spans if s.attributes.get("url.path") == "/users/31")
        assert span.attributes["url.scheme"] == "https" and span.resource["k8s.pod.name"] == "web-tls"

        # capture.tls off: the probes go and the status no longer lists the library.
        kc.patch(NTC, NODE, {"spec": _spec(targets, receiver.grpc_endpoint, tls=False)})
        _wait(lambda: target_tls() == [], "no TLS library in status with capture.tls off")
        assert not bpftool.uprobe_files(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
