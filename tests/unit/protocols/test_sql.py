"""SQL sanitizing: literals never survive, structure does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podspan_agent.protocols import sql


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT * FROM t WHERE id = 42 AND name = 'bo''b'", "SELECT * FROM t WHERE id = ? AND name = ?"),
        ("select a from t where x in (1, 2,3)", "select a from t where x in (?)"),
        ("SELECT 1.5e10, .5, 0x1F, X'0A', TRUE", "SELECT ?, ?, ?, ?, ?"),
        ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')", "INSERT INTO t (a, b) VALUES (?, ?)"),
        ("UPDATE t SET a = $$x$$, b = $tag$x$tag$ WHERE id = $1", "UPDATE t SET a = ?, b = ? WHERE id = $1"),
        ("SELECT 1 -- comment 'x'\n /* block 'y' */ FROM t1", "SELECT ? FROM t1"),
        ("SELECT \"Col1\" FROM \"T2\"", "SELECT \"Col1\" FROM \"T2\""),
        ("SELECT 'cut off by the capt", "SELECT ?"),
        ("SELECT E'a\\'b', 'c'", "SELECT ?, ?"),
    ],
)
def test_sanitize(query: str, expected: str) -> None:
    assert sql.sanitize(query) == expected


def test_mysql_double_quoted_strings_are_literals() -> None:
    assert sql.sanitize('SELECT "secret"', double_quoted_strings=True) == "SELECT ?"


def test_sanitize_is_bounded() -> None:
    assert len(sql.sanitize("SELECT " + "a, " * 5000, max_len=100)) == 100


@pytest.mark.parametrize(
    ("query", "operation", "collection"),
    [
        ("select * from users where id = 1", "SELECT", "users"),
        ("  (SELECT 1)", "SELECT", None),
        ("INSERT INTO shop.orders VALUES (1)", "INSERT", "shop.orders"),
        ("UPDATE users SET a = 1", "UPDATE", "users"),
        ("DELETE FROM users WHERE id = 1", "DELETE", "users"),
        ("WITH x AS (SELECT 1) DELETE FROM t", "DELETE", None),
        ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None),
        ("SELECT * FROM (SELECT 1) s", "SELECT", None),
        ("begin", "BEGIN", None),
        ("/* c */ COMMIT", "COMMIT", None),
        ("", None, None),
        ("'", None, None),
    ],
)
def test_operation_and_collection(query: str, operation: str | None, collection: str | None) -> None:
    statement = sql.describe(query)
    assert (statement.operation, statement.collection) == (operation, collection)
    assert statement.text == sql.sanitize(query)


@given(st.text(max_size=300), st.integers(min_value=-3, max_value=1000))
def test_never_raises_and_hides_string_literals(noise: str, number: int) -> None:
    secret = "s3cr3t-value"
    query = f"SELECT {noise} FROM t WHERE a = '{secret}' AND b = {number}"
    out = sql.sanitize(query)
    sql.describe(noise)
    sql.describe(noise, double_quoted_strings=True)
    if not any(marker in noise for marker in ("'", "--", "/*", "$", "\\")):
        assert secret not in out
