"""Route templating: ids collapse to `{id}`, words stay, user patterns win, depth is bounded."""

from __future__ import annotations

import pytest

from podspan_agent.protocols import routes


@pytest.mark.parametrize(("path", "route"), [
    ("", "/"),
    ("/", "/"),
    ("/health", "/health"),
    ("/users/42", "/users/{id}"),
    ("/users/42/", "/users/{id}/"),
    ("/users/42?token=x", "/users/{id}"),
    ("/page#section", "/page"),
    ("/api/v1/users", "/api/v1/users"),
    ("/orders/550e8400-e29b-41d4-a716-446655440000/items", "/orders/{id}/items"),
    ("/blobs/9f8e7d6c5b4a", "/blobs/{id}"),
    ("/blobs/deadbeef", "/blobs/deadbeef"),  # hex-looking word without a digit stays
    ("/objects/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/objects/{id}"),  # ULID
    ("/t/dGhpc2lzYXRva2VuMTIzNDU2", "/t/{id}"),  # base64-ish
    ("/t/aB3_-xYz9QwErTy1", "/t/{id}"),
    ("/reports/2024-01-31", "/reports/{id}"),
    ("/reports/2024-01-31T10:00:00Z", "/reports/{id}"),
    ("/people/jane.doe@example.com", "/people/{id}"),
    ("/people/jane.doe%40example.com/photo", "/people/{id}/photo"),
    ("/img/12345.png", "/img/{id}.png"),
    ("/img/logo.png", "/img/logo.png"),
    ("/user-profile/settings", "/user-profile/settings"),
    ("/averyveryverylongstaticword", "/averyveryverylongstaticword"),
    ("*", "*"),
])
def test_template(path: str, route: str) -> None:
    assert routes.template(path) == route


def test_depth_is_bounded() -> None:
    path = "/" + "/".join(f"s{i}" for i in range(20))
    route = routes.template(path)
    assert route == "/s0/s1/s2/s3/s4/s5/s6/s7/" + routes.MORE
    assert route.count("/") == routes.MAX_SEGMENTS + 1
    assert routes.template("/a/b/c/d/e/f/g/h") == "/a/b/c/d/e/f/g/h"


def test_user_patterns_win_in_order() -> None:
    patterns = ("/users/{id}/orders/{order}", "/users/{user}/{rest}", "/static/v1")
    assert routes.template("/users/alice/orders/o-77", patterns) == "/users/{id}/orders/{order}"
    assert routes.template("/users/alice/orders/o-77/", patterns) == "/users/{id}/orders/{order}"
    assert routes.template("/users/alice/profile", patterns) == "/users/{user}/{rest}"
    assert routes.template("/static/v1?x=1", patterns) == "/static/v1"
    assert routes.template("/users/42", patterns) == "/users/{id}"  # no pattern: the built-in rules
    assert routes.template("/users//orders/x", patterns) != "/users/{id}/orders/{order}"  # empty segment


def test_pattern_special_characters_are_literal() -> None:
    assert routes.template("/a+b/x", ("/a+b/{p}",)) == "/a+b/{p}"
    assert routes.template("/aab/x", ("/a+b/{p}",)) == "/aab/x"


def test_cardinality_of_many_ids_is_one() -> None:
    assert {routes.template(f"/users/{i}/orders/{i * 7919:x}a1b2c3d4") for i in range(1000)} == {
        "/users/{id}/orders/{id}"}
