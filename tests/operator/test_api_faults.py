"""The real operator (kopf over HTTP) against an API server that fails: write errors (500, 429 with
Retry-After), watch streams cut mid-way, 410 Gone on the resume with failing relists, slow answers.
Each scenario asserts the end state after the faults stop, and bounds the writes made meanwhile.

Figures (time to converge once the faults stop, writes made) are printed as `FIGURE ...` lines
(run with -s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes.aio import client as k8s

from podspan_demo import k8s_api_emulator as emu
from podspan_operator import kube, telemetry
from tests.operator import conftest
from tests.support import figures

KEY = "TraceProfile/shop/web"
POD_WATCH = r"/api/v1/pods\?.*watch=true"
POD_LIST = r"/api/v1/pods(\?(?!.*watch=true).*)?$"
NODE_WATCH = r"/api/v1/nodes\?.*watch=true"


def _server(api: emu.EmulatorThread) -> emu.APIServer:
    assert api.emulator is not None
    return api.emulator


def _writes(op: conftest.Operator) -> dict[str, int]:
    """The operator's write attempts so far, by kind (its own metrics; failed attempts included)."""
    registry = op.reconciler.api.metrics.registry
    kinds = (telemetry.NODE_CONFIG, telemetry.NODE_CONFIG_DELETE, telemetry.PROFILE_STATUS, telemetry.EVENT)
    return {kind: int(registry.get_sample_value("podspan_operator_api_writes_total", {"kind": kind}) or 0)
            for kind in kinds}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}


def _status(kc: emu.KubeClient) -> dict:
    return (kc.get(conftest.TP, "web", "shop") or {}).get("status") or {}


def _ready(kc: emu.KubeClient) -> bool:
    return conftest.condition(kc.get(conftest.TP, "web", "shop"), "Ready") == ("True", "Tracing")


def _tracing(kc: emu.KubeClient, start_operator, pods: dict[str, str]) -> conftest.Operator:
    """Nodes n1, n2; the web profile over `pods` (name -> node), Ready with every agent reporting."""
    kc.ensure_namespace("shop")
    for node in ("n1", "n2"):
        kc.create_node(node)
    for name, node in pods.items():
        conftest.run_pod(kc, name, "shop", {"app": "web"}, node)
    kc.create(conftest.TP, conftest.profile("web", "shop", {"app": "web"}))
    op = start_operator()
    nodes = set(pods.values())
    conftest.wait_for(lambda: all(conftest.targets(kc, n) for n in nodes), "initial targets")
    for node in nodes:
        conftest.agent_report(kc, node)
    conftest.wait_for(lambda: _ready(kc), "Ready before the faults")
    return op


@pytest.mark.parametrize(("answer", "min_gap"), [(emu.Respond(500), 1.0), (emu.Respond(429, retry_after=2), 2.0)],
                         ids=["500", "429-retry-after"])
def test_failing_writes_are_retried_without_a_storm(api, kc, start_operator, answer, min_gap):
    """NodeTraceConfig writes and profile status patches fail until the fault stops; the operator retries at
    its retry delay (or the server's Retry-After, whichever is longer), then converges."""
    op = _tracing(kc, start_operator, {"web-1": "n1"})
    server = _server(api)
    faults = [emu.Fault("POST", r"/nodetraceconfigs$", answer, None),
              emu.Fault("PATCH", r"/nodetraceconfigs/n2$", answer, None),
              emu.Fault("PATCH", r"/traceprofiles/web/status$", answer, None)]
    before = _writes(op)
    started = time.monotonic()
    server.inject(*faults)
    conftest.run_pod(kc, "web-2", "shop", {"app": "web"}, "n2")  # needs a new NodeTraceConfig and a new status
    conftest.wait_for(lambda: sum(f.hits for f in faults) >= 3, "three refused attempts", timeout=30)
    server.clear_faults()
    window = time.monotonic() - started
    attempts = sum(f.hits for f in faults)
    during = _delta(_writes(op), before)
    # Not a storm: one attempt per pass, passes spaced by the retry delay or Retry-After (+1: the first).
    assert attempts <= window / min_gap + 1, (attempts, window)

    stopped = time.monotonic()
    before = _writes(op)
    conftest.wait_for(lambda: conftest.targets(kc, "n2") == {"shop/web-2": [KEY]},
                      "n2's NodeTraceConfig after the fault")
    conftest.wait_for(lambda: _status(kc).get("matchedPods") == 2 and _status(kc).get("nodes", {}).get("total") == 2,
             "the profile status after the fault")
    converged = time.monotonic() - stopped
    after = _delta(_writes(op), before)
    assert after.get(telemetry.NODE_CONFIG, 0) == 1  # the one write that was missing, once
    assert after.get(telemetry.PROFILE_STATUS, 0) <= 2
    conftest.agent_report(kc, "n2")
    conftest.wait_for(lambda: _ready(kc), "Ready again")
    assert op.reconciler.api.metrics.pass_failures._value.get() >= 1
    figures.report(f"operator-writes-{answer.code}", fault_s=f"{window:.1f}", refused=attempts,
            writes_during=during, converge_s=f"{converged:.2f}", writes_after=after)


def test_watch_streams_cut_mid_way(api, kc, start_operator):
    """Every watch of pods, profiles and node configs is dropped after each event it delivers; kopf resumes
    from its last resourceVersion each time, and the operator reaches the same end state as without faults."""
    kc.ensure_namespace("shop")
    for node in ("n1", "n2"):
        kc.create_node(node)
    server = _server(api)
    cut = emu.Fault("GET", r"/(pods|traceprofiles|nodetraceconfigs)\?.*watch=true", emu.CutWatch(after=1), None)
    server.inject(cut)
    op = start_operator()
    started = time.monotonic()
    before = _writes(op)
    kc.create(conftest.TP, conftest.profile("web", "shop", {"app": "web"}))
    for i, node in enumerate(("n1", "n2", "n1", "n2"), start=1):
        conftest.run_pod(kc, f"web-{i}", "shop", {"app": "web"}, node)
    conftest.wait_for(lambda: conftest.targets(kc, "n1") == {"shop/web-1": [KEY], "shop/web-3": [KEY]}
                      and conftest.targets(kc, "n2") == {"shop/web-2": [KEY], "shop/web-4": [KEY]},
                      "targets through cut watches")
    for node in ("n1", "n2"):
        conftest.agent_report(kc, node)
    conftest.wait_for(lambda: _ready(kc)
             and _status(kc).get("matchedPods") == 4, "Ready through cut watches")
    converged = time.monotonic() - started
    server.clear_faults()
    writes = _delta(_writes(op), before)
    assert cut.hits >= 10  # the streams really were cut, again and again
    # Each pod is seen twice (created, then running with its container id): at most one spec per event.
    assert writes.get(telemetry.NODE_CONFIG, 0) <= 8
    figures.report("operator-watch-cuts", cuts=cut.hits, converge_s=f"{converged:.2f}", writes=writes)


def test_gone_on_resume_relists_and_sees_what_changed_in_the_gap(api, kc, start_operator):
    """The pods watch drops; its resume is slow, then answered 410 Gone; the relist fails twice (500). Meanwhile
    a pod was deleted and another created: after the relist, the node config has exactly the pods that exist."""
    op = _tracing(kc, start_operator, {"web-1": "n1", "web-3": "n1"})
    server = _server(api)
    slow = emu.Fault("GET", POD_WATCH, emu.Delay(1.5))
    gone = emu.Fault("GET", POD_WATCH, emu.ExpireWatch())
    failing_list = emu.Fault("GET", POD_LIST, emu.Respond(500), count=2)
    server.inject(slow, gone, failing_list)
    before = _writes(op)
    assert server.drop_watches(POD_WATCH) >= 1
    conftest.wait_for(lambda: slow.hits == 1, "the resumed watch (held)")
    kc.delete("v1/pods", "web-3", "shop")  # in the gap: the operator never gets these events
    conftest.run_pod(kc, "web-4", "shop", {"app": "web"}, "n1")
    conftest.wait_for(lambda: gone.hits == 1, "410 Gone on the resume")
    stopped = time.monotonic()
    conftest.wait_for(lambda: failing_list.hits == 2, "two failed relists")
    conftest.wait_for(lambda: conftest.targets(kc, "n1") == {"shop/web-1": [KEY], "shop/web-4": [KEY]},
             "n1's targets after the relist")
    conftest.wait_for(lambda: _status(kc).get("matchedPods") == 2, "matchedPods after the relist")
    converged = time.monotonic() - stopped
    writes = _delta(_writes(op), before)
    assert writes.get(telemetry.NODE_CONFIG, 0) <= 2
    figures.report("operator-410-relist", converge_s=f"{converged:.2f}", writes=writes)


def test_node_deleted_while_not_watching_loses_its_node_config(api, kc, start_operator):
    """The nodes watch drops and its resume is answered 410 Gone; in the gap node n2 is deleted (with its pod):
    after the relist the operator deletes n2's NodeTraceConfig instead of keeping a config for a node that is gone."""
    _tracing(kc, start_operator, {"web-1": "n1", "web-2": "n2"})
    server = _server(api)
    slow = emu.Fault("GET", NODE_WATCH, emu.Delay(1.5))
    gone = emu.Fault("GET", NODE_WATCH, emu.ExpireWatch())
    server.inject(slow, gone)
    assert server.drop_watches(NODE_WATCH) >= 1
    conftest.wait_for(lambda: slow.hits == 1, "the resumed nodes watch (held)")
    kc.delete("v1/pods", "web-2", "shop")
    kc.delete("v1/nodes", "n2")  # in the gap: the operator never gets this event
    conftest.wait_for(lambda: gone.hits == 1, "410 Gone on the resume")
    conftest.wait_for(lambda: kc.get(conftest.NTC, "n2") is None, "n2's NodeTraceConfig deleted after the relist")
    assert conftest.targets(kc, "n1") == {"shop/web-1": [KEY]}
    conftest.wait_for(lambda: _status(kc).get("nodes", {}).get("total") == 1, "the status counts one node")


def test_slow_api_server(api, kc, start_operator):
    """Every answer takes a second: the operator's writes wait, nothing times out or repeats, the end state
    is the same."""
    op = _tracing(kc, start_operator, {"web-1": "n1"})
    server = _server(api)
    slow = emu.Fault("*", r"^/api", emu.Delay(1.0), None)
    server.inject(slow)
    started = time.monotonic()
    before = _writes(op)
    conftest.run_pod(kc, "web-2", "shop", {"app": "web"}, "n2")
    conftest.wait_for(lambda: conftest.targets(kc, "n2") == {"shop/web-2": [KEY]}, "n2's NodeTraceConfig while slow")
    conftest.wait_for(lambda: _status(kc).get("matchedPods") == 2, "the profile status while slow")
    converged = time.monotonic() - started
    server.clear_faults()
    writes = _delta(_writes(op), before)
    # The test's own requests are slow too: the pod's creation and its running status land a second apart,
    # two specs (without, then with the container id), one write each.
    assert writes.get(telemetry.NODE_CONFIG, 0) <= 2
    assert op.reconciler.api.metrics.pass_failures._value.get() == 0
    figures.report("operator-slow-1s", delayed=slow.hits, converge_s=f"{converged:.2f}", writes=writes)


def test_a_failing_pod_listing_never_reads_as_pods_gone(api, kc):
    """The check after a relist must fail on an error answer: read as "no pods", it would drop every target."""
    kc.ensure_namespace("shop")
    uid = conftest.run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")["metadata"]["uid"]
    _server(api).inject(emu.Fault("GET", POD_LIST, emu.Respond(500)))

    async def listings() -> tuple[BaseException | set[str], set[str]]:
        client = await kube.Api.connect()
        try:
            failed = await asyncio.gather(client.pod_uids(), return_exceptions=True)
            return failed[0], await client.pod_uids()
        finally:
            await client.close()

    failed, listed = asyncio.run(listings())
    assert isinstance(failed, k8s.ApiException) and failed.status == 500
    assert listed == {uid}
