"""Pydantic models of TraceProfile, ClusterTraceProfile and NodeTraceConfig: the single source of truth.

The CRD schemas in crds/ are generated from these models (scripts/gen_crds.py); the operator parses
profiles and writes NodeTraceConfig specs with them; the agent parses its NodeTraceConfig and builds its
status patch with them. Python names are snake_case; the wire (Kubernetes) names are camelCase aliases.
"""

from __future__ import annotations

import datetime
import enum
import re
import urllib.parse
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import alias_generators

GROUP = "podspan.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Label syntax as the API server enforces it (apimachinery validation).
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_KEY_PATTERN = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^{_LABEL_NAME}?$"
ENDPOINT_PATTERN = r"^https?://[^\s/?#]+(/[^\s]*)?$"

LabelKey = Annotated[str, pydantic.StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=317)]
LabelValue = Annotated[str, pydantic.StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
Port = Annotated[int, pydantic.Field(ge=1, le=65535)]
Count = Annotated[int, pydantic.Field(ge=0)]
ShortText = Annotated[str, pydantic.StringConstraints(max_length=256)]


class Model(pydantic.BaseModel):
    """Base: camelCase on the wire, unknown fields ignored (the API server prunes them too)."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        use_enum_values=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The JSON body Kubernetes stores: camelCase, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- profiles ---------------------------------------------------------------------------------------------


class Protocol(enum.StrEnum):
    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    REDIS = "redis"
    KAFKA = "kafka"
    MONGODB = "mongodb"
    DNS = "dns"


class SelectorOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(Model):
    """One label requirement, as in a Kubernetes LabelSelector."""

    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 "
                 ": !has(self.values) || size(self.values) == 0",
         "message": "In and NotIn need at least one value; Exists and DoesNotExist take none"},
    ]})

    key: LabelKey = pydantic.Field(description="The label key the requirement applies to.")
    operator: SelectorOperator = pydantic.Field(description="How the key relates to the values.")
    values: list[LabelValue] = pydantic.Field(
        default_factory=list, max_length=64,
        description="Values for In and NotIn (at least one); empty for Exists and DoesNotExist.")

    @pydantic.model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        wants_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if wants_values != bool(self.values):
            raise ValueError(f"operator {self.operator} " + ("needs at least one value" if wants_values
                                                           else "takes no values"))
        return self


class LabelSelector(Model):
    """A standard Kubernetes label selector; an empty selector matches everything."""

    match_labels: dict[LabelKey, LabelValue] = pydantic.Field(
        default_factory=dict, description="Labels that must all be present with exactly these values.")
    match_expressions: list[LabelSelectorRequirement] = pydantic.Field(
        default_factory=list, max_length=32, description="Requirements that must all hold.")

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes semantics: every matchLabels pair and every expression must hold."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == SelectorOperator.IN and labels.get(req.key) not in req.values:
                return False
            if req.operator == SelectorOperator.NOT_IN and present and labels[req.key] in req.values:
                return False
            if req.operator == SelectorOperator.EXISTS and not present:
                return False
            if req.operator == SelectorOperator.DOES_NOT_EXIST and present:
                return False
        return True


class OtlpProtocol(enum.StrEnum):
    GRPC = "grpc"
    HTTP_PROTOBUF = "http/protobuf"


class Compression(enum.StrEnum):
    GZIP = "gzip"
    NONE = "none"


class OtlpExport(Model):
    """Where and how spans of this profile are sent (OTLP)."""

    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!(self.insecure && self.endpoint.startsWith('https://'))",
         "message": "insecure: true contradicts an https:// endpoint"},
    ]})

    endpoint: Annotated[str, pydantic.StringConstraints(pattern=ENDPOINT_PATTERN, max_length=2048)] = \
        pydantic.Field(description="OTLP receiver URL, e.g. http://otel-collector.observability:4317 for "
                                   "gRPC or http://otel-collector:4318/v1/traces for http/protobuf.")
    protocol: OtlpProtocol = pydantic.Field(default=OtlpProtocol.GRPC, description="OTLP transport.")
    headers: dict[Annotated[str, pydantic.StringConstraints(max_length=256)], ShortText] = pydantic.Field(
        default_factory=dict, max_length=32,
        description="Extra request headers (e.g. tenant ids). Stored in plain text in the profile and in "
                    "NodeTraceConfig: do not put long-lived secrets here.")
    compression: Compression = pydantic.Field(default=Compression.GZIP, description="Payload compression.")
    insecure: bool = pydantic.Field(default=False, description="Use plain text instead of TLS (gRPC only).")
    metrics: bool = pydantic.Field(
        default=True, description="Also push this profile's RED metrics and service graph to the endpoint as "
        "OTLP metrics (/v1/metrics beside /v1/traces), every OTEL_METRIC_EXPORT_INTERVAL of the agent.")

    @pydantic.field_validator("endpoint")
    @classmethod
    def _endpoint_parses(cls, value: str) -> str:
        # The schema pattern cannot check the port range or the host; urllib can.
        url = urllib.parse.urlsplit(value)
        try:
            port = url.port
        except ValueError as e:
            raise ValueError(f"endpoint {value!r}: {e}") from None
        if not url.hostname or (port is not None and port == 0):
            raise ValueError(f"endpoint {value!r} has no usable host:port")
        return value

    @pydantic.model_validator(mode="after")
    def _insecure_needs_plain_url(self) -> OtlpExport:
        if self.insecure and self.endpoint.startswith("https://"):
            raise ValueError("insecure: true contradicts an https:// endpoint")
        return self


class Export(Model):
    """Exporters of this profile's spans."""

    otlp: OtlpExport = pydantic.Field(description="The OTLP exporter.")


class SamplingMode(enum.StrEnum):
    RATIO = "ratio"
    PARENT_BASED = "parentBased"
    SMART = "smart"


class SmartSampling(Model):
    """Which traces `smart` mode keeps: every trace with an error, every trace with a latency outlier
    for its operation, and a baseline share of the rest."""

    baseline: float = pydantic.Field(default=0.05, ge=0.0, le=1.0,
                                     description="Share of the other traces kept, 0 to 1.")
    latency_quantile: float = pydantic.Field(
        default=0.99, ge=0.5, le=0.999,
        description="A span slower than this quantile of its operation's recent spans is an outlier.")
    latency_threshold_ms: int | None = pydantic.Field(
        default=None, ge=1, le=3_600_000,
        description="A span at least this slow is an outlier whatever its operation's quantile.")
    decision_wait_ms: int = pydantic.Field(
        default=2000, ge=100, le=60_000,
        description="How long a trace's spans are held on the node before it is kept or dropped as a whole.")


class Sampling(Model):
    """Which traces are exported. RED metrics count every request whatever this keeps."""

    mode: SamplingMode | None = pydantic.Field(
        default=None, description="ratio: keep `ratio` of traces by trace id; parentBased: follow an "
        "incoming traceparent's sampled flag, else `ratio`; smart: decide on the node per trace (errors, "
        "latency outliers, a baseline share). Omitted: parentBased, or ratio when parentBased is false.")
    ratio: float = pydantic.Field(default=1.0, ge=0.0, le=1.0,
                                  description="Fraction of new traces to keep, 0 to 1 (ratio and parentBased).")
    parent_based: bool = pydantic.Field(
        default=True, description="Without mode: follow the sampled flag of an incoming traceparent.")
    smart: SmartSampling = pydantic.Field(default_factory=SmartSampling, description="Settings of smart mode.")

    @property
    def effective_mode(self) -> SamplingMode:
        if self.mode is not None:
            return SamplingMode(self.mode)
        return SamplingMode.PARENT_BASED if self.parent_based else SamplingMode.RATIO


class BodyCapture(Model):
    """Request/response body capture (off by default: bodies often hold private data)."""

    enabled: bool = pydantic.Field(default=False, description="Record bodies as span attributes.")
    max_bytes: int = pydantic.Field(default=1024, ge=1, le=16384, description="Bytes kept per body.")


DEFAULT_REDACTED_HEADERS = ["authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"]
DEFAULT_REDACTED_QUERY = ["token", "access_token", "api_key", "apikey", "key", "password", "secret", "sig",
                          "signature"]


class Redaction(Model):
    """What is replaced by REDACTED before a span leaves the node."""

    headers: list[Annotated[str, pydantic.StringConstraints(max_length=256)]] = pydantic.Field(
        default_factory=lambda: list(DEFAULT_REDACTED_HEADERS), max_length=64,
        description="Header names (case-insensitive) whose values are redacted.")
    query_params: list[Annotated[str, pydantic.StringConstraints(max_length=256)]] = pydantic.Field(
        default_factory=lambda: list(DEFAULT_REDACTED_QUERY), max_length=64,
        description="Query parameter names (case-insensitive) whose values are redacted.")
    sql_literals: bool = pydantic.Field(default=True,
                                        description="Replace SQL literals in db.query.text by placeholders.")


class Capture(Model):
    """Which parts of requests become span attributes."""

    headers: list[Annotated[str, pydantic.StringConstraints(max_length=256)]] = pydantic.Field(
        default_factory=list, max_length=64,
        description="Request/response header names recorded as http.*.header.<name> attributes.")
    query: bool = pydantic.Field(default=True, description="Record url.query (after redaction).")
    body: BodyCapture = pydantic.Field(default_factory=BodyCapture, description="Body capture.")
    redact: Redaction = pydantic.Field(default_factory=Redaction, description="Redaction rules.")
    route_patterns: list[Annotated[str, pydantic.StringConstraints(min_length=1, max_length=512)]] = \
        pydantic.Field(default_factory=list, max_length=256,
                       description="http.route templates such as /users/{id}; without them ids, numbers "
                                   "and UUIDs in paths are replaced by {id}.")
    tls: bool = pydantic.Field(
        default=True, description="Read TLS plaintext from the OpenSSL the pods' processes use (uprobes on "
                                  "libssl or an executable that links it statically) and from Go's crypto/tls "
                                  "(uprobes on a Go executable with symbols), so HTTPS and TLS database traffic "
                                  "yield spans and failed handshakes error spans; off, TLS connections yield none.")


class Filters(Model):
    """Traffic that is never turned into spans."""

    exclude_paths: list[Annotated[str, pydantic.StringConstraints(pattern=r"^/", max_length=512)]] = \
        pydantic.Field(default_factory=list, max_length=64,
                       description="URL path prefixes to ignore, e.g. /healthz.")
    exclude_ports: list[Port] = pydantic.Field(default_factory=list, max_length=64,
                                               description="Local or peer ports to ignore.")


class OverheadBudget(Model):
    """How much CPU the node's agent may spend on tracing. Over it, the kernel fully captures a smaller fraction of
    HTTP/1 and Redis exchanges (drawn at request start); the rest are only counted, so RED metrics stay exact."""

    cpu_percent: float = pydantic.Field(
        ge=0.01, description="Percent of one CPU of the node (100 = one core): the agent's process CPU time plus the "
        "in-kernel run time of its BPF programs. With several budgeted profiles on a node the smallest applies.")


def _list_set(description: str) -> dict[str, Any]:
    return {"description": description, "json_schema_extra": {"x-kubernetes-list-type": "set"}}


class TraceSettings(Model):
    """What to trace and where to send it; shared by profiles and the per-node resolved settings."""

    protocols: list[Protocol] | None = pydantic.Field(
        default=None, max_length=len(Protocol),
        **_list_set("Protocols to parse; omitted means every protocol the agent knows."))
    export: Export = pydantic.Field(description="Where spans go.")
    sampling: Sampling = pydantic.Field(default_factory=Sampling, description="Which traces are exported.")
    capture: Capture = pydantic.Field(default_factory=Capture, description="Captured attributes.")
    filters: Filters = pydantic.Field(default_factory=Filters, description="Ignored traffic.")
    resource_attributes: dict[Annotated[str, pydantic.StringConstraints(max_length=256)], ShortText] = \
        pydantic.Field(default_factory=dict, max_length=64,
                       description="Extra OpenTelemetry resource attributes on every span of this profile.")
    overhead_budget: OverheadBudget | None = pydantic.Field(
        default=None, description="Keep the agent's cost within this budget by capturing fewer exchanges in full; "
        "omitted: capture every exchange.")


class TraceProfileSpec(TraceSettings):
    """Desired tracing for the pods selected in the profile's namespace."""

    selector: LabelSelector = pydantic.Field(
        description="Pods to trace in the profile's namespace; an empty selector selects every pod.")
    containers: list[Annotated[str, pydantic.StringConstraints(max_length=253)]] = pydantic.Field(
        default_factory=list, max_length=64,
        **_list_set("Container names to trace; empty means every container of a selected pod."))


class ClusterTraceProfileSpec(TraceProfileSpec):
    """Desired tracing for pods selected across the namespaces that namespaceSelector selects."""

    namespace_selector: LabelSelector = pydantic.Field(
        default_factory=LabelSelector,
        description="Namespaces whose pods are candidates; an empty selector selects every namespace.")


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A Kubernetes-style condition."""

    type: str = pydantic.Field(description="Condition type: Ready or Degraded.")
    status: ConditionStatus = pydantic.Field(description="True, False or Unknown.")
    reason: str = pydantic.Field(description="CamelCase reason, e.g. NoMatchingPods or NodesNotReporting.")
    message: str = pydantic.Field(default="", description="Human-readable details.")
    last_transition_time: datetime.datetime = pydantic.Field(
        description="When status or reason last changed.")
    observed_generation: int | None = pydantic.Field(
        default=None, description="The profile generation the condition was computed for.")


class NodeCounts(Model):
    """Nodes that host selected pods, and how many of them report the profile applied."""

    ready: Count = pydantic.Field(default=0, description="Nodes whose agent reports this profile applied.")
    total: Count = pydantic.Field(default=0, description="Nodes whose NodeTraceConfig references it.")


class ProfileStatus(Model):
    """Observed state of a profile, aggregated by the operator from every NodeTraceConfig status."""

    observed_generation: int | None = pydantic.Field(default=None, description="Last generation processed.")
    matched_pods: Count = pydantic.Field(default=0, description="Running or pending pods selected.")
    traced_pods: Count = pydantic.Field(default=0,
                                        description="Selected pods with at least one attached container.")
    nodes: NodeCounts = pydantic.Field(default_factory=NodeCounts, description="Node readiness.")
    spans_exported: Count = pydantic.Field(default=0, description="Spans exported, summed over nodes.")
    spans_dropped: Count = pydantic.Field(default=0, description="Spans dropped, summed over nodes.")
    events_lost: Count = pydantic.Field(default=0, description="Kernel events lost, summed over nodes.")
    parser_drops: Count = pydantic.Field(
        default=0, description="Exchanges the protocol parsers could not report, summed over nodes.")
    spans_sampled_out: Count = pydantic.Field(
        default=0, description="Spans sampling did not keep, summed over nodes: with spansExported, the share of "
        "traffic exported.")
    exchanges_skipped: Count = pydantic.Field(
        default=0, description="Exchanges the kernel counted without capturing them (overheadBudget), summed over "
        "nodes: they are in the RED metrics, not in spans.")
    capture_fraction: float | None = pydantic.Field(
        default=None, ge=0.0, le=1.0, description="With overheadBudget: the smallest fraction of exchanges a node "
        "captures in full (1: all of them).")
    conditions: list[Condition] = pydantic.Field(
        default_factory=list, description="Ready and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


class ObjectMeta(Model):
    """The parts of metadata Podspan reads."""

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = pydantic.Field(default_factory=dict)
    annotations: dict[str, str] = pydantic.Field(default_factory=dict)


class Resource(Model):
    """A whole custom object: the naming shared by all Podspan kinds."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAME: ClassVar[str]
    NAMESPACED: ClassVar[bool]

    api_version: str = API_VERSION
    kind: str
    metadata: ObjectMeta = pydantic.Field(default_factory=ObjectMeta)


class TraceProfile(Resource):
    """Traces the selected pods of one namespace."""

    KIND = "TraceProfile"
    PLURAL = "traceprofiles"
    SHORT_NAME = "tp"
    NAMESPACED = True

    kind: Literal["TraceProfile"] = "TraceProfile"
    spec: TraceProfileSpec
    status: ProfileStatus | None = None


class ClusterTraceProfile(Resource):
    """Traces the selected pods of every namespace that namespaceSelector selects."""

    KIND = "ClusterTraceProfile"
    PLURAL = "clustertraceprofiles"
    SHORT_NAME = "ctp"
    NAMESPACED = False

    kind: Literal["ClusterTraceProfile"] = "ClusterTraceProfile"
    spec: ClusterTraceProfileSpec
    status: ProfileStatus | None = None


def profile_key(kind: str, namespace: str | None, name: str) -> str:
    """The id of a profile inside NodeTraceConfig: TraceProfile/<ns>/<name> or ClusterTraceProfile/<name>."""
    return f"{kind}/{namespace}/{name}" if kind == TraceProfile.KIND else f"{kind}/{name}"


# -- NodeTraceConfig spec (written by the operator only) ---------------------------------------------------


class QOSClass(enum.StrEnum):
    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


class Workload(Model):
    """The controller that owns the pod (a ReplicaSet is reported as its Deployment)."""

    kind: str = pydantic.Field(description="Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, ...")
    name: str = pydantic.Field(description="The workload's name.")


class ContainerTarget(Model):
    """One container to trace and the profiles that apply to it."""

    name: str = pydantic.Field(description="Container name (k8s.container.name).")
    container_id: str | None = pydantic.Field(
        default=None, alias="containerID",
        description="Runtime-prefixed id from status.containerStatuses, e.g. containerd://<64 hex>; absent "
                    "until the container starts. It changes when the container restarts.")
    profiles: list[str] = pydantic.Field(
        min_length=1, **_list_set("Keys of the profiles (spec.profiles[].key) that select this container."))


class PodTarget(Model):
    """A selected pod on this node, with what the agent needs to find its cgroups and label its spans."""

    uid: str = pydantic.Field(description="Pod uid (k8s.pod.uid); part of the kubelet's cgroup dir name.")
    namespace: str = pydantic.Field(description="k8s.namespace.name.")
    name: str = pydantic.Field(description="k8s.pod.name.")
    qos_class: QOSClass = pydantic.Field(
        description="QoS class; selects the kubelet cgroup parent (kubepods[-burstable|-besteffort]).")
    service_name: str = pydantic.Field(
        description="service.name: annotation resource.opentelemetry.io/service.name, else label "
                    "app.kubernetes.io/name, else the owning workload's name, else the pod name.")
    workload: Workload | None = pydantic.Field(default=None, description="Owning workload, if any.")
    labels: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="The pod's app.kubernetes.io/* labels (resource attributes such as service.version).")
    containers: list[ContainerTarget] = pydantic.Field(description="Containers to trace, by name.")

    def profile_keys(self) -> list[str]:
        """Every profile that selects at least one container of this pod."""
        return sorted({key for c in self.containers for key in c.profiles})


class ProfileKind(enum.StrEnum):
    TRACE_PROFILE = "TraceProfile"
    CLUSTER_TRACE_PROFILE = "ClusterTraceProfile"


class ResolvedProfile(TraceSettings):
    """A profile's settings with defaults resolved, as the agent applies them."""

    key: str = pydantic.Field(description="TraceProfile/<namespace>/<name> or ClusterTraceProfile/<name>.")
    kind: ProfileKind = pydantic.Field(description="Kind of the source profile.")
    namespace: str | None = pydantic.Field(default=None, description="Namespace of a TraceProfile.")
    name: str = pydantic.Field(description="Name of the source profile.")
    protocols: list[Protocol] = pydantic.Field(  # resolved: never omitted
        max_length=len(Protocol), **_list_set("Protocols to parse (all of them if the profile names none)."))


class NodeTraceConfigSpec(Model):
    """What the node's agent must trace. Written only by the operator."""

    targets: list[PodTarget] = pydantic.Field(default_factory=list,
                                              description="Selected pods on this node, sorted.")
    profiles: list[ResolvedProfile] = pydantic.Field(
        default_factory=list, description="Settings of every profile referenced by targets, sorted by key.")


# -- NodeTraceConfig status (written by the node's agent only) ---------------------------------------------


class TargetState(enum.StrEnum):
    ATTACHED = "attached"
    WAITING = "waiting"
    ERROR = "error"


class TargetStatus(Model):
    """Where the agent stands with one container of spec.targets."""

    pod_uid: str = pydantic.Field(alias="podUID", description="spec.targets[].uid.")
    container: str = pydantic.Field(description="spec.targets[].containers[].name.")
    container_id: str | None = pydantic.Field(default=None, alias="containerID",
                                              description="The container id the state refers to.")
    state: TargetState = pydantic.Field(
        description="attached: probes see its cgroup; waiting: no container id or cgroup yet; "
                    "error: see reason.")
    reason: str = pydantic.Field(default="", description="CamelCase reason, e.g. CgroupNotFound.")
    message: str = pydantic.Field(default="", description="Details.")
    tls: list[Annotated[str, pydantic.StringConstraints(max_length=512)]] = pydantic.Field(
        default_factory=list, max_length=32,
        description="TLS libraries the container's processes use and whether the TLS probes are attached, e.g. "
                    "'openssl-3.0.19 (libssl.so.3): attached', 'go1.19.8 (server): not attached (stripped: no "
                    "symbols to probe)'. Empty when no profile of the container reads TLS (capture.tls) or its "
                    "processes use none.")
    tls_unprobed: list[ShortText] = pydantic.Field(
        default_factory=list, max_length=32,
        description="Processes, e.g. 'pid 42 (node)', whose TLS handshakes ran outside the probed OpenSSL calls: "
                    "a TLS stack that is not probed (stripped Go, BoringSSL, rustls) or OpenSSL over memory "
                    "BIOs (Node.js). Their TLS connections yield no spans.")


class ProfileCounters(Model):
    """Per-profile counters since the agent started; the agent lists a profile once it has applied it."""

    profile: str = pydantic.Field(description="spec.profiles[].key.")
    spans_exported: Count = pydantic.Field(default=0, description="Spans accepted by the exporter.")
    spans_dropped: Count = pydantic.Field(default=0, description="Spans dropped (queue full, export error).")
    events_lost: Count = pydantic.Field(default=0, description="Kernel events lost for this profile's pods.")
    parser_drops: Count = pydantic.Field(
        default=0, description="Exchanges of this profile's pods the protocol parsers could not report (queue "
        "overflow, unparsable or cut bytes, framing lost).")
    spans_sampled_out: Count = pydantic.Field(
        default=0, description="Spans the profile's sampling did not keep (counted in its RED metrics all the same).")
    exchanges_skipped: Count = pydantic.Field(
        default=0, description="Exchanges of this profile's pods the kernel counted in the RED metrics without "
        "capturing them (overheadBudget).")
    capture_fraction: float | None = pydantic.Field(
        default=None, ge=0.0, le=1.0, description="With overheadBudget: the fraction of HTTP/1 and Redis exchanges "
        "captured in full now; below 1 while the agent is over budget.")
    agent_cpu_percent: float | None = pydantic.Field(
        default=None, ge=0.0, description="With overheadBudget: the agent's cost over the last second, in percent of "
        "one CPU.")
    cost_scope: str | None = pydantic.Field(
        default=None, description="With overheadBudget: what agentCpuPercent covers (userspace CPU and BPF run time, "
        "or userspace only and why).")
    export_error: str | None = pydantic.Field(
        default=None, description="The last OTLP export error while exports fail; absent once one succeeds.")


class ProbeError(Model):
    """A probe that failed to load or attach."""

    probe: str = pydantic.Field(description="Probe name, e.g. tracepoint:syscalls:sys_enter_read.")
    message: str = pydantic.Field(description="The error.")


class NodeTraceConfigStatus(Model):
    """What the node's agent reports. Written only by the agent of that node (status subresource)."""

    observed_generation: int | None = pydantic.Field(
        default=None, description="metadata.generation of the spec the agent last applied.")
    heartbeat_time: datetime.datetime | None = pydantic.Field(
        default=None, description="Refreshed by the agent periodically; a stale one means a silent node.")
    agent_version: str | None = pydantic.Field(default=None, description="Agent version.")
    header_source: str | None = pydantic.Field(
        default=None, description="Kernel headers bcc compiled with: host, fallback or env, and the path.")
    targets: list[TargetStatus] = pydantic.Field(default_factory=list, description="Per-container state.")
    profiles: list[ProfileCounters] = pydantic.Field(default_factory=list,
                                                     description="Per-profile counters.")
    probe_errors: list[ProbeError] = pydantic.Field(default_factory=list, description="Probe failures.")
    probes_attached: bool | None = pydantic.Field(
        default=None, description="Whether the capture programs run: the agent detaches them while the node "
                                  "has no container to trace, so untraced nodes pay nothing.")

    @pydantic.field_validator("heartbeat_time")
    @classmethod
    def _utc(cls, value: datetime.datetime | None) -> datetime.datetime | None:
        # Kubernetes times are UTC; a zone-less value is read as UTC so it can be compared.
        return value.replace(tzinfo=datetime.UTC) if value is not None and value.tzinfo is None else value


class NodeTraceConfig(Resource):
    """Per-node agent configuration; the name is the node name."""

    KIND = "NodeTraceConfig"
    PLURAL = "nodetraceconfigs"
    SHORT_NAME = "ntc"
    NAMESPACED = False

    kind: Literal["NodeTraceConfig"] = "NodeTraceConfig"
    spec: NodeTraceConfigSpec = pydantic.Field(default_factory=NodeTraceConfigSpec)
    status: NodeTraceConfigStatus | None = None


RESOURCES: list[type[Resource]] = [TraceProfile, ClusterTraceProfile, NodeTraceConfig]

# Pod labels copied into PodTarget.labels (the recommended labels that map to resource attributes).
RESOURCE_LABEL_PREFIX = "app.kubernetes.io/"


def validation_message(error: pydantic.ValidationError, prefix: str = "spec") -> str:
    """One line per problem, with the camelCase path a user sees in their YAML."""
    lines = []
    for item in error.errors():
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"])
        lines.append(f"{path}: {re.sub(r'^Value error, ', '', item['msg'])}")
    return "; ".join(lines)
