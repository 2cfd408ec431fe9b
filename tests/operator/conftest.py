"""Fixtures: a real HTTP API emulator, the operator running in-process under kopf, and a scripted agent."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kopf
import pytest

from podspan_api import models
from podspan_demo import k8s_api_emulator as emu
from podspan_operator import handlers, reconciler

NTC = "podspan.dev/v1alpha1/nodetraceconfigs"
TP = "podspan.dev/v1alpha1/traceprofiles"
CTP = "podspan.dev/v1alpha1/clustertraceprofiles"
WAIT = 20.0  # upper bound for eventual states; never a performance assertion

T = TypeVar("T")


def wait_for(probe: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """Poll until probe() is truthy; fail with `what` if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.05)


class Operator:
    """The operator in a thread with its own event loop, as `podspan-operator` would run it."""

    def __init__(self, peering: str | None = None, priority: int = 0) -> None:
        """`peering`: coordinate with other replicas through that ClusterKopfPeering (else standalone)."""
        self.memo = kopf.Memo(options=reconciler.Options(batch_delay=0.05))
        self._peering, self._priority = peering, priority
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(kopf.operator(registry=handlers.registry, clusterwide=True, standalone=self._peering is None,
                                      peering_name=self._peering, priority=self._priority,
                                      memo=self.memo, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as e:  # surfaced by start()/stop()
            self._error = e
            self._ready.set()

    def start(self, first_pass: bool = True) -> Operator:
        """`first_pass`: wait until the reconciler has made one (a paused peer never does)."""
        self._thread.start()
        assert self._ready.wait(WAIT), "kopf did not become ready"
        assert self._error is None, self._error
        if first_pass:
            wait_for(lambda: "reconciler" in self.memo and self.reconciler.passes >= 1, "the first full pass")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the operator did not stop"

    @property
    def reconciler(self) -> reconciler.Reconciler:
        return self.memo.reconciler

    @property
    def writes(self) -> int:
        return self.reconciler.api.writes


@pytest.fixture
def api(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[emu.EmulatorThread]:
    with emu.EmulatorThread(kubeconfig=tmp_path / "kubeconfig") as thread:
        # The operator finds the API the way it does out of cluster: through KUBECONFIG.
        monkeypatch.setenv("KUBECONFIG", str(thread.kubeconfig))
        yield thread


@pytest.fixture
def kc(api: emu.EmulatorThread) -> emu.KubeClient:
    return emu.KubeClient(api.url)


@pytest.fixture
def start_operator(api: emu.EmulatorThread) -> Iterator[Callable[[], Operator]]:
    started: list[Operator] = []

    def start() -> Operator:
        started.append(Operator().start())
        return started[-1]

    yield start
    for op in started:
        with contextlib.suppress(AssertionError):
            op.stop()


# -- cluster helpers ---------------------------------------------------------------------------------------


def profile(name: str, namespace: str, match_labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": models.API_VERSION, "kind": "TraceProfile",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": match_labels},
                     "export": {"otlp": {"endpoint": "http://127.0.0.1:4317", "insecure": True}}, **spec}}


def run_pod(kc: emu.KubeClient, name: str, namespace: str, labels: dict[str, str], node: str,
            container_id: str | None = None, **metadata: Any) -> dict[str, Any]:
    pod = kc.create("v1/pods", {"metadata": {"name": name, "namespace": namespace, "labels": labels, **metadata},
                                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "python:3"}]}},
                    namespace)
    kc.mark_pod_running(name, namespace, container_id or (pod["metadata"]["uid"].replace("-", "") * 2),
                        ip="127.0.0.1")
    return kc.get("v1/pods", name, namespace) or {}


def node_config(kc: emu.KubeClient, node: str) -> models.NodeTraceConfig | None:
    body = kc.get(NTC, node)
    return models.NodeTraceConfig.model_validate(body) if body else None


def targets(kc: emu.KubeClient, node: str) -> dict[str, list[str]]:
    """namespace/pod -> profile keys, from the node's config."""
    config = node_config(kc, node)
    return {f"{t.namespace}/{t.name}": t.profile_keys() for t in (config.spec.targets if config else [])}


def condition(body: dict[str, Any] | None, ctype: str) -> tuple[str, str] | None:
    """(status, reason) of a condition in an object's status."""
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c["status"], c["reason"]
    return None


def profile_when(kc: emu.KubeClient, resource: str, name: str, namespace: str | None,
                 predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The profile, once predicate(profile) holds."""
    def probe() -> dict[str, Any]:
        body = kc.get(resource, name, namespace)
        return body if body is not None and predicate(body) else {}

    return wait_for(probe, what)


def agent_report(kc: emu.KubeClient, node: str, *, exported: int = 0, lost: int = 0,
                 heartbeat: datetime.datetime | None = None, probe_errors: int = 0) -> None:
    """Write the status an agent would after applying its spec: every container attached."""
    config = node_config(kc, node)
    assert config is not None
    status = models.NodeTraceConfigStatus(
        observed_generation=config.metadata.generation,
        heartbeat_time=heartbeat or datetime.datetime.now(datetime.UTC), header_source="host",
        targets=[models.TargetStatus(pod_uid=t.uid, container=c.name, container_id=c.container_id,
                                     state=models.TargetState.ATTACHED)
                 for t in config.spec.targets for c in t.containers],
        profiles=[models.ProfileCounters(profile=p.key, spans_exported=exported, events_lost=lost)
                  for p in config.spec.profiles],
        probe_errors=[models.ProbeError(probe=f"uprobe:{i}", message="EPERM") for i in range(probe_errors)])
    kc.patch(NTC, node, {"status": status.to_k8s()}, subresource="status")
