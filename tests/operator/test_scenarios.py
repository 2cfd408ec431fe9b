"""End-to-end operator scenarios: real kopf, real HTTP API emulator, a scripted agent writing status."""

from __future__ import annotations

from podspan_operator import kube
from tests.operator.conftest import (
    CTP,
    NTC,
    TP,
    agent_report,
    condition,
    node_config,
    profile,
    profile_when,
    run_pod,
    targets,
    wait_for,
)


def test_apply_profile_targets_status_and_ready(kc, start_operator):
    kc.ensure_namespace("shop")
    for node in ("n1", "n2", "n3"):
        kc.create_node(node)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    run_pod(kc, "web-2", "shop", {"app": "web"}, "n2")
    run_pod(kc, "db-1", "shop", {"app": "db"}, "n2")
    start_operator()
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    key = "TraceProfile/shop/web"

    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": [key]}, "n1 targets")
    wait_for(lambda: targets(kc, "n2") == {"shop/web-2": [key]}, "n2 targets")
    assert targets(kc, "n3") == {}
    n1 = node_config(kc, "n1")
    assert n1 is not None
    pod = kc.get("v1/pods", "web-1", "shop")
    assert pod is not None
    target = n1.spec.targets[0]
    assert target.uid == pod["metadata"]["uid"]
    assert target.qos_class == "BestEffort"
    assert target.containers[0].container_id == pod["status"]["containerStatuses"][0]["containerID"]
    assert [p.key for p in n1.spec.profiles] == [key]
    assert "http" in n1.spec.profiles[0].protocols  # omitted protocols resolve to all of them

    # New node configs whose agents have not reported yet: applying, not (yet) silent.
    wait_for(lambda: condition(kc.get(TP, "web", "shop"), "Ready") == ("False", "Applying"),
             "not ready before agents report")
    agent_report(kc, "n1", exported=5)
    agent_report(kc, "n2", exported=7, lost=0)
    body = profile_when(kc, TP, "web", "shop", lambda b: condition(b, "Ready") == ("True", "Tracing"),
                        "both nodes reporting")
    assert condition(body, "Degraded") == ("False", "AsExpected")
    status = body["status"]
    assert status["matchedPods"] == 2
    assert status["tracedPods"] == 2
    assert status["nodes"] == {"ready": 2, "total": 2}
    assert status["spansExported"] == 12  # summed over nodes
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert "podspan.dev/finalizer" in body["metadata"]["finalizers"]
    wait_for(lambda: any(e["reason"] == "Tracing" and e["involvedObject"]["name"] == "web"
                         for e in kc.list("v1/events", "shop")), "an Event for the Ready transition")


def _setup(kc, nodes=("n1", "n2")):
    kc.ensure_namespace("shop")
    for node in nodes:
        kc.create_node(node)


def test_label_change_moves_pod_in_and_out(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    run_pod(kc, "other", "shop", {"app": "other"}, "n1")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    start_operator()
    key = "TraceProfile/shop/web"
    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": [key]}, "initial targets")
    kc.patch("v1/pods", "other", {"metadata": {"labels": {"app": "web"}}}, "shop")
    wait_for(lambda: targets(kc, "n1") == {"shop/other": [key], "shop/web-1": [key]}, "pod moved in")
    kc.patch("v1/pods", "web-1", {"metadata": {"labels": {"app": None}}}, "shop")
    wait_for(lambda: targets(kc, "n1") == {"shop/other": [key]}, "pod moved out")
    wait_for(lambda: (kc.get(TP, "web", "shop") or {}).get("status", {}).get("matchedPods") == 1, "matched")


def test_pod_rescheduled_to_another_node(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    start_operator()
    wait_for(lambda: "shop/web-1" in targets(kc, "n1"), "on n1")
    kc.delete("v1/pods", "web-1", "shop")
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n2")
    wait_for(lambda: "shop/web-1" in targets(kc, "n2") and targets(kc, "n1") == {}, "moved to n2")


def test_container_restart_updates_container_id(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1", container_id="a" * 64)
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    start_operator()

    def container_id():
        config = node_config(kc, "n1")
        return config.spec.targets[0].containers[0].container_id if config and config.spec.targets else None

    wait_for(lambda: container_id() == "containerd://" + "a" * 64, "first container id")
    kc.mark_pod_running("web-1", "shop", "b" * 64, ip="127.0.0.1")
    wait_for(lambda: container_id() == "containerd://" + "b" * 64, "restarted container id")


def test_overlapping_profiles_keep_their_own_settings(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web", "tier": "front"}, "n1")
    kc.create(TP, profile("all-web", "shop", {"app": "web"}, protocols=["http"],
                          sampling={"ratio": 0.5}))
    kc.create(TP, profile("front", "shop", {"tier": "front"}, protocols=["grpc", "http2"],
                          containers=["app", "sidecar"]))
    start_operator()
    both = ["TraceProfile/shop/all-web", "TraceProfile/shop/front"]
    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": both}, "both profiles")
    config = node_config(kc, "n1")
    assert config is not None
    assert config.spec.targets[0].containers[0].profiles == both
    settings = {p.key: p for p in config.spec.profiles}
    assert settings[both[0]].protocols == ["http"] and settings[both[0]].sampling.ratio == 0.5
    assert settings[both[1]].protocols == ["http2", "grpc"] and settings[both[1]].sampling.ratio == 1.0


def test_invalid_profile_is_isolated(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    bad = profile("bad", "shop", {"app": "web"}, protocols=["http", "smtp"])
    bad["spec"]["export"]["otlp"]["endpoint"] = "http://collector:99999"
    kc.create(TP, bad)
    kc.create(TP, profile("good", "shop", {"app": "web"}))
    start_operator()
    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": ["TraceProfile/shop/good"]}, "good profile only")
    body = profile_when(kc, TP, "bad", "shop", lambda b: condition(b, "Ready") is not None, "bad status")
    assert condition(body, "Ready") == ("False", "InvalidSpec")
    assert condition(body, "Degraded") == ("True", "InvalidSpec")
    message = next(c["message"] for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.protocols[1]" in message and "spec.export.otlp.endpoint" in message
    wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "InvalidSpec" and e["involvedObject"]["name"]
                         == "bad" for e in kc.list("v1/events", "shop")), "a Warning Event")


def test_profile_deletion_removes_targets_then_releases_finalizer(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    kc.create(TP, profile("keep", "shop", {"app": "web"}))
    start_operator()
    wait_for(lambda: targets(kc, "n1") == {"shop/web-1": ["TraceProfile/shop/keep", "TraceProfile/shop/web"]},
             "targets")
    wait_for(lambda: "podspan.dev/finalizer" in ((kc.get(TP, "web", "shop") or {}).get("metadata") or {})
             .get("finalizers", []), "finalizer")
    kc.delete(TP, "web", "shop")
    wait_for(lambda: kc.get(TP, "web", "shop") is None, "profile gone (finalizer released)")
    assert targets(kc, "n1") == {"shop/web-1": ["TraceProfile/shop/keep"]}
    config = node_config(kc, "n1")
    assert config is not None and [p.key for p in config.spec.profiles] == ["TraceProfile/shop/keep"]


def test_operator_restart_same_state_no_writes(kc, start_operator):
    _setup(kc, nodes=("n1", "n2", "n3"))
    for i in range(6):
        run_pod(kc, f"web-{i}", "shop", {"app": "web"}, f"n{i % 3 + 1}")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    first = start_operator()
    wait_for(lambda: all(len(targets(kc, n)) == 2 for n in ("n1", "n2", "n3")), "targets")
    for node in ("n1", "n2", "n3"):
        agent_report(kc, node)
    wait_for(lambda: (kc.get(TP, "web", "shop") or {}).get("status", {}).get("nodes") == {"ready": 3, "total": 3}
             and condition(kc.get(TP, "web", "shop"), "Degraded") == ("False", "AsExpected"), "settled")
    snapshot = {n: kc.get(NTC, n) for n in ("n1", "n2", "n3")}
    profile_before = kc.get(TP, "web", "shop")
    first.stop()

    second = start_operator()  # returns after its first full pass over every node and profile
    kc.patch("v1/pods", "web-0", {"metadata": {"annotations": {"touched": "yes"}}}, "shop")  # a no-op change
    wait_for(lambda: second.reconciler.passes >= 2, "a pass after the no-op change")
    assert second.writes == 0
    assert {n: kc.get(NTC, n) for n in ("n1", "n2", "n3")} == snapshot
    assert (kc.get(TP, "web", "shop") or {})["metadata"]["resourceVersion"] == \
        (profile_before or {})["metadata"]["resourceVersion"]


def test_deleted_node_config_is_garbage_collected(kc, start_operator):
    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n2")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    start_operator()
    wait_for(lambda: kc.get(NTC, "n2") is not None and kc.get(NTC, "n1") is not None, "configs for all nodes")
    kc.delete("v1/nodes", "n2")
    wait_for(lambda: kc.get(NTC, "n2") is None, "config of the deleted node removed")
    assert kc.get(NTC, "n1") is not None


def test_silent_node_degrades_but_does_not_block(kc, start_operator):
    import datetime

    _setup(kc)
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    run_pod(kc, "web-2", "shop", {"app": "web"}, "n2")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    start_operator()
    wait_for(lambda: targets(kc, "n1") and targets(kc, "n2"), "targets")
    agent_report(kc, "n1", exported=3, lost=2, probe_errors=1)
    agent_report(kc, "n2", exported=4, heartbeat=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    body = profile_when(kc, TP, "web", "shop", lambda b: b.get("status", {}).get("spansExported") == 7,
                        "both reports aggregated")
    assert condition(body, "Ready") == ("True", "Tracing")  # despite the silent node
    assert condition(body, "Degraded") == ("True", "NodesNotReporting")
    assert body["status"]["nodes"] == {"ready": 1, "total": 2}
    assert body["status"]["tracedPods"] == 1
    assert body["status"]["spansExported"] == 7 and body["status"]["eventsLost"] == 2
    agent_report(kc, "n2", exported=4)
    wait_for(lambda: condition(kc.get(TP, "web", "shop"), "Degraded") == ("True", "ProbeErrors"), "probe errors")
    wait_for(lambda: any(e["reason"] == "NodesNotReporting" and e["type"] == "Warning"
                         for e in kc.list("v1/events", "shop")), "a Warning Event")


def test_cluster_profile_follows_namespace_labels(kc, start_operator):
    _setup(kc)
    kc.ensure_namespace("blog")
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    run_pod(kc, "web-2", "blog", {"app": "web"}, "n2")
    kc.create(CTP, {"apiVersion": "podspan.dev/v1alpha1", "kind": "ClusterTraceProfile",
                    "metadata": {"name": "traced-ns"},
                    "spec": {"namespaceSelector": {"matchLabels": {"podspan.dev/trace": "on"}},
                             "selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                             "export": {"otlp": {"endpoint": "http://127.0.0.1:4318/v1/traces",
                                                 "protocol": "http/protobuf"}}}})
    start_operator()
    kc.patch("v1/namespaces", "blog", {"metadata": {"labels": {"podspan.dev/trace": "on"}}})
    key = "ClusterTraceProfile/traced-ns"
    wait_for(lambda: targets(kc, "n2") == {"blog/web-2": [key]}, "blog pods in")
    assert targets(kc, "n1") == {}
    wait_for(lambda: condition(kc.get(CTP, "traced-ns"), "Ready") == ("False", "Applying"), "status")
    kc.patch("v1/namespaces", "blog", {"metadata": {"labels": {"podspan.dev/trace": None}}})
    wait_for(lambda: targets(kc, "n2") == {}, "blog pods out")


def test_burst_of_pod_changes_is_coalesced(kc, start_operator):
    _setup(kc, nodes=("n1",))
    for i in range(60):
        run_pod(kc, f"web-{i}", "shop", {"app": "web"}, "n1")
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    op = start_operator()
    wait_for(lambda: len(targets(kc, "n1")) == 60, "all pods targeted")
    before = op.writes
    for i in range(60):
        kc.patch("v1/pods", f"web-{i}", {"metadata": {"labels": {"app": "api"}}}, "shop")
    wait_for(lambda: targets(kc, "n1") == {}, "all pods out")
    # 60 label changes: without coalescing this is 60 node writes (plus status writes).
    assert op.writes - before < 20


async def test_peering_object_is_created_once(kc):
    # The `api` fixture behind kc exports KUBECONFIG, which is how the operator finds the API.
    await kube.ensure_peering("podspan-operator")
    await kube.ensure_peering("podspan-operator")  # already there: fine
    assert kc.get("kopf.dev/v1/clusterkopfpeerings", "podspan-operator") is not None
