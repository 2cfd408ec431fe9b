"""The real node agent (`podspan-agent run`, a subprocess) against an API server that fails: lists answered
500 while it starts, its watch cut mid-way and then 410 Gone on the resume, status writes throttled (429 with
Retry-After), every answer slow. The agent keeps tracing, never exits, and its status catches up.

Figures are printed as `FIGURE ...` lines (run with -s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from podspan_demo import k8s_api_emulator as emu
from podspan_demo import otlp_receiver, pods
from tests.agent import conftest, test_node_agent
from tests.support import figures

NTC, NODE = test_node_agent.NTC, test_node_agent.NODE

NTC_WATCH = r"/nodetraceconfigs\?.*watch=true"
NTC_LIST = r"/nodetraceconfigs\?(?!.*watch=true)"
NTC_STATUS = rf"/nodetraceconfigs/{NODE}/status$"
AGENT_UA = "OpenAPI-Generator"  # the User-Agent product of the agent's Kubernetes client


def _caught_up(kc: emu.KubeClient, states: dict[str, str]) -> bool:
    """The status lists exactly `states` and was written for the spec's current generation."""
    body = kc.get(NTC, NODE) or {}
    return (test_node_agent._target_states(kc) == states
            and (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"])


def test_agent_converges_through_api_faults(
    api: emu.EmulatorThread, pod_runner: pods.PodRunner, receiver: otlp_receiver.OtlpReceiver
) -> None:
    assert api.emulator is not None
    server = api.emulator
    kc = emu.KubeClient(api.url)
    ports = [conftest.free_port(), conftest.free_port()]
    web = [pod_runner.start(f"web-{i}", [*conftest.SAMPLE_APP, "backend", "--port", str(port)])
           for i, port in enumerate(ports, start=1)]
    for port in ports:
        pods.wait_for_port("127.0.0.1", port)
    targets = [test_node_agent._target(pod, f"web-{i}") for i, pod in enumerate(web, start=1)]
    kc.create(NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                    "metadata": {"name": NODE}, "spec": test_node_agent._spec(targets[:1], receiver.grpc_endpoint)})
    # The agent starts while lists fail; its first watch is cut after one event, the resume is answered 410.
    failing_lists = emu.Fault("GET", NTC_LIST, emu.Respond(500), count=2)
    cut = emu.Fault("GET", NTC_WATCH, emu.CutWatch(after=1))
    gone = emu.Fault("GET", NTC_WATCH, emu.ExpireWatch())
    server.inject(failing_lists, cut, gone)
    agent = subprocess.Popen(
        [sys.executable, "-m", "podspan_agent.cli", "run", "--node", NODE, *test_node_agent.LOOPBACK_METRICS],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)}, stderr=subprocess.PIPE, text=True,
    )
    one, both = {web[0].uid: "attached"}, {web[0].uid: "attached", web[1].uid: "attached"}
    try:
        test_node_agent._wait(lambda: _caught_up(kc, one), "attached after two failed lists")
        assert failing_lists.hits == 2

        # Watch cut mid-way, then 410 Gone on the resume: the spec change still arrives (relist).
        stopped = time.monotonic()
        kc.patch(NTC, NODE, {"spec": test_node_agent._spec(targets, receiver.grpc_endpoint)})
        test_node_agent._wait(lambda: _caught_up(kc, both), "web-2 attached through the cut watch and the 410")
        relist_s = time.monotonic() - stopped
        assert (cut.hits, gone.hits) == (1, 1)
        lists = server.request_counts[AGENT_UA, "list", "nodetraceconfigs"]
        assert lists <= 6  # 3 at start (2 refused), one per broken watch, no relist loop
        figures.report("agent-watch-cut-then-410", converge_s=f"{relist_s:.2f}", lists=lists,
                watches=server.request_counts[AGENT_UA, "watch", "nodetraceconfigs"])

        # Status writes throttled with Retry-After while the spec changes: the agent keeps tracing, backs off.
        throttled = emu.Fault("PATCH", NTC_STATUS, emu.Respond(429, retry_after=2), None)
        server.inject(throttled)
        started = time.monotonic()
        writes_before = server.writes[AGENT_UA, "nodetraceconfigs"]
        kc.patch(NTC, NODE, {"spec": test_node_agent._spec(targets[:1], receiver.grpc_endpoint)})
        test_node_agent._get(ports[0], "/users/31")
        receiver.wait_for(lambda got: any(s.attributes.get("url.path") == "/users/31" for s in got), timeout=20)
        test_node_agent._wait(lambda: throttled.hits >= 3, "three throttled status writes")
        server.clear_faults()
        window = time.monotonic() - started
        assert throttled.hits <= window / 2 + 1, (throttled.hits, window)  # Retry-After honoured: no storm
        stopped = time.monotonic()
        test_node_agent._wait(lambda: _caught_up(kc, one), "the status after the throttling")
        throttle_s = time.monotonic() - stopped
        figures.report("agent-status-429", fault_s=f"{window:.1f}", refused=throttled.hits,
                converge_s=f"{throttle_s:.2f}",
                writes=server.writes[AGENT_UA, "nodetraceconfigs"] - writes_before)

        # Every answer takes two seconds: tracing goes on, the status still catches up.
        slow = emu.Fault("*", r"^/api", emu.Delay(2.0), None)
        server.inject(slow)
        started = time.monotonic()
        kc.patch(NTC, NODE, {"spec": test_node_agent._spec(targets, receiver.grpc_endpoint)})
        test_node_agent._wait(lambda: _caught_up(kc, both), "the status while the API is slow")
        slow_s = time.monotonic() - started
        test_node_agent._get(ports[1], "/users/32")
        receiver.wait_for(lambda got: any(s.attributes.get("url.path") == "/users/32" for s in got), timeout=20)
        server.clear_faults()
        figures.report("agent-slow-2s", converge_s=f"{slow_s:.2f}", delayed=slow.hits)
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
