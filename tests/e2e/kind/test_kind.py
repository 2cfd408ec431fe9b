"""The issue-4 scenario on a real kind cluster: real API server, kubelet, containerd and kernel.

One test, because every step starts from the state the previous one left:
1. a TraceProfile over frontend and backend: 2 matched, 2 traced, nodes 1/1, Ready=True, in `kubectl get tp`;
2. requests through frontend reach the collector as frontend server -> frontend client -> backend server
   in one trace, with the pods' Kubernetes resource attributes; an untraced pod produces nothing;
3. the selector narrowed to frontend: backend spans stop, the status follows;
4. backend scaled to 2: the new pod is traced, nothing restarted;
5. the profile deleted: the node's config emptied, the agent detached, the finalizer released.
Cluster setup and teardown: conftest.py; how to run it: docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.kind import harness, otlp_json

# Image builds and cluster creation count towards the test's time.
pytestmark = pytest.mark.timeout(3600)

NS = harness.NAMESPACE
PROFILE = "e2e"
PROFILE_FILE = harness.MANIFESTS / "traceprofile.yaml"
FINALIZER = "podspan.dev/finalizer"
FRONTEND_URL, OTHER_URL = "http://frontend:8080", "http://other:8082"
CONTAINER = "app"  # the container name in manifests/sample-app.yaml
ENVIRONMENT = "kind-e2e"  # spec.resourceAttributes of manifests/traceprofile.yaml
# Long enough for spans that were going to come to arrive: tracer hold (1 s) + idle flush + export
# delay (0.5 s) + the collector's file flush (1 s), with margin.
QUIET_S = 8.0

# Run by the image's Python inside the client pod: GET base + each path; a non-2xx answer fails the exec.
REQUEST_SCRIPT = """
import sys, urllib.request
for path in sys.argv[2:]:
    with urllib.request.urlopen(sys.argv[1] + path, timeout=10) as response:
        response.read()
"""

Spans = list[otlp_json.Span]
Probe = Callable[[], tuple[bool, Any]]


@contextlib.contextmanager
def step(progress: harness.Progress, title: str) -> Iterator[None]:
    progress(title)
    try:
        yield
    except BaseException as exc:
        exc.add_note(f"in step {title}")
        raise


def condition(status: dict[str, Any], kind: str) -> tuple[str, str] | None:
    found = [c for c in status.get("conditions", []) if c["type"] == kind]
    return (found[0]["status"], found[0]["reason"]) if found else None


def for_path(spans: Spans, path: str) -> Spans:
    return [span for span in spans if span.attributes.get("url.path") == path]


def listing(spans: Spans) -> str:
    return "\n".join(span.describe() for span in spans) or "(none)"


class Scenario:
    """The cluster as the steps see it: the profile, the node's config, pods, requests and spans."""

    def __init__(self, kube: harness.Kubectl) -> None:
        self.kube = kube
        self.node = kube.node_name()
        # Unique paths per run, so every span found belongs to one request of this run.
        self._ids = itertools.count(random.randrange(10**6, 9 * 10**6))

    def wait(self, probe: Probe, what: str, timeout: float = 120.0) -> Any:
        return harness.wait_for(probe, what, timeout=timeout, diagnose=self.kube.diagnostics)

    def paths(self, count: int) -> list[str]:
        return [f"/users/{next(self._ids)}" for _ in range(count)]

    # ---- objects
    def profile(self) -> dict[str, Any] | None:
        profile: dict[str, Any] | None = self.kube.json_or_none("-n", NS, "traceprofile", PROFILE)
        return profile

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = (self.profile() or {}).get("status") or {}
        return status

    def node_config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.kube.json("nodetraceconfig", self.node)
        return config

    def pods(self, app: str) -> list[dict[str, Any]]:
        items = self.kube.json("-n", NS, "pods", "-l", f"app.kubernetes.io/name={app}")["items"]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]

    def only_pod(self, app: str) -> dict[str, Any]:
        pods = self.pods(app)
        assert len(pods) == 1, f"one {app} pod expected, found {[p['metadata']['name'] for p in pods]}"
        return pods[0]

    def identities(self) -> dict[str, tuple[str, int]]:
        """name -> (uid, restarts) of the Podspan components and the sample app pods."""
        pods = [*self.kube.json("-n", harness.SYSTEM_NAMESPACE, "pods")["items"],
                *self.pods("frontend"), *self.pods("backend")]
        return {pod["metadata"]["name"]: (pod["metadata"]["uid"],
                                          sum(c["restartCount"] for c in pod["status"].get("containerStatuses", [])))
                for pod in pods}

    def select(self, apps: list[str]) -> None:
        selector = {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": apps}]}
        self.kube("-n", NS, "patch", "traceprofile", PROFILE, "--type=merge",
                  f"--patch={json.dumps({'spec': {'selector': selector}})}")

    # ---- probes for wait()
    def settled(self, matched: int, traced: int) -> Probe:
        """The operator processed the current generation: these counts, 1/1 nodes, Ready."""

        def probe() -> tuple[bool, Any]:
            profile = self.profile() or {}
            status = profile.get("status") or {}
            return (status.get("observedGeneration") == profile.get("metadata", {}).get("generation")
                    and (status.get("matchedPods"), status.get("tracedPods")) == (matched, traced)
                    and status.get("nodes") == {"ready": 1, "total": 1}
                    and condition(status, "Ready") == ("True", "Tracing")), status

        return probe

    def applied(self, pod_names: set[str]) -> Probe:
        """The node's config targets exactly these pods, and its agent applied it with every container attached."""

        def probe() -> tuple[bool, Any]:
            config = self.node_config()
            spec, status = config.get("spec", {}), config.get("status") or {}
            targets, reported = spec.get("targets", []), status.get("targets", [])
            return ({t["name"] for t in targets} == pod_names
                    and status.get("observedGeneration") == config["metadata"]["generation"]
                    and len(reported) == sum(len(t["containers"]) for t in targets)
                    and {t["state"] for t in reported} <= {"attached"}
                    and {t["podUID"] for t in reported} == {t["uid"] for t in targets}
                    and status.get("probesAttached") is bool(targets)), config

        return probe

    def exported(self, at_least: int) -> Probe:
        """The profile's spansExported (summed from the agents' counters) reached `at_least`."""

        def probe() -> tuple[bool, Any]:
            status = self.status()
            return status.get("spansExported", 0) >= at_least, status

        return probe

    def profile_gone(self) -> tuple[bool, Any]:
        profile = self.profile()
        return profile is None, profile

    # ---- traffic and spans
    def request(self, base_url: str, paths: list[str]) -> None:
        self.kube("-n", NS, "exec", "client", "--", "/opt/podspan/venv/bin/python", "-c", REQUEST_SCRIPT,
                  base_url, *paths, timeout=120)

    def spans(self) -> Spans:
        read = f"if [ -e {harness.TRACES_FILE} ]; then cat {harness.TRACES_FILE}; fi"
        done = self.kube("-n", NS, "exec", "deployment/otel-collector", "--container=reader", "--",
                         "sh", "-c", read, timeout=60)
        return otlp_json.parse(done.stdout)

    def wait_spans(self, paths: list[str], per_path: int) -> Spans:
        """Every span, once each path has at least `per_path` (whether they are right is asserted after)."""
        latest: Spans = []

        def probe() -> tuple[bool, Any]:
            latest[:] = self.spans()
            found = {path: listing(for_path(latest, path)) for path in paths}
            return all(len(for_path(latest, path)) >= per_path for path in paths), found

        self.wait(probe, f"{per_path} spans for each of {paths}", timeout=90)
        return latest


def one(spans: Spans, kind: str, deployment: str, path: str) -> otlp_json.Span:
    found = [span for span in spans if span.kind == kind and span.resource.get("k8s.deployment.name") == deployment]
    assert len(found) == 1, f"{path}: expected one {kind} span of {deployment}, got:\n{listing(spans)}"
    return found[0]


def assert_trace(spans: Spans, path: str) -> tuple[otlp_json.Span, otlp_json.Span, otlp_json.Span]:
    """One request's spans: frontend server -> frontend client -> backend server in one trace, nothing else."""
    server = one(spans, "server", "frontend", path)
    client = one(spans, "client", "frontend", path)
    backend = one(spans, "server", "backend", path)
    shown = f"{path}:\n{listing(spans)}"
    assert len(spans) == 3, f"exactly three spans expected for {shown}"
    assert server.parent_span_id is None, f"the frontend server span should be the root, {shown}"
    assert {client.trace_id, backend.trace_id} == {server.trace_id}, f"one trace expected, {shown}"
    assert client.parent_span_id == server.span_id, f"client span not under the frontend server span, {shown}"
    assert backend.parent_span_id == client.span_id, f"backend span not under the client span, {shown}"
    for span in (server, client, backend):
        assert span.attributes.get("http.request.method") == "GET", span.attributes
        assert span.attributes.get("http.response.status_code") == 200, span.attributes
    for span in (server, backend):
        assert span.name == "GET /users/{id}", span.describe()
        assert span.attributes.get("http.route") == "/users/{id}", span.attributes
    return server, client, backend


def assert_resource(span: otlp_json.Span, pod: dict[str, Any], app: str, node: str) -> None:
    [status] = [c for c in pod["status"]["containerStatuses"] if c["name"] == CONTAINER]
    expected = {
        "k8s.namespace.name": NS,
        "k8s.pod.name": pod["metadata"]["name"],
        "k8s.pod.uid": pod["metadata"]["uid"],
        "k8s.container.name": CONTAINER,
        "k8s.deployment.name": app,
        "k8s.node.name": node,
        "service.name": app,  # from the app.kubernetes.io/name label
        "container.id": status["containerID"].partition("://")[2],  # containerd://<hex> -> <hex>
        "deployment.environment.name": ENVIRONMENT,
    }
    assert {key: span.resource.get(key) for key in expected} == expected, span.describe()


def printer_columns(kube: harness.Kubectl) -> dict[str, str]:
    """`kubectl get tp e2e -o wide` as header -> cell. kubectl pads columns with 3 spaces, and one header
    ("NODES READY") holds a single space, so cells split on runs of 2+."""
    header, row = kube("-n", NS, "get", "traceprofile", PROFILE, "-o", "wide").stdout.strip().splitlines()
    names, cells = re.split(r"\s{2,}", header.strip()), re.split(r"\s{2,}", row.strip())
    assert len(names) == len(cells), (header, row)
    return dict(zip(names, cells, strict=True))


def event_reasons(kube: harness.Kubectl) -> tuple[bool, Any]:
    events = kube.json("-n", NS, "events", "--field-selector",
                       f"involvedObject.kind=TraceProfile,involvedObject.name={PROFILE}")["items"]
    reasons = sorted({event["reason"] for event in events})
    return "Tracing" in reasons, reasons


def test_trace_profile_lifecycle_on_kind(kube: harness.Kubectl, progress: harness.Progress) -> None:
    sc = Scenario(kube)
    frontend, backend = sc.only_pod("frontend"), sc.only_pod("backend")
    frontend_name, backend_name = frontend["metadata"]["name"], backend["metadata"]["name"]

    with step(progress, "1. profile applied: 2 matched, 2 traced, nodes 1/1, Ready"):
        kube("apply", "-f", PROFILE_FILE)
        status = sc.wait(sc.settled(matched=2, traced=2), "2 matched, 2 traced, 1/1 nodes, Ready", timeout=180)
        assert condition(status, "Degraded") == ("False", "AsExpected"), status
        sc.wait(sc.applied({frontend_name, backend_name}), "the agent attached to frontend and backend")
        profile = sc.profile()
        assert profile is not None and FINALIZER in profile["metadata"].get("finalizers", []), profile
        columns = printer_columns(kube)
        columns.pop("AGE")
        assert columns == {"NAME": PROFILE, "MATCHED": "2", "TRACED": "2", "NODES READY": "1", "NODES": "1",
                           "READY": "True", "REASON": "Tracing"}
        sc.wait(lambda: event_reasons(kube), "an Event with reason Tracing on the profile", timeout=60)

    with step(progress, "2. traffic: one trace per request, Kubernetes attributes, untraced pod silent"):
        untraced = sc.paths(3)
        sc.request(OTHER_URL, untraced)  # first: by the time the traced spans arrive, these would have too
        paths = sc.paths(5)
        sc.request(FRONTEND_URL, paths)
        spans = sc.wait_spans(paths, per_path=3)
        for path in paths:
            server, client, back = assert_trace(for_path(spans, path), path)
            assert_resource(server, frontend, "frontend", sc.node)
            assert_resource(client, frontend, "frontend", sc.node)
            assert_resource(back, backend, "backend", sc.node)
        assert not [span for path in untraced for span in for_path(spans, path)]
        # Nothing but the selected pods is traced at all: not other, client, the collector or system pods.
        assert {span.resource.get("k8s.deployment.name") for span in spans} == {"frontend", "backend"}, \
            listing(spans)
        sc.wait(sc.exported(at_least=3 * len(paths)), "the exported spans counted in the profile's status",
                timeout=60)

    with step(progress, "3. selector narrowed to frontend: backend spans stop, status follows"):
        sc.select(["frontend"])
        sc.wait(sc.settled(matched=1, traced=1), "1 matched, 1 traced, 1/1 nodes, Ready")
        sc.wait(sc.applied({frontend_name}), "the agent dropped the backend")
        paths = sc.paths(3)
        sc.request(FRONTEND_URL, paths)
        sc.wait_spans(paths, per_path=2)
        time.sleep(QUIET_S)  # a backend span, had one been captured, would be exported by now
        spans = sc.spans()
        for path in paths:
            found = for_path(spans, path)
            server = one(found, "server", "frontend", path)
            client = one(found, "client", "frontend", path)
            assert len(found) == 2, f"{path}: only the frontend's two spans expected:\n{listing(found)}"
            assert (client.trace_id, client.parent_span_id) == (server.trace_id, server.span_id), listing(found)

    with step(progress, "4. backend scaled to 2: the new pod is traced, nothing restarts"):
        sc.select(["frontend", "backend"])
        sc.wait(sc.settled(matched=2, traced=2), "backend selected again")
        before = sc.identities()
        kube("-n", NS, "scale", "deployment/backend", "--replicas=2")
        kube.rollout(NS, "deployment/backend")
        backends = {pod["metadata"]["name"]: pod for pod in sc.pods("backend")}
        [new] = [name for name in backends if name != backend_name]
        sc.wait(sc.settled(matched=3, traced=3), "3 matched, 3 traced, 1/1 nodes, Ready")
        sc.wait(sc.applied({frontend_name, *backends}), "the agent attached to both backends")
        # kube-proxy picks a backend at random per connection: 20 requests all missing the new pod
        # would be a one-in-a-million event.
        paths = sc.paths(20)
        sc.request(FRONTEND_URL, paths)
        spans = sc.wait_spans(paths, per_path=3)
        served_by = set()
        for path in paths:
            _, _, back = assert_trace(for_path(spans, path), path)
            name = str(back.resource.get("k8s.pod.name"))
            assert name in backends, back.describe()
            assert_resource(back, backends[name], "backend", sc.node)
            served_by.add(name)
        assert new in served_by, f"no request reached the new pod {new}: {served_by}"
        after = sc.identities()
        assert {name: after.get(name) for name in before} == before, "a pod was replaced or restarted"

    with step(progress, "5. profile deleted: node config emptied, agent detached, finalizer released"):
        kube("-n", NS, "delete", "traceprofile", PROFILE, "--wait=false")
        sc.wait(sc.profile_gone, "the profile gone (finalizer released)")
        sc.wait(sc.applied(set()), "an empty NodeTraceConfig applied by the agent, probes detached")
        assert sc.node_config()["spec"].get("profiles", []) == []
        paths = sc.paths(3)
        sc.request(FRONTEND_URL, paths)
        time.sleep(QUIET_S)
        assert not [span for path in paths for span in for_path(sc.spans(), path)]
