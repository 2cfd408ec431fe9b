"""Pure functions: models' validation, pod views, selection and the per-node render."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podspan_api import crds, models
from podspan_operator import render


def pod_body(name: str = "web-1", labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "labels": labels or {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "app"}, {"name": "sidecar"}]},
        "status": {"phase": "Running", "qosClass": "Burstable",
                   "containerStatuses": [{"name": "app", "containerID": "containerd://" + "a" * 64}]},
    }
    for path, value in extra.items():
        section, key = path.split("__")
        body[section][key] = value
    return body


def tp_body(name: str, spec: dict[str, Any], kind: str = "TraceProfile") -> dict[str, Any]:
    spec = {"export": {"otlp": {"endpoint": "http://127.0.0.1:4317"}}, **spec}
    return {"kind": kind, "metadata": {"name": name, "namespace": "shop" if kind == "TraceProfile" else None,
                                       "uid": f"uid-{name}", "generation": 1}, "spec": spec}


def tp(name: str, kind: str = "TraceProfile", **spec: Any) -> render.Profile:
    spec.setdefault("selector", {"matchLabels": {"app": "web"}})
    return render.profile_view(kind, tp_body(name, spec, kind))


def test_service_name_and_workload_resolution() -> None:
    owner = [{"kind": "ReplicaSet", "name": "web-5d4f8", "controller": True}]
    pod = render.pod_view(pod_body(labels={"pod-template-hash": "5d4f8"}, metadata__ownerReferences=owner))
    assert pod.workload == models.Workload(kind="Deployment", name="web")
    assert pod.service_name == "web"
    pod = render.pod_view(pod_body(labels={"app.kubernetes.io/name": "shopfront"},
                                   metadata__ownerReferences=owner))
    assert pod.service_name == "shopfront"
    pod = render.pod_view(pod_body(metadata__annotations={render.SERVICE_NAME_ANNOTATION: "checkout"},
                                   metadata__ownerReferences=[{"kind": "StatefulSet", "name": "db",
                                                               "controller": True}]))
    assert (pod.service_name, pod.workload) == ("checkout", models.Workload(kind="StatefulSet", name="db"))
    assert render.pod_view(pod_body()).service_name == "web-1"  # no owner: the pod name


@pytest.mark.parametrize(("resources", "qos"), [
    ([{}], "BestEffort"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}], "Burstable"),
    ([{"requests": {"cpu": "1"}}], "Burstable"),
])
def test_qos_class_when_status_lacks_it(resources: list[dict[str, Any]], qos: str) -> None:
    body = pod_body(status__qosClass=None)
    body["spec"]["containers"] = [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]
    assert render.pod_view(body).qos_class == qos


@pytest.mark.parametrize(("expressions", "selected"), [
    ([{"key": "app", "operator": "In", "values": ["web", "api"]}], True),
    ([{"key": "app", "operator": "NotIn", "values": ["web"]}], False),
    ([{"key": "tier", "operator": "NotIn", "values": ["x"]}], True),
    ([{"key": "app", "operator": "Exists"}], True),
    ([{"key": "app", "operator": "DoesNotExist"}], False),
])
def test_match_expressions(expressions: list[dict[str, Any]], selected: bool) -> None:
    profile = tp("p", selector={"matchExpressions": expressions})
    assert render.selects(profile, render.pod_view(pod_body()), {}) is selected


def test_selection_respects_namespace_phase_and_deletion() -> None:
    pod = render.pod_view(pod_body())
    assert render.selects(tp("p"), pod, {})
    other_ns = render.pod_view({**pod_body(), "metadata": {**pod_body()["metadata"], "namespace": "blog"}})
    assert not render.selects(tp("p"), other_ns, {})
    assert not render.selects(tp("p"), render.pod_view(pod_body(status__phase="Succeeded")), {})
    deleting = tp_body("p", {"selector": {}})
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert not render.selects(render.profile_view("TraceProfile", deleting), pod, {})
    cluster = tp("c", kind="ClusterTraceProfile", namespaceSelector={"matchLabels": {"trace": "on"}})
    assert not render.selects(cluster, pod, {"shop": {}})
    assert render.selects(cluster, pod, {"shop": {"trace": "on"}})


def test_node_spec_overlap_containers_and_sorting() -> None:
    pods = [render.pod_view(pod_body("web-2")), render.pod_view(pod_body("web-1"))]
    profiles = [tp("b-app-only", containers=["app"], protocols=["redis", "http"]), tp("a-all")]
    spec = render.node_spec(pods, profiles, {})
    assert [t.name for t in spec.targets] == ["web-1", "web-2"]
    app, sidecar = spec.targets[0].containers
    assert (app.name, app.profiles) == ("app", ["TraceProfile/shop/a-all", "TraceProfile/shop/b-app-only"])
    assert (sidecar.name, sidecar.profiles, sidecar.container_id) == ("sidecar", ["TraceProfile/shop/a-all"], None)
    assert app.container_id == "containerd://" + "a" * 64
    assert [p.key for p in spec.profiles] == ["TraceProfile/shop/a-all", "TraceProfile/shop/b-app-only"]
    assert spec.profiles[0].protocols == list(models.Protocol)
    assert spec.profiles[1].protocols == ["http", "redis"]
    assert spec.profiles[0].capture.redact.headers == models.DEFAULT_REDACTED_HEADERS  # private by default
    assert not spec.profiles[0].capture.body.enabled
    assert render.node_spec(list(reversed(pods)), list(reversed(profiles)), {}) == spec  # order-independent
    # equal after a round trip through the API's JSON: what makes "write only on change" work
    assert models.NodeTraceConfigSpec.model_validate(spec.to_k8s()) == spec


@pytest.mark.parametrize(("spec", "message"), [
    ({"protocols": ["smtp"]}, "spec.protocols[0]"),
    ({"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
     "spec.selector.matchExpressions[0]: operator In needs at least one value"),
    ({"selector": {"matchLabels": {"bad key!": "x"}}}, "spec.selector.matchLabels.bad key!"),
    ({"export": {"otlp": {"endpoint": "collector:4317"}}}, "spec.export.otlp.endpoint"),
    ({"export": {"otlp": {"endpoint": "http://collector:70000"}}}, "spec.export.otlp.endpoint"),
    ({"export": {"otlp": {"endpoint": "https://c:4317", "insecure": True}}}, "insecure: true contradicts"),
    ({"sampling": {"ratio": 1.5}}, "spec.sampling.ratio"),
])
def test_invalid_profiles_get_precise_messages(spec: dict[str, Any], message: str) -> None:
    profile = tp("bad", **spec)
    assert profile.spec is None and profile.error is not None
    assert message in profile.error


def test_crd_schema_rejects_what_the_models_reject() -> None:
    schema = crds.crd(models.TraceProfile)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    good = {"apiVersion": models.API_VERSION, **tp_body("p", {"selector": {}})}
    good["metadata"] = {"name": "p"}
    jsonschema.validate(good, schema, cls=jsonschema.Draft4Validator)
    for path, value in ((("spec", "protocols"), ["smtp"]), (("spec", "sampling"), {"ratio": 2})):
        bad = copy.deepcopy(good)
        bad[path[0]][path[1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft4Validator)
        with pytest.raises(pydantic.ValidationError):
            models.TraceProfile.model_validate(bad)


labels = st.dictionaries(st.sampled_from(["app", "tier", "team"]), st.sampled_from(["a", "b", "c"]), max_size=3)


@given(labels, st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]), st.sampled_from(["app", "tier"]),
       st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2))
def test_selector_matches_kubernetes_semantics(pod_labels: dict[str, str], op: str, key: str,
                                               values: list[str]) -> None:
    req = {"key": key, "operator": op, **({"values": values} if op in ("In", "NotIn") else {})}
    selector = models.LabelSelector.model_validate({"matchExpressions": [req]})
    expected = {"In": key in pod_labels and pod_labels[key] in values,
                "NotIn": key not in pod_labels or pod_labels[key] not in values,
                "Exists": key in pod_labels, "DoesNotExist": key not in pod_labels}[op]
    assert selector.matches(pod_labels) is expected
