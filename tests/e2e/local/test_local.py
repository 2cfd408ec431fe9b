"""The whole product on one machine, the way a user meets it: apply a TraceProfile, read its status,
get traces. Separate processes (emulated API server, podspan-operator, podspan-agent run, OTLP
receiver); pods are real processes in kubelet-named cgroups and their own network namespaces.

The steps share one installation and run in file order, each from the state the previous left.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import os
import pathlib
import signal
import time
from typing import Any

import psutil
import pytest

from podspan_agent import kernel_headers
from podspan_demo import cluster, pods
from tests.support import bpftool

NS = "shop"
PROFILE = "web"
EXPORT_QUEUE = 256  # small, so the outage step overflows it quickly
SERVER, CLIENT = 2, 3  # OTLP SpanKind values


def _skip_reason() -> str | None:
    reason = pods.require_root_tools()
    if reason is not None:
        return f"local e2e {reason}"
    try:
        kernel_headers.resolve()
    except kernel_headers.HeadersNotFound as exc:
        return str(exc)
    return None


pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
              pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> collections.abc.Iterator[cluster.LocalCluster]:
    workdir = tmp_path_factory.mktemp("e2e")
    with cluster.LocalCluster(workdir, agent_args=("--export-queue", str(EXPORT_QUEUE))) as running:
        try:
            yield running
        finally:
            for component in running.components.values():  # shown by pytest only when a step failed
                print(f"--- {component.name} (pid {component.pid}) ---\n{component.tail()}")


@pytest.fixture(scope="module")
def shop(installation: cluster.LocalCluster) -> dict[str, cluster.ClusterPod]:
    return installation.run_shop(NS)


def _apply(installation: cluster.LocalCluster, apps: list[str], **spec: Any) -> None:
    installation.apply_profile(cluster.profile(PROFILE, NS, installation.otlp_endpoint, apps, **spec))


def _counts(installation: cluster.LocalCluster) -> tuple[int, int, Any]:
    status = installation.profile_status(NS, PROFILE)
    return status.get("matchedPods", 0), status.get("tracedPods", 0), status.get("nodes")


def _spans_for(installation: cluster.LocalCluster, url_path: str) -> list[dict[str, Any]]:
    return [s for s in installation.spans() if s["attributes"].get("url.path") == url_path]


def _request_and_wait(installation: cluster.LocalCluster, pod: cluster.ClusterPod, url_path: str,
                      spans: int) -> list[dict[str, Any]]:
    """GET `url_path` from `pod` and wait until the receiver holds `spans` spans for it."""
    assert cluster.http_get(pod.url + url_path) == 200
    return cluster.wait_for(lambda: _spans_for(installation, url_path), f"{spans} spans for {url_path}",
                            until=lambda got: len(got) >= spans)


def _pod_names(spans: list[dict[str, Any]]) -> set[str]:
    return {s["resource"].get("k8s.pod.name") for s in spans}


def test_1_apply_profile_status_shows_what_is_traced(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    _apply(installation, ["frontend", "backend"])
    cluster.wait_for(lambda: _counts(installation) == (2, 2, {"ready": 1, "total": 1}), "2 matched, 2 traced, 1/1")
    cluster.wait_for(lambda: installation.condition(NS, PROFILE, "Ready") == ("True", "Tracing"), "Ready=True")
    assert installation.condition(NS, PROFILE, "Degraded") == ("False", "AsExpected")
    # What `kubectl get tp -n shop` prints, computed by the API server from the CRD's printer columns.
    [row] = installation.table(cluster.TP, NS)
    assert {k: row[k] for k in ("Name", "Matched", "Traced", "Nodes Ready", "Ready")} == {
        "Name": PROFILE, "Matched": 2, "Traced": 2, "Nodes Ready": 1, "Ready": "True"}
    node = installation.node_config()
    assert {t["uid"] for t in node["spec"]["targets"]} == {shop["frontend"].uid, shop["backend"].uid}
    assert node["status"]["probesAttached"] is True
    assert "Tracing" in installation.event_reasons(NS, PROFILE)


def test_2_traffic_becomes_one_trace_with_kubernetes_attributes(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    frontend, backend, other = shop["frontend"], shop["backend"], shop["other"]
    assert cluster.http_get(other.url + "/users/909") == 200  # nobody selects it
    spans = _request_and_wait(installation, frontend, "/users/201", 3)
    by_role = {(s["resource"]["k8s.pod.name"], s["kind"]): s for s in spans}
    fe_server, fe_client = by_role[(frontend.name, SERVER)], by_role[(frontend.name, CLIENT)]
    be_server = by_role[(backend.name, SERVER)]
    assert len({fe_server["trace_id"], fe_client["trace_id"], be_server["trace_id"]}) == 1
    assert fe_server["parent_span_id"] is None
    assert fe_client["parent_span_id"] == fe_server["span_id"]
    assert be_server["parent_span_id"] == fe_client["span_id"]
    for span, pod, app in ((fe_server, frontend, "frontend"), (be_server, backend, "backend")):
        assert span["name"] == "GET /users/{id}"
        resource = span["resource"]
        assert resource["k8s.namespace.name"] == NS
        assert resource["k8s.pod.name"] == pod.name
        assert resource["k8s.pod.uid"] == pod.uid
        assert resource["k8s.deployment.name"] == app
        assert resource["service.name"] == app
        assert resource["container.id"] == pod.local.container_id
        assert resource["k8s.node.name"] == installation.node
    assert fe_client["attributes"]["server.address"] == backend.ip
    # The backend's cache miss: Redis GET, PostgreSQL SELECT, Redis SET, each a child of its server span.
    calls = cluster.wait_for(lambda: [s for s in installation.spans() if s["parent_span_id"] == be_server["span_id"]],
                             "the backend's DB calls", until=lambda got: len(got) >= 3)
    assert sorted((s["attributes"]["db.system.name"], s["attributes"]["db.operation.name"]) for s in calls) == [
        ("postgresql", "SELECT"), ("redis", "GET"), ("redis", "SET")]
    for call in calls:
        assert call["kind"] == CLIENT and call["trace_id"] == be_server["trace_id"]
        assert call["resource"]["k8s.pod.name"] == backend.name
        peer = shop["postgres"] if call["attributes"]["db.system.name"] == "postgresql" else shop["redis"]
        assert (call["attributes"]["server.address"], call["attributes"]["server.port"]) == (peer.ip, peer.port)
    select = next(s for s in calls if s["attributes"]["db.system.name"] == "postgresql")
    assert select["attributes"]["db.query.text"] == "SELECT name FROM users WHERE id = ?"
    assert not {shop["redis"].name, shop["postgres"].name} & _pod_names(installation.spans())  # not selected
    # A later request's spans arrived, so the untraced pod's would have too.
    _request_and_wait(installation, frontend, "/users/202", 3)
    assert other.name not in _pod_names(installation.spans())
    assert not _spans_for(installation, "/users/909")


def test_3_narrowing_the_selector_stops_backend_spans_and_profile_settings_apply(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    _apply(installation, ["frontend"], filters={"excludePaths": ["/healthz"]},
           capture={"routePatterns": ["/users/{user}"], "headers": ["user-agent"]})
    cluster.wait_for(lambda: _counts(installation)[:2] == (1, 1), "1 matched, 1 traced")
    cluster.wait_for(lambda: [t["podUID"] for t in installation.node_config().get("status", {}).get("targets", [])]
                     == [shop["frontend"].uid], "the agent reports only the frontend")
    assert cluster.http_get(shop["frontend"].url + "/healthz") == 200
    spans = _request_and_wait(installation, shop["frontend"], "/users/301", 2)
    _request_and_wait(installation, shop["frontend"], "/users/302", 2)  # a barrier: 301 and healthz are done
    assert _pod_names(_spans_for(installation, "/users/301")) == {shop["frontend"].name}
    assert {s["kind"] for s in spans} == {SERVER, CLIENT}
    assert {s["name"] for s in spans} == {"GET /users/{user}"}  # the profile's route pattern
    client = next(s for s in spans if s["kind"] == CLIENT)
    assert client["attributes"]["http.request.header.user-agent"] == "sample-frontend"
    assert not any(k.startswith("http.request.header.") and k != "http.request.header.user-agent"
                   for s in spans for k in s["attributes"])
    assert not _spans_for(installation, "/healthz")


def test_4_a_new_replica_is_traced_without_restarting_anything(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    agent_pid, operator_pid = installation.components["agent"].pid, installation.components["operator"].pid
    _apply(installation, ["frontend", "backend"])
    cluster.wait_for(lambda: _counts(installation)[:2] == (2, 2), "backend selected again")
    replica = installation.run_pod(NS, "backend", {"app": "backend"},
                                   [*cluster.SAMPLE_APP, "backend", "--bind", "0.0.0.0", "--port", "8081"], 8081)
    shop["backend-2"] = replica
    cluster.wait_for(lambda: _counts(installation)[:2] == (3, 3), "3 matched, 3 traced")
    [span] = _request_and_wait(installation, replica, "/users/401", 1)
    assert span["resource"]["k8s.pod.name"] == replica.name
    assert span["resource"]["k8s.deployment.name"] == "backend"
    assert (installation.components["agent"].pid, installation.components["operator"].pid) == (agent_pid,
                                                                                                operator_pid)
    assert installation.components["agent"].running()


def _profile_counters(installation: cluster.LocalCluster) -> dict[str, Any]:
    profiles = installation.node_config().get("status", {}).get("profiles", [])
    return next((p for p in profiles if p["profile"] == f"TraceProfile/{NS}/{PROFILE}"), {})


def test_5_receiver_outage_is_bounded_counted_and_reported(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    agent = psutil.Process(installation.components["agent"].pid)
    installation.components["receiver"].stop()
    rss_before = agent.memory_info().rss
    dropped_before = _profile_counters(installation).get("spansDropped", 0)
    # Three spans per request: ten times what the exporter may hold.
    requests = EXPORT_QUEUE * 10 // 3
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: cluster.http_get(shop["frontend"].url + f"/users/5{i:03d}"),
                                 range(requests)))
    assert statuses == [200] * requests
    counters = cluster.wait_for(
        lambda: _profile_counters(installation), "drops counted in the node status", timeout=60,
        until=lambda c: c.get("spansDropped", 0) - dropped_before >= requests * 3 - 3 * EXPORT_QUEUE
        and bool(c.get("exportError")))
    # The queue is bounded: memory does not follow the traffic (a generous margin for allocator noise).
    assert agent.memory_info().rss - rss_before < 64 * 2**20
    _, reason = cluster.wait_for(lambda: installation.condition(NS, PROFILE, "Degraded"), "Degraded=True",
                                 timeout=60, until=lambda c: c[0] == "True")
    assert reason == "ExportFailing"
    [degraded] = [c for c in installation.profile_status(NS, PROFILE)["conditions"] if c["type"] == "Degraded"]
    assert installation.node in degraded["message"] and "spans dropped" in degraded["message"]
    cluster.wait_for(lambda: installation.profile_status(NS, PROFILE)["spansDropped"] >= counters["spansDropped"],
                     "the profile's status sums the node's drops")

    installation.start_receiver()  # same ports: the agent's exporter reconnects
    cluster.wait_for(lambda: cluster.http_get(shop["frontend"].url + "/users/599") == 200
                     and _spans_for(installation, "/users/599"), "spans after the receiver returned", timeout=60)
    cluster.wait_for(lambda: installation.condition(NS, PROFILE, "Degraded") == ("False", "AsExpected"),
                     "Degraded cleared", timeout=60)


def test_6_agent_and_operator_survive_sigkill(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    agent = installation.components["agent"]
    attached = bpftool.attached_programs(agent.pid)
    assert attached, "the running agent holds attached programs"
    heartbeat = installation.node_config()["status"]["heartbeatTime"]
    agent.stop(signal.SIGKILL)
    # The kernel frees programs whose last reference (the killed agent's fds) is gone.
    cluster.wait_for(lambda: not attached & bpftool.program_ids(), "the killed agent's programs unloaded")
    installation.start_agent(*installation.agent_args)
    restarted = installation.components["agent"]
    cluster.wait_for(lambda: installation.node_config()["status"], "the restarted agent reports its targets attached",
                     timeout=60, until=lambda status: status["heartbeatTime"] != heartbeat
                     and {t["state"] for t in status["targets"]} == {"attached"})
    assert bpftool.attached_programs(restarted.pid)
    _request_and_wait(installation, shop["frontend"], "/users/601", 3)

    installation.components["operator"].stop(signal.SIGKILL)
    installation.delete_pod(shop.pop("backend-2"))  # a change the operator did not see happen
    installation.start_operator()
    cluster.wait_for(lambda: _counts(installation) == (2, 2, {"ready": 1, "total": 1}), "2 matched, 2 traced")
    cluster.wait_for(lambda: len(installation.node_config()["spec"]["targets"]) == 2, "node config without it")
    assert installation.condition(NS, PROFILE, "Ready") == ("True", "Tracing")


def test_7_deleting_the_profile_detaches_everything(
    installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod]
) -> None:
    agent = installation.components["agent"]
    installation.api.delete(cluster.path(cluster.TP, NS, PROFILE))
    cluster.wait_for(lambda: installation.api.get(cluster.path(cluster.TP, NS, PROFILE)) is None,
                     "the profile gone (finalizer released)")
    cluster.wait_for(lambda: installation.node_config().get("spec", {}).get("targets") == [], "node config emptied")
    cluster.wait_for(lambda: installation.node_config().get("status", {}).get("probesAttached") is False,
                     "the agent reports its probes detached")
    assert not bpftool.attached_programs(agent.pid)
    assert agent.running()
    assert cluster.http_get(shop["frontend"].url + "/users/701") == 200
    time.sleep(2)  # longer than the tracer's idle flush plus the export delay, had anything been captured
    assert not _spans_for(installation, "/users/701")


def test_stopping_leaves_no_cgroups_namespaces_or_processes(tmp_path: pathlib.Path) -> None:
    with cluster.LocalCluster(tmp_path) as installation:
        pod = installation.run_pod(NS, "solo", {"app": "solo"},
                                   [*cluster.SAMPLE_APP, "backend", "--bind", "0.0.0.0", "--port", "8081"], 8081)
        pids = [c.pid for c in installation.components.values()] + [pod.local.pid]
        netns = pod.local.netns
    assert not pod.local.cgroup_dir.exists()
    assert netns is not None and not os.path.exists(f"/run/netns/{netns}")
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
