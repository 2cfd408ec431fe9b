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


def test_bodies_go_only_to_profiles_that_asked_and_at_most_their_limit() -> None:
    body = {"podspan.http.request.body": '{"user": "bob", "note": "héllo wörld"}'}
    assert "podspan.http.request.body" not in profile_view.apply(VIEW, span(**body)).attributes  # type: ignore[union-attr]
    small = profile_view.apply(profile_view.View(body_limit=24), span(**body))
    assert small is not None
    assert small.attributes["podspan.http.request.body"] == '{"user": "bob", "note": '
    assert small.attributes["podspan.http.request.body.truncated"] is True
    roomy = profile_view.apply(profile_view.View(body_limit=1024), span(**body))
    assert roomy is not None and "podspan.http.request.body.truncated" not in roomy.attributes
    cut_in_a_character = profile_view.apply(profile_view.View(body_limit=27), span(**body))
    assert cut_in_a_character is not None
    assert cut_in_a_character.attributes["podspan.http.request.body"] == '{"user": "bob", "note": "h'  # no half é
