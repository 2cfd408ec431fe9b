"""Offline checks of what the kind e2e relies on (they run everywhere, the cluster test only with kind):
the OTLP/JSON reader, and the files that must agree with each other for the scenario to mean anything.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import yaml

from tests.e2e.kind import harness, otlp_json


def _docs(path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((harness.MANIFESTS / path).read_text()) if doc]


def _request(resource: dict[str, str], spans: list[dict[str, Any]]) -> str:
    attributes = [{"key": k, "value": {"stringValue": v}} for k, v in resource.items()]
    return json.dumps({"resourceSpans": [{"resource": {"attributes": attributes},
                                          "scopeSpans": [{"scope": {"name": "podspan"}, "spans": spans}]}]})


def test_otlp_json_lines_become_spans() -> None:
    server = {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "parentSpanId": "",
              "name": "GET /users/{id}", "kind": 2, "attributes": [
                  {"key": "url.path", "value": {"stringValue": "/users/7"}},
                  {"key": "http.response.status_code", "value": {"intValue": "200"}},
                  {"key": "ok", "value": {"boolValue": True}},
                  {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}}]}
    client = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "00000000000000aa",
              "parentSpanId": "eee19b7ec3c1b174", "name": "GET", "kind": "SPAN_KIND_CLIENT"}
    text = (_request({"k8s.pod.name": "frontend-1"}, [server, client]) + "\n\n"
            + _request({"k8s.pod.name": "backend-1"}, [])
            + "\n" + '{"resourceSpans": [{"resou')  # the collector is still writing this line
    first, second = otlp_json.parse(text)
    assert (first.trace_id, first.span_id, first.parent_span_id, first.kind) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", None, "server")
    assert first.attributes == {"url.path": "/users/7", "http.response.status_code": 200, "ok": True,
                                "tags": ["a", 1]}
    assert (second.kind, second.parent_span_id, second.attributes) == ("client", first.span_id, {})
    assert first.resource == second.resource == {"k8s.pod.name": "frontend-1"}


def test_images_come_from_the_dockerfiles_and_match_the_e2e_workloads() -> None:
    images = harness.config_images()
    assert set(images) == set(harness.DOCKERFILES)
    assert all((harness.ROOT / dockerfile).is_file() for dockerfile in harness.DOCKERFILES.values())
    e2e = yaml.safe_load((harness.MANIFESTS / "kustomization.yaml").read_text())["images"]
    # The sample app runs from the agent image the test builds and loads: the same reference.
    assert {i["name"]: f"{i['newName']}:{i['newTag']}" for i in e2e} == {"podspan-agent": images["podspan-agent"]}


def test_kind_node_provides_every_host_path_of_the_agent() -> None:
    daemonset = yaml.safe_load((harness.ROOT / "config" / "agent" / "daemonset.yaml").read_text())
    host_paths = {v["hostPath"]["path"] for v in daemonset["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}
    kind = yaml.safe_load(harness.KIND_CONFIG.read_text())
    [node] = kind["nodes"]
    mounted = {m["containerPath"] for m in node["extraMounts"]}
    # A kind node has its own cgroup2 at /sys/fs/cgroup (the kubelet's pods live there), and kind
    # mounts the host's /lib/modules into every node by itself.
    assert host_paths <= mounted | {"/sys/fs/cgroup", "/lib/modules"}
    assert "/lib/modules" not in mounted  # docker refuses the duplicate of kind's own mount


def test_profile_exports_to_the_collector_which_writes_where_the_test_reads() -> None:
    [profile] = _docs("traceprofile.yaml")
    configmap, deployment, service = _docs("otel-collector.yaml")
    assert profile["metadata"]["namespace"] == harness.NAMESPACE
    otlp = profile["spec"]["export"]["otlp"]
    endpoint = urllib.parse.urlsplit(otlp["endpoint"])
    assert endpoint.hostname == f"{service['metadata']['name']}.{harness.NAMESPACE}.svc.cluster.local"
    [grpc_port] = [p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-grpc"]
    assert (otlp["protocol"], endpoint.port) == ("grpc", grpc_port)

    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"0.0.0.0:{grpc_port}"
    pipeline = config["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"] and "file" in pipeline["exporters"]
    assert config["exporters"]["file"]["path"] == harness.TRACES_FILE
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    data_dir = harness.TRACES_FILE.rsplit("/", 1)[0]
    for name in ("collector", "reader"):
        assert data_dir in {m["mountPath"] for m in containers[name]["volumeMounts"]}, name
