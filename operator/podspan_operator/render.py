"""Pure part of the operator: views of API objects, pod selection, and (profiles, pods on node) -> spec.

Nothing here does I/O; the kopf indexes hold the views built by the *_view functions.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic

from podspan_api import models

SERVICE_NAME_ANNOTATION = "resource.opentelemetry.io/service.name"
APP_NAME_LABEL = "app.kubernetes.io/name"
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class Container:
    name: str
    container_id: str | None


@dataclasses.dataclass(frozen=True)
class Pod:
    """What the operator needs from a Pod."""

    uid: str
    namespace: str
    name: str
    node: str  # "" while unscheduled
    labels: Mapping[str, str]
    terminal: bool
    qos_class: models.QOSClass
    service_name: str
    workload: models.Workload | None
    containers: tuple[Container, ...]


@dataclasses.dataclass(frozen=True)
class Profile:
    """A TraceProfile or ClusterTraceProfile with its spec parsed, or the reason it cannot be."""

    kind: str
    namespace: str | None
    name: str
    uid: str
    generation: int | None
    deleting: bool
    spec: models.TraceProfileSpec | None  # a ClusterTraceProfileSpec for cluster profiles
    error: str | None
    status: models.ProfileStatus | None

    @property
    def key(self) -> str:
        return models.profile_key(self.kind, self.namespace, self.name)

    @property
    def active(self) -> bool:
        """Contributes targets: valid and not being deleted."""
        return self.spec is not None and not self.deleting


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """A NodeTraceConfig as observed; spec or status is None when absent or unreadable."""

    name: str
    generation: int | None
    spec: models.NodeTraceConfigSpec | None
    status: models.NodeTraceConfigStatus | None
    created: datetime.datetime | None = None

    def profile_keys(self) -> set[str]:
        return spec_profile_keys(self.spec) if self.spec else set()


def spec_profile_keys(spec: models.NodeTraceConfigSpec) -> set[str]:
    """Every profile a node spec references."""
    return {key for t in spec.targets for key in t.profile_keys()}


def _qos_class(spec: Mapping[str, Any]) -> models.QOSClass:
    """The QoS class as the API server computes it (used when status.qosClass is not set yet)."""
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return models.QOSClass.BEST_EFFORT
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        if any(limits.get(k) is None or requests.get(k, limits[k]) != limits[k] for k in ("cpu", "memory")):
            return models.QOSClass.BURSTABLE
    return models.QOSClass.GUARANTEED


def _workload(metadata: Mapping[str, Any], labels: Mapping[str, str]) -> models.Workload | None:
    owner = next((o for o in metadata.get("ownerReferences") or [] if o.get("controller")), None)
    if owner is None:
        return None
    kind, name = owner["kind"], owner["name"]
    pod_hash = labels.get("pod-template-hash")
    # A Deployment's ReplicaSet is named <deployment>-<pod-template-hash> (what OTel's k8sattributes uses).
    if kind == "ReplicaSet" and pod_hash and name.endswith(f"-{pod_hash}"):
        return models.Workload(kind="Deployment", name=name[: -len(pod_hash) - 1])
    return models.Workload(kind=kind, name=name)


def pod_view(body: Mapping[str, Any]) -> Pod:
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    labels = dict(metadata.get("labels") or {})
    workload = _workload(metadata, labels)
    annotations = metadata.get("annotations") or {}
    service_name = (annotations.get(SERVICE_NAME_ANNOTATION) or labels.get(APP_NAME_LABEL)
                    or (workload.name if workload else metadata["name"]))
    ids = {s["name"]: s.get("containerID") or None for s in status.get("containerStatuses") or []}
    return Pod(
        uid=metadata["uid"], namespace=metadata["namespace"], name=metadata["name"],
        node=spec.get("nodeName") or "", labels=labels,
        terminal=status.get("phase") in TERMINAL_PHASES,
        qos_class=models.QOSClass(status["qosClass"]) if status.get("qosClass") else _qos_class(spec),
        service_name=service_name, workload=workload,
        containers=tuple(Container(c["name"], ids.get(c["name"])) for c in spec.get("containers") or []),
    )


def profile_view(kind: str, body: Mapping[str, Any]) -> Profile:
    metadata = body["metadata"]
    cluster = kind == models.ClusterTraceProfile.KIND
    spec_model = models.ClusterTraceProfileSpec if cluster else models.TraceProfileSpec
    spec: models.TraceProfileSpec | None = None
    error = None
    try:
        spec = spec_model.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as e:
        error = models.validation_message(e)
    try:
        status = models.ProfileStatus.model_validate(body["status"]) if body.get("status") else None
    except pydantic.ValidationError:
        status = None  # rewritten from scratch by the next aggregation
    return Profile(kind=kind, namespace=metadata.get("namespace"), name=metadata["name"], uid=metadata["uid"],
                   generation=metadata.get("generation"), deleting=bool(metadata.get("deletionTimestamp")),
                   spec=spec, error=error, status=status)


def node_config_view(body: Mapping[str, Any]) -> NodeConfig:
    def parse(model: type[pydantic.BaseModel], value: Any) -> Any:
        try:
            return model.model_validate(value) if value is not None else None
        except pydantic.ValidationError:
            return None  # an unreadable spec is rewritten; an unreadable status counts as silence

    created = body["metadata"].get("creationTimestamp")
    return NodeConfig(name=body["metadata"]["name"], generation=body["metadata"].get("generation"),
                      spec=parse(models.NodeTraceConfigSpec, body.get("spec")),
                      status=parse(models.NodeTraceConfigStatus, body.get("status")),
                      created=datetime.datetime.fromisoformat(created) if created else None)


def selects(profile: Profile, pod: Pod, namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether an active profile's selectors select a live pod."""
    spec = profile.spec
    if spec is None or profile.deleting or pod.terminal:
        return False
    if isinstance(spec, models.ClusterTraceProfileSpec):
        if not spec.namespace_selector.matches(dict(namespace_labels.get(pod.namespace) or {})):
            return False
    elif pod.namespace != profile.namespace:
        return False
    return spec.selector.matches(dict(pod.labels))


def resolve(profile: Profile) -> models.ResolvedProfile:
    """A profile's settings with every default filled in, as the agent consumes them."""
    assert profile.spec is not None
    settings = profile.spec.model_dump(include=set(models.TraceSettings.model_fields))
    order = list(models.Protocol)
    protocols = sorted(set(profile.spec.protocols or order), key=order.index)
    return models.ResolvedProfile.model_validate({
        **settings, "protocols": protocols, "key": profile.key, "kind": profile.kind,
        "namespace": profile.namespace, "name": profile.name})


def node_spec(pods: Iterable[Pod], profiles: Iterable[Profile],
              namespace_labels: Mapping[str, Mapping[str, str]]) -> models.NodeTraceConfigSpec:
    """One node's NodeTraceConfig spec: its selected pods, and the settings of the profiles selecting them.

    A container selected by several profiles lists all of them; each profile keeps its own settings.
    Output is sorted so that equal inputs give equal specs (the operator writes only on change).
    """
    active = sorted((p for p in profiles if p.active), key=lambda p: p.key)
    used: dict[str, Profile] = {}
    targets = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        per_container: dict[str, list[str]] = {}
        for profile in active:
            if not selects(profile, pod, namespace_labels):
                continue
            assert profile.spec is not None
            wanted = profile.spec.containers
            for container in pod.containers:
                if not wanted or container.name in wanted:
                    per_container.setdefault(container.name, []).append(profile.key)
                    used[profile.key] = profile
        if per_container:
            targets.append(models.PodTarget(
                uid=pod.uid, namespace=pod.namespace, name=pod.name, qos_class=pod.qos_class,
                service_name=pod.service_name, workload=pod.workload,
                labels={k: v for k, v in pod.labels.items() if k.startswith(models.RESOURCE_LABEL_PREFIX)},
                containers=[models.ContainerTarget(name=c.name, container_id=c.container_id,
                                                   profiles=per_container[c.name])
                            for c in pod.containers if c.name in per_container]))
    return models.NodeTraceConfigSpec(targets=targets, profiles=[resolve(used[k]) for k in sorted(used)])


def affected_nodes(profile: Profile, pods: Iterable[Pod], configs: Iterable[NodeConfig]) -> set[str]:
    """Nodes whose spec may change with this profile: candidates by namespace, and current references."""
    candidates = {pod.node for pod in pods if profile.kind != models.TraceProfile.KIND
                  or pod.namespace == profile.namespace}
    referencing = {c.name for c in configs if profile.key in c.profile_keys()}
    return (candidates | referencing) - {""}
