"""Level-triggered, coalescing reconciler: handlers mark nodes and profiles dirty; one loop renders, writes.

A burst of events becomes one pass: the loop sleeps `batch_delay` after the first wake-up, then renders every
dirty node from the kopf indexes (the operator's cache) and writes only the specs that changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Iterable, Mapping
from typing import TypeVar

from podspan_api import models, retry
from podspan_operator import kube, render, status

logger = logging.getLogger(__name__)

T = TypeVar("T")
Index = Mapping[str, Iterable[T]]  # what a kopf.Index looks like from here: key -> values


@dataclasses.dataclass(frozen=True)
class Options:
    batch_delay: float = 0.1  # seconds to let a burst of events accumulate before a pass
    heartbeat_timeout: float = 60.0  # an agent silent for longer makes its node "not reporting"
    write_concurrency: int = 16  # parallel writes within a pass
    retry_delay: float = 1.0  # after a failed pass (or the API server's Retry-After, when longer)


@dataclasses.dataclass(frozen=True)
class Indexes:
    """The kopf indexes the reconciler reads (filled by the handlers module)."""

    pods: Index[render.Pod]  # by node name ("" while unscheduled)
    trace_profiles: Index[render.Profile]  # by profile key
    cluster_trace_profiles: Index[render.Profile]
    namespaces: Index[Mapping[str, str]]  # labels by name
    nodes: Index[bool]  # by name
    node_configs: Index[render.NodeConfig]  # by name

    def namespace_labels(self) -> dict[str, Mapping[str, str]]:
        return {name: _one(labels) or {} for name, labels in self.namespaces.items()}


def _vanished(kind: str, indexed: Iterable[str], existing: set[str], known: set[str]) -> set[str]:
    """The indexed keys the API server no longer has; logs the ones not `known` as vanished before."""
    vanished = {key for key in indexed if key not in existing}
    if vanished - known:
        logger.info("%d %s(s) deleted while kopf was not watching: ignoring them", len(vanished - known), kind)
    return vanished


def _one(values: Iterable[T] | None) -> T | None:
    return next(iter(values), None) if values is not None else None


class Reconciler:
    def __init__(self, api: kube.Api, indexes: Indexes, options: Options = Options()):
        self.api = api
        self.indexes = indexes
        self.options = options
        self._dirty_nodes: set[str] = set()
        self._dirty_profiles: set[str] = set()
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._passes = asyncio.Condition()
        self._started = self._done = 0
        self._failed_nodes: set[str] = set()
        # What this replica wrote, because the indexes see our own writes only after the watch delivers them:
        self._written: dict[str, tuple[int, models.NodeTraceConfigSpec]] = {}  # node -> (generation, spec)
        self._reported: dict[str, models.ProfileStatus] = {}  # profile uid -> status
        # kopf lists again after 410 Gone but never drops from its index the objects the new listing lacks (deleted
        # while it was not watching): after a listing of pods or nodes, one list of their uids or names finds them,
        # and they are ignored (a vanished node's NodeTraceConfig is deleted).
        self._pods_listed = self._nodes_listed = False
        self._vanished_pods: set[str] = set()  # uids
        self._vanished_nodes: set[str] = set()  # names

    @property
    def passes(self) -> int:
        """Completed passes."""
        return self._done

    # -- marking (called by the handlers) -------------------------------------------------------------------

    def synced(self) -> None:
        """kopf calls non-index handlers only once every index is populated: the cache is complete."""
        if not self._synced.is_set():
            self._synced.set()
            self._dirty_nodes.update(self.indexes.nodes, self.indexes.node_configs)
            self._dirty_profiles.update(p.key for p in self._profiles())
        self._wake.set()

    def pods_listed(self) -> None:
        self._pods_listed = True

    def nodes_listed(self) -> None:
        self._nodes_listed = True

    def pod_changed(self, namespace: str, node: str) -> None:
        if node:
            self._dirty_nodes.add(node)
        # matchedPods may change for every profile that can see this namespace
        self._dirty_profiles.update(p.key for p in self._profiles()
                                    if p.kind != models.TraceProfile.KIND or p.namespace == namespace)
        self.synced()

    def profile_changed(self, key: str) -> None:
        profile = self._profile(key)
        self._dirty_profiles.add(key)
        if profile is not None:
            self._dirty_nodes |= render.affected_nodes(profile, self._pods(), self._node_configs())
        else:  # gone: every node that still references it
            self._dirty_nodes.update(c.name for c in self._node_configs() if key in c.profile_keys())
        self.synced()

    def namespace_changed(self, name: str) -> None:
        self._dirty_nodes.update(p.node for p in self._pods() if p.namespace == name and p.node)
        self._dirty_profiles.update(p.key for p in self._profiles() if p.kind != models.TraceProfile.KIND)
        self.synced()

    def node_changed(self, name: str) -> None:
        self._vanished_nodes.discard(name)  # made again under the same name
        self._dirty_nodes.add(name)
        self.synced()

    def node_config_changed(self, name: str, deleted: bool) -> None:
        if deleted:
            self._written.pop(name, None)
        config = _one(self.indexes.node_configs.get(name))
        self._dirty_nodes.add(name)
        self._dirty_profiles.update(config.profile_keys() if config else ())
        self.synced()

    async def release(self, key: str) -> bool:
        """Remove a deleting profile's targets from every node; True once no node config references it."""
        self.profile_changed(key)
        await self.next_pass()
        referencing = {c.name for c in self._node_configs() if key in c.profile_keys()}
        pending = {name for name in referencing
                   if name not in self._written or key in render.spec_profile_keys(self._written[name][1])}
        return not pending and not (self._failed_nodes & referencing)

    async def next_pass(self) -> None:
        """Wait until a pass that starts after this call has finished."""
        target = self._started + 1
        self._wake.set()
        async with self._passes:
            await self._passes.wait_for(lambda: self._done >= target)

    # -- the loop -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._synced.wait()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.options.batch_delay)
            self._wake.clear()
            self._started += 1
            nodes, self._dirty_nodes = self._dirty_nodes, set()
            profiles, self._dirty_profiles = self._dirty_profiles, set()
            pods_listed, self._pods_listed = self._pods_listed, False
            nodes_listed, self._nodes_listed = self._nodes_listed, False
            try:
                with self.api.metrics.reconcile_pass():
                    vanished = pods_listed and await self._find_vanished_pods(nodes)
                    vanished |= nodes_listed and await self._find_vanished_nodes(nodes)
                    if vanished:
                        profiles |= {p.key for p in self._profiles()}
                    await self._sync_nodes(nodes)
                    await self._sync_profiles(profiles)
            except Exception as exc:
                logger.exception("reconciliation pass failed; retrying")
                self._pods_listed |= pods_listed
                self._nodes_listed |= nodes_listed
                self._dirty_nodes |= nodes
                self._dirty_profiles |= profiles
                self._wake.set()
                # A throttled API server (429 + Retry-After) says when to come back; never sooner than our own delay.
                await asyncio.sleep(max(self.options.retry_delay, retry.retry_after(exc)))
            async with self._passes:
                self._done = self._started
                self._passes.notify_all()

    async def _find_vanished_pods(self, dirty_nodes: set[str]) -> bool:
        """Mark the pods kopf's index has and the API server has not as vanished, their nodes dirty; True if any."""
        indexed = {pod.uid: pod.node for pods in self.indexes.pods.values() for pod in pods}  # before the list:
        existing = await self.api.pod_uids()  # a pod indexed after it is not mistaken for a vanished one
        self._vanished_pods = _vanished("pod", indexed, existing, self._vanished_pods)
        dirty_nodes |= {indexed[uid] for uid in self._vanished_pods if indexed[uid]}
        return bool(self._vanished_pods)

    async def _find_vanished_nodes(self, dirty_nodes: set[str]) -> bool:
        """Mark the nodes kopf's index has and the API server has not as vanished and dirty; True if any."""
        indexed = set(self.indexes.nodes)  # before the list, as for pods
        self._vanished_nodes = _vanished("node", indexed, await self.api.node_names(), self._vanished_nodes)
        dirty_nodes |= self._vanished_nodes
        return bool(self._vanished_nodes)

    async def _sync_nodes(self, names: set[str]) -> None:
        semaphore = asyncio.Semaphore(self.options.write_concurrency)
        profiles = [p for p in self._profiles() if p.active]
        namespaces = self.indexes.namespace_labels()
        failed: set[str] = set()

        async def sync(name: str) -> None:
            async with semaphore:
                try:
                    await self._sync_node(name, profiles, namespaces)
                except Exception:
                    failed.add(name)
                    raise

        results = await asyncio.gather(*(sync(name) for name in sorted(names)), return_exceptions=True)
        self._failed_nodes = (self._failed_nodes - names) | failed
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _sync_node(self, name: str, profiles: list[render.Profile],
                         namespaces: Mapping[str, Mapping[str, str]]) -> None:
        current = _one(self.indexes.node_configs.get(name))
        if name not in self.indexes.nodes or name in self._vanished_nodes:
            if current is not None:
                logger.info("node %s is gone: deleting its NodeTraceConfig", name)
                await self.api.delete_node_config(name)
                self._written.pop(name, None)
            return
        desired = render.node_spec(self._node_pods(name), profiles, namespaces)
        observed = current.spec if current is not None else None
        written = self._written.get(name)
        if written is not None and (current is None or (current.generation or 0) < written[0]):
            observed = written[1]  # the watch has not delivered our last write yet
        if observed == desired:
            return
        exists = current is not None or written is not None
        generation = await self.api.put_node_config(name, desired, exists=exists)
        self._written[name] = (generation, desired)

    async def _sync_profiles(self, keys: set[str]) -> None:
        now = datetime.datetime.now(datetime.UTC)
        pods = list(self._pods())
        configs = list(self._node_configs())
        namespaces = self.indexes.namespace_labels()
        for key in sorted(keys):
            profile = self._profile(key)
            if profile is None or profile.deleting:
                continue
            previous = self._reported.get(profile.uid) or profile.status
            profile = dataclasses.replace(profile, status=previous)
            matched = sum(1 for pod in pods if render.selects(profile, pod, namespaces))
            new, transitions = status.aggregate(profile, matched, configs, now,
                                                self.options.heartbeat_timeout)
            if new == previous:
                continue
            await self.api.patch_profile_status(profile, new)
            self._reported[profile.uid] = new
            for t in transitions:
                await self.api.post_event(profile, t.warning, t.reason, t.message)

    # -- cache access ---------------------------------------------------------------------------------------

    def _pods(self) -> Iterable[render.Pod]:
        return (pod for pods in self.indexes.pods.values() for pod in pods if pod.uid not in self._vanished_pods)

    def _node_pods(self, node: str) -> list[render.Pod]:
        return [pod for pod in self.indexes.pods.get(node, ()) if pod.uid not in self._vanished_pods]

    def _profiles(self) -> list[render.Profile]:
        return [p for index in (self.indexes.trace_profiles, self.indexes.cluster_trace_profiles)
                for values in index.values() for p in values]

    def _profile(self, key: str) -> render.Profile | None:
        index = (self.indexes.trace_profiles if key.startswith(f"{models.TraceProfile.KIND}/")
                 else self.indexes.cluster_trace_profiles)
        return _one(index.get(key))

    def _node_configs(self) -> Iterable[render.NodeConfig]:
        return (c for configs in self.indexes.node_configs.values() for c in configs)
