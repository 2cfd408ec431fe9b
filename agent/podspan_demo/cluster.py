"""A whole Podspan installation on this machine, for the local e2e tests and the cluster demo.

Separate processes, as in a cluster: an emulated Kubernetes API (the test-support emulator), the
operator, one node agent and an OTLP receiver. Pods are real processes in kubelet-named cgroups
and their own network namespaces, with matching Deployment, ReplicaSet and Pod objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from podspan_demo import pods, sample_app, servers

REPO = pathlib.Path(__file__).resolve().parents[2]
GROUP, VERSION = "podspan.dev", "v1alpha1"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
SAMPLE_APP = [sys.executable, "-m", "podspan_demo.sample_app"]

T = TypeVar("T")


def wait_for(probe: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.2,
             until: Callable[[T], object] = bool) -> T:
    """Poll `probe()` until `until(value)` holds (by default: the value is truthy) and return the value;
    raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not until(value):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
        value = probe()
    return value


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Api:
    """Plain JSON over HTTP to the (emulated, unauthenticated) API server, as kubectl would send it."""

    MERGE = "application/merge-patch+json"

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                accept: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type, "Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")[:300]) from None

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return typing.cast(dict[str, Any], self.request("GET", path))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return typing.cast(dict[str, Any], self.request("POST", path, body))

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return typing.cast(dict[str, Any], self.request("PATCH", path, body, content_type=self.MERGE))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)


def path(resource: str, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
    """`podspan.dev/v1alpha1/traceprofiles`, `v1/pods`, `apps/v1/replicasets` -> the REST path."""
    parts = resource.split("/")
    prefix = f"/api/{parts[0]}" if len(parts) == 2 else f"/apis/{parts[0]}/{parts[1]}"
    found = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{parts[-1]}"
    return found + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


TP, NTC = "podspan.dev/v1alpha1/traceprofiles", "podspan.dev/v1alpha1/nodetraceconfigs"


@dataclasses.dataclass
class Component:
    """One process of the installation, its output in `log`."""

    name: str
    process: subprocess.Popen[str]
    log: pathlib.Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process (only ever one this module started) and reap it."""
        if self.running():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class ClusterPod:
    """A running pod: the local process tree and the Pod object that describes it."""

    name: str
    namespace: str
    uid: str
    ip: str
    port: int
    local: pods.Pod

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


class LocalCluster:
    """Start with `with LocalCluster(workdir) as cluster:`; every process, pod, cgroup and
    namespace it made is gone after the block."""

    def __init__(self, workdir: pathlib.Path, node: str = "node-1", heartbeat_timeout: float = 60.0,
                 agent_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.agent_args = agent_args
        self.node = node
        self.heartbeat_timeout = heartbeat_timeout
        self.kubeconfig = workdir / "kubeconfig"
        self.spans_file = workdir / "spans.jsonl"
        self.components: dict[str, Component] = {}
        self.pods = pods.PodRunner()
        self.receiver_ports: tuple[int, int] | None = None
        self.api = Api("http://127.0.0.1:1")  # replaced by start_api()
        self._scratch: list[pathlib.Path] = []  # directories outside workdir, removed by stop()

    # ---- lifecycle ----
    def __enter__(self) -> LocalCluster:
        try:
            self.start_api()
            self.start_receiver()
            self.start_operator()
            self.start_agent(*self.agent_args)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        # Agent first: it detaches its probes on SIGTERM; pods last, once nothing watches them.
        for name in ("agent", "operator", "receiver", "api"):
            component = self.components.get(name)
            if component is not None:
                component.stop()
        self.pods.stop_all()
        for directory in self._scratch:
            shutil.rmtree(directory, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], ready_line: bool = False) -> tuple[Component, str]:
        """Start `python -m ...`; with `ready_line`, return the first line it prints on stdout."""
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with open(log, "a", encoding="utf-8") as stderr:
            process = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env, text=True,
                                       stdout=subprocess.PIPE if ready_line else stderr, stderr=stderr)
        component = Component(name, process, log)
        self.components[name] = component
        first = ""
        if ready_line:
            assert process.stdout is not None
            first = process.stdout.readline().strip()
            if not first:
                process.wait(10)
                raise RuntimeError(f"{name} exited before it was ready:\n{component.tail()}")
        return component, first

    def start_api(self) -> None:
        _, url = self._spawn("api", ["podspan_demo.k8s_api_emulator", "--kubeconfig", str(self.kubeconfig)],
                             ready_line=True)
        self.api = Api(url)
        # As `kubectl apply -f crds/`: the API then serves the CRDs' printer columns.
        crds = "apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd_file in sorted((REPO / "crds").glob("*.yaml")):
            crd = yaml.safe_load(crd_file.read_text())
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            current = self.api.get(path(crds, name=crd["metadata"]["name"]))
            if current is None:
                self.api.create(path(crds), crd)
            else:
                crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.api.request("PUT", path(crds, name=crd["metadata"]["name"]), crd)
        self.api.create(path("v1/nodes"), {
            "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
            "status": {"addresses": [{"type": "InternalIP", "address": self.pods.host_ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}})

    def start_receiver(self) -> None:
        """The OTLP receiver appends every span it gets to `spans_file`; restarts keep its ports."""
        grpc_port, http_port = self.receiver_ports or (0, 0)
        _, line = self._spawn("receiver", ["podspan_demo.otlp_receiver", "--grpc-port", str(grpc_port),
                                           "--http-port", str(http_port), "--jsonl", str(self.spans_file)],
                              ready_line=True)
        ports = dict(part.split("=") for part in line.split())
        self.receiver_ports = int(ports["grpc"]), int(ports["http"])

    @property
    def otlp_endpoint(self) -> str:
        assert self.receiver_ports is not None
        return f"http://127.0.0.1:{self.receiver_ports[0]}"

    def start_operator(self) -> None:
        self._spawn("operator", ["podspan_operator.cli", "--standalone", "--metrics-port", "0", "--metrics-address",
                                 "127.0.0.1",
                                 "--heartbeat-timeout", str(self.heartbeat_timeout)])

    def start_agent(self, *args: str) -> None:
        # Metrics on loopback, any free port: a machine running the demo is not a node Prometheus scrapes.
        self._spawn("agent", ["podspan_agent.cli", "run", "--node", self.node, "--metrics-port", "0",
                              "--metrics-address", "127.0.0.1", *args])

    # ---- API access ----
    def profile_status(self, namespace: str, name: str) -> dict[str, Any]:
        return (self.api.get(path(TP, namespace, name)) or {}).get("status") or {}

    def condition(self, namespace: str, name: str, ctype: str) -> tuple[str, str]:
        """(status, reason) of a profile's condition, ("", "") before the operator wrote it."""
        found = [c for c in self.profile_status(namespace, name).get("conditions", []) if c["type"] == ctype]
        return (found[0]["status"], found[0]["reason"]) if found else ("", "")

    def node_config(self) -> dict[str, Any]:
        return self.api.get(path(NTC, name=self.node)) or {}

    def apply_profile(self, profile: dict[str, Any]) -> None:
        """Create the TraceProfile, or replace its spec when it exists (fields left out are removed, as
        `kubectl apply` removes fields it applied before)."""
        meta = profile["metadata"]
        current = self.api.get(path(TP, meta["namespace"], meta["name"]))
        if current is None:
            self.api.create(path(TP, meta["namespace"]), profile)
        else:
            self.api.request("PUT", path(TP, meta["namespace"], meta["name"]), {**current, "spec": profile["spec"]})

    def table(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The rows `kubectl get` prints (default columns), as the API server computes them."""
        response = self.api.request("GET", path(resource, namespace), accept=TABLE)
        shown = [(i, c["name"]) for i, c in enumerate(response["columnDefinitions"]) if c.get("priority", 0) == 0]
        return [{name: row["cells"][i] for i, name in shown} for row in response["rows"]]

    def event_reasons(self, namespace: str, name: str) -> list[str]:
        """Reasons of the Events about an object."""
        query = urllib.parse.urlencode({"fieldSelector": f"involvedObject.name={name}"})
        listed = self.api.request("GET", path("v1/events", namespace) + "?" + query)
        return [event.get("reason", "") for event in listed["items"]]

    # ---- workloads ----
    def run_pod(self, namespace: str, deployment: str, labels: dict[str, str], argv: list[str],
                port: int, env: dict[str, str] | None = None) -> ClusterPod:
        """Start one replica of `deployment`: objects first (the API assigns the pod's uid), then the
        process in the cgroup the kubelet would make for that uid, then the status a kubelet writes."""
        if self.api.get(path("v1/namespaces", name=namespace)) is None:
            self.api.create(path("v1/namespaces"), {"metadata": {"name": namespace}})
        replica_set = self._ensure_deployment(namespace, deployment, labels)
        pod_hash = replica_set["metadata"]["labels"]["pod-template-hash"]
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set["metadata"]["name"],
                 "uid": replica_set["metadata"]["uid"], "controller": True}
        created = self.api.create(path("v1/pods", namespace), {
            "metadata": {"generateName": replica_set["metadata"]["name"] + "-", "namespace": namespace,
                         "labels": {**labels, "pod-template-hash": pod_hash}, "ownerReferences": [owner]},
            "spec": {"nodeName": self.node, "containers": [{"name": "app", "image": "podspan/sample-app"}]},
        })
        name, uid = created["metadata"]["name"], created["metadata"]["uid"]
        local = self.pods.start(name, argv, netns=True, uid=uid, env=env, log_path=self.workdir / f"pod-{name}.log")
        assert local.pod_ip is not None
        pods.wait_for_port(local.pod_ip, port, timeout=20)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.api.patch(path("v1/pods", namespace, name, "status"), {"status": {
            "phase": "Running", "podIP": local.pod_ip, "podIPs": [{"ip": local.pod_ip}],
            "hostIP": self.pods.host_ip, "qosClass": "BestEffort", "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{"name": "app", "image": "podspan/sample-app", "imageID": "", "ready": True,
                                   "restartCount": 0, "started": True, "state": {"running": {"startedAt": now}},
                                   "containerID": f"containerd://{local.container_id}"}],
        }})
        return ClusterPod(name, namespace, uid, local.pod_ip, port, local)

    def delete_pod(self, pod: ClusterPod) -> None:
        self.api.delete(path("v1/pods", pod.namespace, pod.name))
        self.pods.stop(pod.local)

    def _ensure_deployment(self, namespace: str, deployment: str, labels: dict[str, str]) -> dict[str, Any]:
        """The Deployment and its current ReplicaSet `<deployment>-<pod-template-hash>`."""
        pod_hash = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:10]
        rs_name = f"{deployment}-{pod_hash}"
        existing = self.api.get(path("apps/v1/replicasets", namespace, rs_name))
        if existing is not None:
            return existing
        template = {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "podspan/sample-app"}]}}
        created = self.api.create(path("apps/v1/deployments", namespace), {
            "metadata": {"name": deployment, "namespace": namespace, "labels": labels},
            "spec": {"selector": {"matchLabels": labels}, "template": template}})
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                 "uid": created["metadata"]["uid"], "controller": True}
        selector = {**labels, "pod-template-hash": pod_hash}
        return self.api.create(path("apps/v1/replicasets", namespace), {
            "metadata": {"name": rs_name, "namespace": namespace, "labels": selector, "ownerReferences": [owner]},
            "spec": {"selector": {"matchLabels": selector}, "template": template}})

    def run_shop(self, namespace: str = "shop") -> dict[str, ClusterPod]:
        """The sample app: frontend -> backend over HTTP, the backend reading users through a Redis
        cache from PostgreSQL, and an `other` service nobody selects."""
        redis = self.run_pod(namespace, "redis", {"app": "redis"},
                             ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                              "--save", "", "--appendonly", "no"], 6379)
        self._scratch.append(pathlib.Path(tempfile.mkdtemp(prefix="podspan-postgres-")))
        postgres = self.run_pod(namespace, "postgres", {"app": "postgres"},
                                servers.postgresql_trust_cluster(self._scratch[-1], f"{self.pods.host_ip}/24"), 5432)
        # The port opens before the server accepts sessions ("the database system is starting up").
        wait_for(lambda: _accepts_queries((postgres.ip, postgres.port)), "PostgreSQL to accept queries")
        sample_app.postgres_query((postgres.ip, postgres.port),
                                  "CREATE TABLE users (id int PRIMARY KEY, name text); "
                                  "INSERT INTO users SELECT i, 'user-' || i FROM generate_series(1, 1000) i")
        backend = self.run_pod(namespace, "backend", {"app": "backend"},
                               [*SAMPLE_APP, "backend", "--bind", "0.0.0.0", "--port", "8081",
                                "--redis", f"{redis.ip}:{redis.port}", "--postgres", f"{postgres.ip}:{postgres.port}"],
                               8081)
        frontend = self.run_pod(namespace, "frontend", {"app": "frontend"},
                                [*SAMPLE_APP, "frontend", "--bind", "0.0.0.0", "--port", "8080",
                                 "--backend", backend.url], 8080)
        other = self.run_pod(namespace, "other", {"app": "other"},
                             [*SAMPLE_APP, "backend", "--bind", "0.0.0.0", "--port", "8081"], 8081)
        return {"frontend": frontend, "backend": backend, "other": other, "redis": redis, "postgres": postgres}

    # ---- what the receiver got ----
    def spans(self) -> list[dict[str, Any]]:
        """Every span the receiver has written so far (all its lives)."""
        if not self.spans_file.exists():
            return []
        lines = self.spans_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]


def _accepts_queries(address: tuple[str, int]) -> bool:
    try:
        return sample_app.postgres_query(address, "SELECT 1") == [["1"]]
    except (OSError, RuntimeError):
        return False


def profile(name: str, namespace: str, endpoint: str, apps: list[str], **spec: Any) -> dict[str, Any]:
    """A TraceProfile selecting pods whose `app` label is one of `apps`; `spec` adds fields."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TraceProfile",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": apps}]},
                 "export": {"otlp": {"endpoint": endpoint, "protocol": "grpc", "insecure": True}}, **spec},
    }


def http_get(url: str, timeout: float = 10.0) -> int:
    """GET `url` and return the status code (error statuses included)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
