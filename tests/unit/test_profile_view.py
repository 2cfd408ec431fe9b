"""A profile's view of a span: filters, header and query trimming, route re-templating."""

from __future__ import annotations

from podspan_agent import profile_view
from podspan_agent.spans import model

VIEW = profile_view.View(exclude_paths=("/healthz", "/metrics"), exclude_ports=frozenset({9100}),
                         headers=frozenset({"x-request-id"}), query=False, route_patterns=("/users/{user}",))


def span(path: str = "/users/42", **attributes: object) -> model.SpanRecord:
    return model.SpanRecord(
        trace_id=1, span_id=2, parent_span_id=None, name="GET /users/{id}", kind=model.SpanKind.SERVER,
        start_ns=0, end_ns=1, protocol="http", resource={},
        attributes={"url.path": path, "http.route": "/users/{id}", "server.port": 8080,
                    **attributes},  # type: ignore[dict-item]
    )


def test_excluded_paths_and_ports_drop_the_span() -> None:
    assert profile_view.apply(VIEW, span("/healthz")) is None
    assert profile_view.apply(VIEW, span("/metrics/cpu")) is None
    assert profile_view.apply(VIEW, span(**{"network.peer.port": 9100})) is None
    assert profile_view.apply(VIEW, span("/health")) is not None


def test_capture_settings_trim_and_retemplate() -> None:
    seen = profile_view.apply(VIEW, span(**{"url.query": "a=1", "http.request.header.x-request-id": "r1",
                                            "http.request.header.cookie": "[REDACTED]",
                                            "http.response.header.server": "nginx"}))
    assert seen is not None
    assert seen.name == "GET /users/{user}"
    assert seen.attributes == {"url.path": "/users/42", "http.route": "/users/{user}", "server.port": 8080,
                               "http.request.header.x-request-id": "r1"}


def test_default_view_keeps_the_span_object() -> None:
    original = span()
    assert profile_view.apply(profile_view.View(), original) is original


def test_profile_redaction_adds_to_the_built_in_one() -> None:
    view = profile_view.View(headers=frozenset({"x-tenant", "user-agent"}), redact_headers=frozenset({"x-tenant"}),
                             redact_query=frozenset({"email"}))
    seen = profile_view.apply(view, span(**{"url.query": "email=a%40b.c&page=2&token=REDACTED",
                                            "http.request.header.x-tenant": "acme",
                                            "http.request.header.user-agent": "curl"}))
    assert seen is not None
    assert seen.attributes["url.query"] == "email=REDACTED&page=2&token=REDACTED"
    assert seen.attributes["http.request.header.x-tenant"] == "REDACTED"
    assert seen.attributes["http.request.header.user-agent"] == "curl"
