"""kopf handlers, kept thin: indexes cache views of the watched objects; event handlers mark work dirty.

kopf fills every index from the initial listing before it calls any other handler, so the reconciler never
renders from a partial cache (that is what keeps an operator restart free of redundant writes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from podspan_api import models
from podspan_operator import kube, reconciler, render

FINALIZER = f"{models.GROUP}/finalizer"
TP = (models.GROUP, models.VERSION, models.TraceProfile.PLURAL)
CTP = (models.GROUP, models.VERSION, models.ClusterTraceProfile.PLURAL)
NTC = (models.GROUP, models.VERSION, models.NodeTraceConfig.PLURAL)
registry = kopf.OperatorRegistry()
RESYNC_INTERVAL = 15.0  # seconds between re-aggregations of a profile's status, so silent nodes are noticed


@kopf.on.startup(registry=registry)
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=models.GROUP)
    settings.posting.level = logging.WARNING  # our Events report transitions; no "handler succeeded" noise
    api = await kube.Api.connect(memo.get("metrics"))  # the CLI's, when it serves them
    # kopf passes every index to every handler, under the index handler's name (the functions below).
    indexes = reconciler.Indexes(**{f.name: kwargs[f.name] for f in dataclasses.fields(reconciler.Indexes)})
    memo.reconciler = reconciler.Reconciler(api, indexes, memo.get("options") or reconciler.Options())
    memo.task = asyncio.create_task(memo.reconciler.run(), name="podspan reconciler")
    logger.info("podspan operator started")


@kopf.on.login(registry=registry)
async def login(**_: Any) -> kopf.ConnectionInfo:
    return await kube.login()


@kopf.on.cleanup(registry=registry)
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.task.cancel()
    await asyncio.gather(memo.task, return_exceptions=True)
    await memo.reconciler.api.close()


# -- indexes: the cache ------------------------------------------------------------------------------------


@kopf.index("v1", "pods", registry=registry)
def pods(body: kopf.Body, **_: Any) -> dict[str, render.Pod]:
    pod = render.pod_view(body)
    return {pod.node: pod}


@kopf.index(*TP, registry=registry)
def trace_profiles(body: kopf.Body, **_: Any) -> dict[str, render.Profile]:
    profile = render.profile_view(models.TraceProfile.KIND, body)
    return {profile.key: profile}


@kopf.index(*CTP, registry=registry)
def cluster_trace_profiles(body: kopf.Body, **_: Any) -> dict[str, render.Profile]:
    profile = render.profile_view(models.ClusterTraceProfile.KIND, body)
    return {profile.key: profile}


@kopf.index("v1", "namespaces", registry=registry)
def namespaces(name: str, labels: kopf.Labels, **_: Any) -> dict[str, Mapping[str, str]]:
    return {name: dict(labels)}


@kopf.index("v1", "nodes", registry=registry)
def nodes(name: str, **_: Any) -> dict[str, bool]:
    return {name: True}


@kopf.index(*NTC, registry=registry)
def node_configs(body: kopf.Body, **_: Any) -> dict[str, render.NodeConfig]:
    config = render.node_config_view(body)
    return {config.name: config}


# -- events: mark dirty ------------------------------------------------------------------------------------
# Every event and timer handler is `async def`: kopf runs a plain `def` handler in an executor thread, and these
# mutate the reconciler's dirty sets and set its asyncio.Event, which only the event loop may touch. They do no
# I/O, so running them on the loop costs nothing. (The index handlers above may stay plain functions: they only
# build a view from the body and return it; kopf stores the result into the index on the loop.)


@kopf.on.event("v1", "pods", registry=registry)
async def pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type is None:  # from a listing: at start, or kopf listing again after 410 Gone or a pause
        memo.reconciler.pods_listed()
    memo.reconciler.pod_changed(body["metadata"]["namespace"], body.get("spec", {}).get("nodeName") or "")


@kopf.on.event(*TP, registry=registry)
@kopf.on.event(*CTP, registry=registry)
async def profile_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.profile_changed(_key(body))


@kopf.timer(*TP, interval=RESYNC_INTERVAL, initial_delay=RESYNC_INTERVAL, registry=registry)
@kopf.timer(*CTP, interval=RESYNC_INTERVAL, initial_delay=RESYNC_INTERVAL, registry=registry)
async def profile_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # A kopf timer, not a loop of our own: it pauses with the operator when another replica is active.
    memo.reconciler.profile_changed(_key(body))


@kopf.on.event("v1", "namespaces", registry=registry)
async def namespace_event(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.namespace_changed(name)


@kopf.on.event("v1", "nodes", registry=registry)
async def node_event(name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type is None:  # from a listing, as for pods
        memo.reconciler.nodes_listed()
    memo.reconciler.node_changed(name)


@kopf.on.event(*NTC, registry=registry)
async def node_config_event(name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.node_config_changed(name, deleted=type == "DELETED")


# -- finalizer ---------------------------------------------------------------------------------------------


@kopf.on.delete(*TP, registry=registry)
@kopf.on.delete(*CTP, registry=registry)
async def release_profile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Hold the finalizer until no NodeTraceConfig references the profile any more."""
    key = _key(body)
    if not await memo.reconciler.release(key):
        raise kopf.TemporaryError(f"node configs still reference {key}", delay=1)


def _key(body: kopf.Body) -> str:
    metadata = body["metadata"]
    return models.profile_key(body["kind"], metadata.get("namespace"), metadata["name"])
