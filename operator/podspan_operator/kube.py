"""The one module that writes to the Kubernetes API (kopf only watches): node configs, profile status, Events;
and its reads, the pod uids and node names that check kopf's cache after a relist.

Uses the official client's asyncio flavour, configured like kopf: in-cluster service account, else KUBECONFIG
or ~/.kube/config; plain http and https API servers both work.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any

import kopf
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from podspan_api import models
from podspan_operator import render, telemetry

MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "podspan-operator"
CLUSTER_EVENTS_NAMESPACE = "default"  # where kubectl describe looks for events of cluster-scoped objects

logger = logging.getLogger(__name__)


async def load_configuration() -> k8s.Configuration:
    """In-cluster service account, else KUBECONFIG (or ~/.kube/config)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        # Read KUBECONFIG now: the client's own default is frozen when it is imported.
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        await k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    return configuration


async def login() -> kopf.ConnectionInfo:
    """kopf's credentials, from the same configuration as our writes (one source of truth)."""
    configuration = await load_configuration()
    header = await configuration.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = header.rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        scheme=scheme or None, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file)


async def ensure_peering(name: str) -> None:
    """Create the ClusterKopfPeering `name` unless it exists. kopf needs the object; shipping it in config/
    next to its CRD would fail the first `kubectl apply -k` (the kind is unknown until the CRD is served)."""
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    async with k8s.ApiClient(await load_configuration()) as api_client:
        try:
            await k8s.CustomObjectsApi(api_client).create_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", peering)
            logger.info("created ClusterKopfPeering %s", name)
        except k8s.ApiException as exc:
            if exc.status != 409:  # 409: it exists, which is all we need
                raise


class Api:
    """Writes, counted so tests and the benchmark can see how many the operator made."""

    def __init__(self, api_client: k8s.ApiClient, metrics: telemetry.OperatorMetrics | None = None):
        self._client = api_client
        self.metrics = metrics or telemetry.OperatorMetrics()
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()
        self.writes = 0

    @classmethod
    async def connect(cls, metrics: telemetry.OperatorMetrics | None = None) -> Api:
        return cls(k8s.ApiClient(await load_configuration()), metrics)

    async def close(self) -> None:
        await self._client.close()

    async def put_node_config(self, name: str, spec: models.NodeTraceConfigSpec, exists: bool) -> int:
        """Create the NodeTraceConfig, or replace its spec (lists are replaced whole by a merge patch).

        Returns the object's generation after the write.
        """
        self.writes += 1
        logger.debug("writing NodeTraceConfig %s (%d targets)", name, len(spec.targets))
        body = {"spec": spec.to_k8s()}
        if exists:
            with self.metrics.write(telemetry.NODE_CONFIG):
                result = await self._custom.patch_cluster_custom_object(
                    models.GROUP, models.VERSION, models.NodeTraceConfig.PLURAL, name, body,
                    _content_type=MERGE_PATCH)
            return _generation(result)
        obj = models.NodeTraceConfig(metadata=models.ObjectMeta(
            name=name, labels={"app.kubernetes.io/managed-by": COMPONENT}), spec=spec).to_k8s()
        try:
            with self.metrics.write(telemetry.NODE_CONFIG):
                result = await self._custom.create_cluster_custom_object(
                    models.GROUP, models.VERSION, models.NodeTraceConfig.PLURAL, obj)
        except k8s.ApiException as e:
            if e.status != 409:
                raise
            # Created meanwhile (e.g. by a previous replica): fall back to replacing the spec.
            return await self.put_node_config(name, spec, exists=True)
        return _generation(result)

    async def pod_uids(self) -> set[str]:
        """The uids of every pod the API server has now; an error answer raises (it must never read as "no pods")."""
        pods = await self._core.list_pod_for_all_namespaces()
        return {pod.metadata.uid for pod in pods.items if pod.metadata is not None and pod.metadata.uid}

    async def node_names(self) -> set[str]:
        """The names of every node the API server has now; an error answer raises, as for pods."""
        nodes = await self._core.list_node()
        return {node.metadata.name for node in nodes.items if node.metadata is not None and node.metadata.name}

    async def delete_node_config(self, name: str) -> None:
        self.writes += 1
        try:
            with self.metrics.write(telemetry.NODE_CONFIG_DELETE):
                await self._custom.delete_cluster_custom_object(
                    models.GROUP, models.VERSION, models.NodeTraceConfig.PLURAL, name)
        except k8s.ApiException as e:
            if e.status != 404:
                raise

    async def patch_profile_status(self, profile: render.Profile, status: models.ProfileStatus) -> None:
        self.writes += 1
        logger.debug("writing the status of %s", profile.key)
        body = {"status": status.to_k8s()}
        plural = (models.TraceProfile if profile.kind == models.TraceProfile.KIND
                  else models.ClusterTraceProfile).PLURAL
        try:
            with self.metrics.write(telemetry.PROFILE_STATUS):
                if profile.namespace is None:
                    await self._custom.patch_cluster_custom_object_status(
                        models.GROUP, models.VERSION, plural, profile.name, body, _content_type=MERGE_PATCH)
                else:
                    await self._custom.patch_namespaced_custom_object_status(
                        models.GROUP, models.VERSION, profile.namespace, plural, profile.name, body,
                        _content_type=MERGE_PATCH)
        except k8s.ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to report on
                raise

    async def post_event(self, profile: render.Profile, warning: bool, reason: str, message: str) -> None:
        self.writes += 1
        logger.debug("posting event %s on %s", reason, profile.key)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = profile.namespace or CLUSTER_EVENTS_NAMESPACE
        body: dict[str, Any] = {
            "metadata": {"generateName": f"{profile.name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": models.API_VERSION, "kind": profile.kind, "name": profile.name,
                               "namespace": profile.namespace, "uid": profile.uid},
            "type": "Warning" if warning else "Normal", "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": f"{models.GROUP}/operator",
            "reportingInstance": self._instance, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            event = k8s.CoreV1Event.from_dict(body)
            assert event is not None
            with self.metrics.write(telemetry.EVENT):
                await self._core.create_namespaced_event(namespace, event)
        except k8s.ApiException as e:
            # An Event is best effort: losing one must not stop reconciliation.
            logger.warning("could not post event %s on %s: %s", reason, profile.key, e.reason)


def _generation(obj: Any) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)
