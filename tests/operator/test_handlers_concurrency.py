"""The handlers run on kopf's event loop, and storms of concurrent events converge without a write storm."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from podspan_demo import k8s_api_emulator as emu
from podspan_operator import handlers
from tests.operator.conftest import TP, Operator, node_config, profile, run_pod, wait_for


def test_every_non_index_handler_is_a_coroutine_function():
    # kopf runs a plain `def` handler in an executor thread; ours touch the reconciler's sets and asyncio.Event,
    # which only the event loop may do. Index handlers only return a value (kopf stores it on the loop).
    index_handlers = set(map(id, handlers.registry._indexing.get_all_handlers()))
    others = [h for r in vars(handlers.registry).values() if hasattr(r, "get_all_handlers")
              for h in r.get_all_handlers() if id(h) not in index_handlers]
    # Not vacuous: the event, timer, finalizer and activity handlers are all found.
    assert {"pod_event", "profile_event", "profile_resync", "namespace_event", "node_event", "node_config_event",
            "release_profile", "start", "stop", "login"} <= {h.id for h in others}
    sync = sorted(h.id for h in others if not inspect.iscoroutinefunction(h.fn))
    assert sync == [], f"plain-def kopf handlers (kopf would run them in executor threads): {sync}"


NODES = [f"n{i}" for i in range(10)]
PODS = 200
WORKERS = 8
OPS_PER_WORKER = 40
KEY = "TraceProfile/shop/web"


@dataclasses.dataclass
class PodModel:
    """What the test itself did to one pod: the source of the expected node configs."""

    namespace: str
    node: str
    app: str
    container_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex * 2)
    alive: bool = True

    def start(self, kc: emu.KubeClient, name: str) -> None:
        run_pod(kc, name, self.namespace, {"app": self.app}, self.node, container_id=self.container_id)

    def restart(self, kc: emu.KubeClient, name: str) -> None:
        """A container restart: a new container id, the same labels (so the profile's matchedPods stays)."""
        self.container_id = uuid.uuid4().hex * 2
        kc.mark_pod_running(name, self.namespace, self.container_id, ip="127.0.0.1")


Model = dict[str, PodModel]
Worker = Callable[[emu.KubeClient, random.Random, Model], None]


def _mixed(kc: emu.KubeClient, rng: random.Random, pods: Model) -> None:
    """Label flips, no-op touches, deletions and re-creations (maybe on another node)."""
    for _ in range(OPS_PER_WORKER):
        name = rng.choice(sorted(pods))
        pod, op = pods[name], rng.random()
        if not pod.alive:
            pod.node, pod.app, pod.alive = rng.choice(NODES), rng.choice(("web", "api")), True
            pod.container_id = uuid.uuid4().hex * 2
            pod.start(kc, name)
        elif op < 0.55:
            pod.app = "api" if pod.app == "web" else "web"
            kc.patch("v1/pods", name, {"metadata": {"labels": {"app": pod.app}}}, pod.namespace)
        elif op < 0.75:
            kc.patch("v1/pods", name, {"metadata": {"annotations": {"touched": str(rng.random())}}},
                     pod.namespace)
        else:
            pod.alive = False
            kc.delete("v1/pods", name, pod.namespace)


def _restarts(kc: emu.KubeClient, rng: random.Random, pods: Model) -> None:
    """Container restarts of every live pod, in random order. The profile's status does not change, so no
    profile event re-renders the nodes: each new container id reaches its node config only through the pod
    event's dirty mark."""
    for name in rng.sample(sorted(pods), len(pods)):
        if pods[name].alive:
            pods[name].restart(kc, name)


def _storm(url: str, model: Model, work: Worker) -> int:
    """Run `work` in WORKERS threads at once, each on its own share of the pods (so the last operation on a pod
    is well defined); returns how many operations that was."""
    errors: list[BaseException] = []

    def run(worker: int, pods: Model) -> None:
        try:
            work(emu.KubeClient(url), random.Random(worker), pods)  # a session per thread
        except BaseException as e:  # re-raised below
            errors.append(e)

    shares = [{name: pod for i, (name, pod) in enumerate(model.items()) if i % WORKERS == w}
              for w in range(WORKERS)]
    threads = [threading.Thread(target=run, args=(w, shares[w]), name=f"storm-{w}") for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return WORKERS * OPS_PER_WORKER if work is _mixed else sum(p.alive for p in model.values())


def _expected(model: Model) -> dict[str, dict[str, tuple[list[str], str]]]:
    """node -> namespace/pod -> (profile keys, container id): every live pod in shop labelled app=web."""
    expected: dict[str, dict[str, tuple[list[str], str]]] = {node: {} for node in NODES}
    for name, pod in model.items():
        if pod.alive and pod.namespace == "shop" and pod.app == "web":
            expected[pod.node][f"shop/{name}"] = ([KEY], f"containerd://{pod.container_id}")
    return expected


def _actual(kc: emu.KubeClient) -> dict[str, dict[str, tuple[list[str], str]]]:
    actual = {}
    for node in NODES:
        config = node_config(kc, node)
        actual[node] = {f"{t.namespace}/{t.name}": (t.profile_keys(), t.containers[0].container_id or "")
                        for t in (config.spec.targets if config else [])}
    return actual


def _generations(kc: emu.KubeClient) -> dict[str, int]:
    return {n: (config.metadata.generation or 0) if (config := node_config(kc, n)) else 0 for n in NODES}


def _count_writes(op: Operator) -> collections.Counter[str]:
    """Count the operator's writes by kind, on top of its total."""
    methods = ("put_node_config", "delete_node_config", "patch_profile_status", "post_event")
    # Incremented on the operator's loop; every key exists up front, so the test's reads never race an insert.
    api, counts = op.reconciler.api, collections.Counter[str](dict.fromkeys(methods, 0))

    def counted(method: str) -> Callable[..., Any]:
        real = getattr(api, method)

        def call(*args: Any, **kwargs: Any) -> Any:
            counts[method] += 1
            return real(*args, **kwargs)

        return call

    for method in methods:
        setattr(api, method, counted(method))
    return counts


def _still(op: Operator, window: float) -> bool:
    """No pass and no write for `window` seconds."""
    before = op.writes, op.reconciler.passes
    time.sleep(window)
    return (op.writes, op.reconciler.passes) == before


def _converge(kc: emu.KubeClient, op: Operator, model: Model, what: str, deadline: float) -> None:
    """Wait for the node configs and the profile's status to match the model, then for the loop to go idle; all
    before `deadline`, when kopf's resync timer starts re-rendering every node (and would mask a lost mark)."""
    def timeout() -> float:
        return deadline - time.monotonic()

    what += " (before the resync timer)"
    # The model is what we did; check the API agrees before judging the operator against it.
    live = {p["metadata"]["name"]: (p["metadata"]["namespace"], p["spec"]["nodeName"], p["metadata"]["labels"]["app"])
            for ns in ("shop", "blog") for p in kc.list("v1/pods", ns)}
    assert live == {n: (p.namespace, p.node, p.app) for n, p in model.items() if p.alive}
    expected = _expected(model)
    matched = sum(len(pods) for pods in expected.values())
    wait_for(lambda: _actual(kc) == expected, f"every node config to match the pods {what}", timeout())
    wait_for(lambda: (kc.get(TP, "web", "shop") or {}).get("status", {}).get("matchedPods") == matched,
             f"matchedPods == {matched} {what}", timeout())
    # Quiescent: the last status write's own event may cost one more (idle) pass, then the loop goes still;
    # a loop that keeps waking itself, or keeps writing, never gets here.
    wait_for(lambda: _still(op, 0.5), f"the reconciler to go idle {what}", timeout())
    assert _actual(kc) == expected


def test_concurrent_event_storms_converge_without_write_storm(kc, start_operator):
    kc.ensure_namespace("shop")
    kc.ensure_namespace("blog")  # same labels, other namespace: never selected by the namespaced profile
    for node in NODES:
        kc.create_node(node)
    model: Model = {}
    for i in range(PODS):
        name = f"p{i:03d}"
        model[name] = PodModel(namespace="blog" if i % 10 == 9 else "shop", node=NODES[i % len(NODES)],
                               app="web" if i % 3 else "api")
        model[name].start(kc, name)
    kc.create(TP, profile("web", "shop", {"app": "web"}))
    # The profile's resync timer first fires RESYNC_INTERVAL after the operator starts; until then only the
    # events' dirty marks can bring a change to a node config. (The whole test normally takes ~5 s.)
    resync = time.monotonic() + handlers.RESYNC_INTERVAL
    op = start_operator()
    wait_for(lambda: _actual(kc) == _expected(model), "the initial targets")
    wait_for(lambda: _still(op, 0.3), "the reconciler to go idle after the initial pass")

    counts = _count_writes(op)
    for work, what in ((_mixed, "after label flips, deletions and re-creations"),
                       (_restarts, "after container restarts")):
        passes, generations, before = op.reconciler.passes, _generations(kc), counts.copy()
        ops = _storm(kc.url, model, work)
        _converge(kc, op, model, what, resync)
        passes, writes = op.reconciler.passes - passes, counts - before
        changed = sum(_generations(kc)[n] - generations[n] for n in NODES)
        stats = f"{what}: {ops} operations, {passes} passes, writes {dict(writes)}, {changed} spec changes"
        # Batched: passes are bursts of events, not one per event.
        assert passes <= ops / 4, stats
        # No redundant writes: every node config write changed its spec (the API bumps the generation only then),
        # and a pass writes each node config, and the profile's status, at most once.
        assert writes["put_node_config"] == changed, stats
        assert writes["put_node_config"] <= passes * len(NODES), stats
        assert writes["patch_profile_status"] <= passes, stats
        # No agent reports, so no condition changes: no Events. Nodes are never deleted.
        assert writes["delete_node_config"] == 0 and writes["post_event"] == 0, stats
        if work is _mixed:
            # Coalesced: most events land in a pass with others for the same node.
            assert writes["put_node_config"] <= ops / 2, stats
