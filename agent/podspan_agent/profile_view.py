"""What one profile sees of a span: its filters drop spans, its capture settings trim and redact
headers and the query and re-template the route. Pure; the node agent's Router applies one view per profile, so two
profiles selecting the same pod each get their own settings from one capture."""

from __future__ import annotations

import dataclasses

from podspan_agent.protocols import redact, routes
from podspan_agent.spans import model
from podspan_api import models

_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
_BODY_KEYS = ("podspan.http.request.body", "podspan.http.response.body")
_BODY_TRUNCATED = {key: f"{key}.truncated" for key in _BODY_KEYS}
_PORT_KEYS = ("server.port", "client.port", "network.peer.port", "network.local.port")


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    exclude_paths: tuple[str, ...] = ()
    exclude_ports: frozenset[int] = frozenset()
    headers: frozenset[str] = frozenset()  # lower-case header names to keep
    query: bool = True
    route_patterns: tuple[str, ...] = ()
    redact_headers: frozenset[str] = frozenset()  # lower-case, on top of the built-in sensitive headers
    redact_query: frozenset[str] = frozenset()  # normalized keys, on top of the built-in credential keys
    body_limit: int = 0  # bytes of each body kept; 0: no bodies

    @classmethod
    def of(cls, profile: models.ResolvedProfile) -> View:
        return cls(
            exclude_paths=tuple(profile.filters.exclude_paths),
            exclude_ports=frozenset(profile.filters.exclude_ports),
            headers=frozenset(name.lower() for name in profile.capture.headers),
            query=profile.capture.query,
            route_patterns=tuple(profile.capture.route_patterns),
            redact_headers=frozenset(name.lower() for name in profile.capture.redact.headers),
            redact_query=frozenset(key.lower().replace("-", "_") for key in profile.capture.redact.query_params),
            body_limit=profile.capture.body.max_bytes if profile.capture.body.enabled else 0,
        )


def apply(view: View, span: model.SpanRecord) -> model.SpanRecord | None:
    """The span as this profile exports it, or None when its filters exclude it."""
    attributes = span.attributes
    path = attributes.get("url.path")
    if isinstance(path, str) and path.startswith(view.exclude_paths):
        return None
    if view.exclude_ports and any(attributes.get(key) in view.exclude_ports for key in _PORT_KEYS):
        return None
    kept = {
        key: value for key, value in attributes.items()
        if not (key.startswith(_HEADER_PREFIXES) and key.split(".", 3)[3] not in view.headers)
        and (view.query or key != "url.query")
    }
    for key in kept:
        if key.startswith(_HEADER_PREFIXES) and key.split(".", 3)[3] in view.redact_headers:
            kept[key] = redact.REDACTED
    if view.redact_query and isinstance(kept.get("url.query"), str):
        kept["url.query"] = redact.query(str(kept["url.query"]), view.redact_query)
    for key in _BODY_KEYS:
        captured = kept.get(key)
        if not isinstance(captured, str):
            continue
        if not view.body_limit:
            del kept[key]
            kept.pop(_BODY_TRUNCATED[key], None)
        elif len(captured.encode()) > view.body_limit:  # another profile on the node asked for more
            kept[key] = captured.encode()[: view.body_limit].decode("utf-8", "ignore")
            kept[_BODY_TRUNCATED[key]] = True
    name = span.name
    route = attributes.get("http.route")
    if view.route_patterns and isinstance(path, str) and isinstance(route, str) and not route.endswith(routes.MORE):
        templated = routes.template(path, view.route_patterns)
        kept["http.route"] = templated
        if name.endswith(route):  # HTTP span names are "<method> <route>"
            name = name[: len(name) - len(route)] + templated
    if kept == attributes and name == span.name:
        return span
    return dataclasses.replace(span, attributes=kept, name=name)
