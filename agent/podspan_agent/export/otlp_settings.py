"""OTLP exporter configuration: one resolver for every signal (traces, metrics), applying the OTLP
exporter spec's order — argument, then OTEL_EXPORTER_OTLP_<SIGNAL>_*, then OTEL_EXPORTER_OTLP_*, then the
spec's defaults — and its endpoint rules. Pure apart from reading the environment it is given."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping

from podspan_agent.protocols import base

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)
DEFAULT_PROTOCOL = HTTP_PROTOBUF  # the OTLP exporter spec's default
DEFAULT_PORTS = {GRPC: 4317, HTTP_PROTOBUF: 4318}
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclasses.dataclass(frozen=True, slots=True)
class Signal:
    """What differs between OTLP signals on the wire and in the environment."""

    env_name: str  # OTEL_EXPORTER_OTLP_<env_name>_*
    http_path: str
    grpc_method: str


TRACES = Signal("TRACES", "/v1/traces", "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
METRICS = Signal("METRICS", "/v1/metrics", "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    secure: bool
    host: str
    port: int
    path: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, protocol: str) -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.netloc}{self.path if protocol == HTTP_PROTOBUF else ''}"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """An exporter's resolved settings."""

    signal: Signal
    protocol: str
    target: Target
    headers: Mapping[str, str]
    gzip: bool

    @property
    def endpoint(self) -> str:
        return self.target.url(self.protocol)


def resolve(
    signal: Signal,
    endpoint: str | None = None,
    *,
    protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    insecure: bool | None = None,
    compression: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Arguments left as None come from the environment, then the spec's defaults, except compression,
    which defaults to gzip. Raises ValueError on what no exporter could use."""
    env = os.environ if environ is None else environ
    chosen = protocol or env_value(env, signal, "PROTOCOL")
    protocol = chosen or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    compression = (compression or env_value(env, signal, "COMPRESSION") or "gzip").lower()
    if compression not in ("gzip", "none"):
        raise ValueError(f"OTLP compression {compression!r} is not gzip or none")
    if headers is None:
        headers = parse_key_value_list(env_value(env, signal, "HEADERS") or "")
    target = resolve_target(signal, endpoint, protocol, insecure, env)
    if chosen is None and target.port == DEFAULT_PORTS[GRPC]:
        log.warning("OTLP endpoint %s is on the OTLP/gRPC port but no protocol was set, so %s is used: "
                    "pass --otlp-protocol grpc (or set OTEL_EXPORTER_OTLP_PROTOCOL=grpc) if it speaks gRPC",
                    target.netloc, DEFAULT_PROTOCOL)
    return Settings(signal, protocol, target, dict(headers), compression == "gzip")


def parse_key_value_list(value: str) -> dict[str, str]:
    """Parse the `k=v,k2=v2` format of OTEL_RESOURCE_ATTRIBUTES / OTEL_EXPORTER_OTLP_HEADERS.

    Keys and values are percent-decoded and stripped; members without `=` or with an empty key
    are skipped with a warning (as the OpenTelemetry Python SDK does) so one typo does not lose
    the rest.
    """
    result: dict[str, str] = {}
    for member in value.split(","):
        if not member.strip():
            continue
        key, sep, raw = member.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not key:
            log.warning("ignoring malformed key=value member %r", member)
            continue
        result[key] = urllib.parse.unquote(raw.strip())
    return result


def base_resource(
    environ: Mapping[str, str] | None = None,
    extra: Mapping[str, base.AttributeValue] | None = None,
) -> dict[str, base.AttributeValue]:
    """The exporter's base resource, merged under every span's own `record.resource`.

    Precedence, lowest first: detected `host.name`, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME,
    then `extra` (what the agent itself is told, e.g. `k8s.node.name` or a profile's
    resourceAttributes). Per-process attributes (`process.pid`, ...) come with each span.
    """
    env = os.environ if environ is None else environ
    resource: dict[str, base.AttributeValue] = {"host.name": socket.gethostname()}
    resource.update(parse_key_value_list(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        resource["service.name"] = service_name
    if extra:
        resource.update(extra)
    return resource


def env_endpoint(signal: Signal, environ: Mapping[str, str] | None = None) -> str | None:
    """The endpoint the OTEL_EXPORTER_OTLP_* environment configures for `signal`, if any.

    Standalone mode uses this to choose between OTLP and printing spans.
    """
    return env_value(os.environ if environ is None else environ, signal, "ENDPOINT")


def env_value(env: Mapping[str, str], signal: Signal, suffix: str) -> str | None:
    """Signal-specific OTEL_EXPORTER_OTLP_<SIGNAL>_* first, then the generic variable."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.env_name}_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def resolve_target(
    signal: Signal, endpoint: str | None, protocol: str, insecure: bool | None, env: Mapping[str, str]
) -> Target:
    """Apply the OTLP exporter spec's endpoint rules.

    `http://`/`https://` decide transport security; a bare `host:port` is secure unless
    `insecure` (or OTEL_EXPORTER_OTLP_INSECURE) says otherwise. For HTTP, an explicit or
    signal-specific endpoint without a path gets the signal's path (`/v1/traces`); the generic
    OTEL_EXPORTER_OTLP_ENDPOINT is a base URL that the signal's path is always appended to.
    """
    is_base_url = False
    if endpoint is None:
        endpoint = env.get(f"OTEL_EXPORTER_OTLP_{signal.env_name}_ENDPOINT", "").strip() or None
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None
        is_base_url = endpoint is not None
    if endpoint is None:
        endpoint = f"http://localhost:{DEFAULT_PORTS[protocol]}"
    if insecure is None:
        env_insecure = env_value(env, signal, "INSECURE")
        insecure = env_insecure is not None and env_insecure.lower() == "true"

    has_scheme = _SCHEME_RE.match(endpoint) is not None
    parts = urllib.parse.urlsplit(endpoint if has_scheme else f"//{endpoint}")
    if has_scheme and parts.scheme not in ("http", "https"):
        raise ValueError(f"OTLP endpoint {endpoint!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"OTLP endpoint {endpoint!r}: no host")
    secure = parts.scheme == "https" if has_scheme else not insecure
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"OTLP endpoint {endpoint!r}: {error}") from None
    if port is None:
        port = (443 if secure else 80) if has_scheme else DEFAULT_PORTS[protocol]

    path = parts.path
    if protocol == GRPC:
        if path not in ("", "/"):
            raise ValueError(f"OTLP/gRPC endpoint {endpoint!r} must not have a path")
    elif is_base_url:
        path = path.rstrip("/") + signal.http_path
    elif path in ("", "/"):
        path = signal.http_path
    return Target(secure=secure, host=parts.hostname, port=port, path=path)
