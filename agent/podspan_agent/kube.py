"""The node agent's Kubernetes I/O, all of it: the API client, the list+watch of this node's
NodeTraceConfig, and its status writes. Group, version and plural come from podspan_api.models."""

from __future__ import annotations

import logging
import os
import threading
import typing
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from podspan_api import models, retry

log = logging.getLogger(__name__)

CustomObjects = k8s.CustomObjectsApi
_NTC = (models.GROUP, models.VERSION, models.NodeTraceConfig.PLURAL)
_WATCH_TIMEOUT_S = 60
_API_TIMEOUT_S = 10.0  # a hung API server must not hang the status writer or the watcher
_RETRY_FIRST_S, _RETRY_CAP_S = 1.0, 30.0  # backoff after a failed API call


def custom_objects() -> CustomObjects:
    return k8s.CustomObjectsApi(api_client())


class Backoff:
    """Waits between retries of a failing API call: doubling from 1 s up to 30 s, and never shorter than
    what the server asked for (Retry-After); back to 1 s once a call succeeds."""

    def __init__(self) -> None:
        self._next = _RETRY_FIRST_S

    def failed(self, exc: BaseException) -> float:
        delay = max(self._next, retry.retry_after(exc))
        self._next = min(self._next * 2, _RETRY_CAP_S)
        return delay

    def succeeded(self) -> None:
        self._next = _RETRY_FIRST_S


class ConfigWatcher(threading.Thread):
    """List+watch of one NodeTraceConfig; keeps the latest object (None when absent)."""

    def __init__(self, api: k8s.CustomObjectsApi, node: str) -> None:
        super().__init__(name="ntc-watch", daemon=True)
        self._api, self._node = api, node
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self.version = 0  # bumps on every change seen
        self.stopping = threading.Event()

    def latest(self) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            return self.version, self._latest

    def _store(self, obj: dict[str, Any] | None) -> None:
        with self._lock:
            self._latest, self.version = obj, self.version + 1

    def run(self) -> None:
        selector = f"metadata.name={self._node}"
        backoff = Backoff()
        expired = False  # the last watch ended in 410 Gone
        while not self.stopping.is_set():
            try:
                listed = typing.cast(dict[str, Any], self._api.list_cluster_custom_object(
                    *_NTC, field_selector=selector, _request_timeout=_API_TIMEOUT_S
                ))
                backoff.succeeded()  # the API answers again: a later failure starts from the shortest wait
                # The server may ignore the selector: filter by name here too.
                mine = [o for o in listed.get("items", []) if o["metadata"]["name"] == self._node]
                self._store(mine[0] if mine else None)
                version = listed["metadata"].get("resourceVersion")
                stream = k8s_watch.Watch().stream(
                    self._api.list_cluster_custom_object, *_NTC, field_selector=selector,
                    resource_version=version, timeout_seconds=_WATCH_TIMEOUT_S,
                    _request_timeout=(_API_TIMEOUT_S, _WATCH_TIMEOUT_S + _API_TIMEOUT_S),
                )
                for event in stream:
                    expired = False
                    obj = event["object"]
                    if obj.get("metadata", {}).get("name") != self._node:
                        continue
                    self._store(None if event["type"] == "DELETED" else obj)
                    if self.stopping.is_set():
                        break
                expired = False
            except k8s.ApiException as exc:
                if exc.status == 410 and not expired:  # our resourceVersion is too old: relist at once (twice
                    expired = True                      # in a row: the server is unwell, back off as for errors)
                    log.info("NodeTraceConfig/%s watch expired (410 Gone); listing again", self._node)
                    continue
                self._retry_later(exc, backoff)
            except Exception as exc:  # API down, stream broken: relist after a pause
                self._retry_later(exc, backoff)

    def _retry_later(self, exc: Exception, backoff: Backoff) -> None:
        delay = backoff.failed(exc)
        log.warning("watching NodeTraceConfig/%s failed (%s); retrying in %.0fs", self._node, exc, delay)
        self.stopping.wait(delay)


def api_client() -> k8s.ApiClient:
    """In-cluster service account, else KUBECONFIG / ~/.kube/config (http or https)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    return k8s.ApiClient(configuration)


class StatusWriter(threading.Thread):
    """Writes the node's status on a thread of its own, so a slow or refusing API server never pauses the
    tracer (which only hands over its latest status). Only the newest status waits: one handed over while a
    write is in flight or backing off replaces the older one; a refused status is written again after the
    backoff unless a newer one came meanwhile."""

    def __init__(self, api: k8s.CustomObjectsApi, node: str) -> None:
        super().__init__(name="ntc-status", daemon=True)
        self._api, self._node = api, node
        self._lock = threading.Lock()
        self._pending: models.NodeTraceConfigStatus | None = None
        self._wake = threading.Event()
        self.stopping = threading.Event()
        self.written = 0  # statuses the API server accepted
        self.refused = 0

    def submit(self, status: models.NodeTraceConfigStatus) -> None:
        with self._lock:
            self._pending = status
        self._wake.set()

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            self._wake.wait()
            with self._lock:
                status, self._pending = self._pending, None
                self._wake.clear()
            if status is None:
                continue
            error = patch_status(self._api, self._node, status)
            if error is None:
                self.written += 1
                backoff.succeeded()
                continue
            self.refused += 1
            with self._lock:
                if self._pending is None:
                    self._pending = status
            self.stopping.wait(backoff.failed(error))  # no write per tick while refused; Retry-After honoured
            self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()


def patch_status(custom: k8s.CustomObjectsApi, node: str, status: models.NodeTraceConfigStatus) -> Exception | None:
    """Replace the node's status; the error (logged) when the API refused or is away, else None."""
    try:
        custom.patch_cluster_custom_object_status(
            *_NTC, node, {"status": status.model_dump(mode="json", by_alias=True)},
            _request_timeout=_API_TIMEOUT_S)
        return None
    except Exception as exc:  # the caller retries after its backoff
        log.warning("writing NodeTraceConfig/%s status failed: %s", node, exc)
        return exc
