"""Privacy defaults audit (docs/reliability.md, "Privacy"): one test per rule, through the parsers the
registry builds with the default CaptureSettings (or with header capture on, where the rule is about it)."""

from __future__ import annotations

import struct

import pytest

from podspan_agent import profile_view
from podspan_agent.protocols import base, http2, redact, registry
from podspan_agent.spans import model
from podspan_api import models
from tests.unit.protocols import test_http2, test_mongodb

SECRET = "s3cr3t-Value"  # every credential or private value below contains this
DEFAULTS = base.CaptureSettings()
HEADERS_ON = base.CaptureSettings(headers=True)


def parse(protocol: str, runs: list[tuple[bool, bytes]],
          settings: base.CaptureSettings = DEFAULTS) -> list[base.Record]:
    """Feed alternating runs through the registry's parser for `protocol`, then flush."""
    (spec,) = (spec for spec in registry.ALL if protocol in spec.names)
    parser = spec.new_parser(settings)
    records: list[base.Record] = []
    for index, (from_client, data) in enumerate(runs):
        records += parser.feed(base.Message(from_client, data, len(data), index * 10, index * 10 + 5))
    return records + parser.flush()


def exported_text(records: list[base.Record]) -> str:
    """Everything of the records that could leave the node, as one string."""
    parts: list[str] = []
    for record in records:
        parts += [record.name, record.error or "", *map(str, record.attributes.values())]
        parts += record.context_headers.values()
    return "\n".join(parts)


def one(records: list[base.Record]) -> base.Record:
    assert len(records) == 1, records
    return records[0]


# -- HTTP/1 ------------------------------------------------------------------------------------------

def http1_exchange(request_headers: str = "", response_headers: str = "", target: str = "/a",
                   body: str = "") -> list[tuple[bool, bytes]]:
    request = f"POST {target} HTTP/1.1\r\nHost: shop\r\n{request_headers}Content-Length: {len(body)}\r\n\r\n{body}"
    response = f"HTTP/1.1 200 OK\r\n{response_headers}Content-Length: {len(body)}\r\n\r\n{body}"
    return [(True, request.encode()), (False, response.encode())]


def test_settings_default_to_private() -> None:
    assert not DEFAULTS.bodies and DEFAULTS.body_limit == 0
    assert not DEFAULTS.headers and not DEFAULTS.statement_parameters
    default_profile = models.TraceProfileSpec.model_validate(
        {"selector": {"matchLabels": {"app": "a"}}, "export": {"otlp": {"endpoint": "http://127.0.0.1:4318"}}})
    assert default_profile.capture.headers == [] and not default_profile.capture.body.enabled


def test_bodies_are_not_recorded_by_default() -> None:
    text = exported_text(parse("http", http1_exchange(body=f"card={SECRET}")))
    assert SECRET not in text


def test_headers_are_not_recorded_by_default() -> None:
    record = one(parse("http", http1_exchange(request_headers="X-Custom: visible\r\n")))
    assert not any(key.startswith(("http.request.header.", "http.response.header.")) for key in record.attributes)


@pytest.mark.parametrize("header", [
    "Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "X-Auth-Token", "X-Amz-Security-Token",
    "X-CSRF-Token", "X-Goog-Api-Key", "X-Vault-Token", "X-Session-Id",
])
def test_credential_request_headers_are_redacted(header: str) -> None:
    record = one(parse("http", http1_exchange(f"{header}: Bearer {SECRET}\r\nX-Custom: visible\r\n"), HEADERS_ON))
    assert record.attributes[f"http.request.header.{header.lower()}"] == redact.REDACTED
    assert record.attributes["http.request.header.x-custom"] == "visible"  # header capture does work
    assert SECRET not in exported_text([record])


def test_set_cookie_is_redacted() -> None:
    record = one(parse("http", http1_exchange(response_headers=f"Set-Cookie: sid={SECRET}; HttpOnly\r\n"), HEADERS_ON))
    assert record.attributes["http.response.header.set-cookie"] == redact.REDACTED


def test_a_profile_asking_for_a_credential_header_still_gets_it_redacted() -> None:
    record = one(parse("http", http1_exchange(f"Authorization: Basic {SECRET}\r\n"), HEADERS_ON))
    # The profile lists the header and takes it off its own redaction list: the parser redacted it already.
    view = profile_view.View(headers=frozenset({"authorization"}), redact_headers=frozenset())
    span = model.SpanRecord(trace_id=1, span_id=2, parent_span_id=None, name=record.name, kind=model.SpanKind.SERVER,
                            start_ns=record.start_ns, end_ns=record.end_ns, attributes=record.attributes,
                            resource={}, protocol=record.protocol)
    exported = profile_view.apply(view, span)
    assert exported is not None and exported.attributes["http.request.header.authorization"] == redact.REDACTED


CREDENTIAL_KEYS = ["password", "token", "api_key", "apikey", "secret", "access_token", "refresh_token",
                   "client_secret", "accessToken", "X-Amz-Signature", "X-Amz-Credential", "sig", "passwd",
                   "private_key", "session", "auth", "code", "jwt", "pass%77ord"]


@pytest.mark.parametrize("key", CREDENTIAL_KEYS)
def test_credential_query_parameters_are_redacted(key: str) -> None:
    record = one(parse("http", http1_exchange(target=f"/search?q=shoes&{key}={SECRET}&page=2")))
    assert record.attributes["url.query"] == f"q=shoes&{key}={redact.REDACTED}&page=2"


# -- HTTP/2 and gRPC ------------------------------------------------------------------------------------

def h2_exchange(request: list[tuple[str, str]], response: list[tuple[str, str]]) -> list[tuple[bool, bytes]]:
    frame, block = test_http2.frame, test_http2.block
    return [
        (True, http2.PREFACE + frame(http2.SETTINGS, 0, 0, b"") + frame(http2.HEADERS, 0x5, 1, block(*request))),
        (False, frame(http2.HEADERS, 0x5, 1, block(*response))),
    ]


H2_REQUEST = [(":method", "GET"), (":scheme", "http"), (":path", f"/a?page=2&token={SECRET}")]


def test_http2_headers_off_and_query_redacted_by_default() -> None:
    record = one(parse("http2", h2_exchange([*H2_REQUEST, ("authorization", SECRET)], [(":status", "200")])))
    assert record.attributes["url.path"] == "/a"
    assert record.attributes["url.query"] == f"page=2&token={redact.REDACTED}"
    assert SECRET not in exported_text([record])


@pytest.mark.parametrize("header", ["authorization", "proxy-authorization", "cookie", "x-api-key", "Authorization"])
def test_http2_credential_headers_are_redacted(header: str) -> None:
    runs = h2_exchange([*H2_REQUEST, (header, f"Bearer {SECRET}"), ("x-custom", "visible")],
                       [(":status", "200"), ("set-cookie", f"sid={SECRET}")])
    record = one(parse("http2", runs, HEADERS_ON))
    assert record.attributes[f"http.request.header.{header.lower()}"] == redact.REDACTED
    assert record.attributes["http.response.header.set-cookie"] == redact.REDACTED
    assert record.attributes["http.request.header.x-custom"] == "visible"
    assert SECRET not in exported_text([record])


def test_grpc_credential_metadata_is_redacted() -> None:
    request = [(":method", "POST"), (":scheme", "http"), (":path", "/shop.Cart/Get"),
               ("content-type", "application/grpc"), ("authorization", f"Bearer {SECRET}")]
    runs = h2_exchange(request, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")])
    record = one(parse("grpc", runs, HEADERS_ON))
    assert record.name == "shop.Cart/Get" and record.attributes["http.request.header.authorization"] == redact.REDACTED
    assert SECRET not in exported_text([record])


# -- SQL -------------------------------------------------------------------------------------------------

def pg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">i", len(body) + 4) + body


PG_DONE = pg(b"C", b"SELECT 1\0") + pg(b"Z", b"I")
LITERAL_SQL = f"SELECT id FROM users WHERE email = '{SECRET}' AND pin = 73914 AND token = E'{SECRET}'"


def test_postgresql_simple_query_literals_are_redacted() -> None:
    record = one(parse("postgresql", [(True, pg(b"Q", LITERAL_SQL.encode() + b"\0")), (False, PG_DONE)]))
    assert record.attributes["db.query.text"] == "SELECT id FROM users WHERE email = ? AND pin = ? AND token = ?"
    assert SECRET not in exported_text([record]) and "73914" not in exported_text([record])


def test_postgresql_bind_parameters_are_not_recorded_by_default() -> None:
    statement = b"SELECT id FROM users WHERE email = $1\0"
    bind = b"\0\0" + struct.pack(">hhi", 0, 1, len(SECRET)) + SECRET.encode() + struct.pack(">h", 0)
    request = (pg(b"P", b"\0" + statement + struct.pack(">h", 0)) + pg(b"B", bind)
               + pg(b"E", b"\0" + struct.pack(">i", 0)) + pg(b"S", b""))
    response = pg(b"1", b"") + pg(b"2", b"") + PG_DONE
    record = one(parse("postgresql", [(True, request), (False, response)]))
    assert record.attributes["db.query.text"] == "SELECT id FROM users WHERE email = $1"
    assert SECRET not in exported_text([record])


def mysql_packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


MYSQL_OK = mysql_packet(1, b"\0\0\0\2\0\0\0")


def test_mysql_query_literals_are_redacted() -> None:
    sql = f'UPDATE users SET note = "{SECRET}", pin = 73914 WHERE email = \'{SECRET}\''
    record = one(parse("mysql", [(True, mysql_packet(0, b"\x03" + sql.encode())), (False, MYSQL_OK)]))
    assert record.attributes["db.query.text"] == "UPDATE users SET note = ?, pin = ? WHERE email = ?"
    assert SECRET not in exported_text([record]) and "73914" not in exported_text([record])


def test_mysql_prepared_statement_parameters_are_not_recorded() -> None:
    prepare = mysql_packet(0, b"\x16SELECT id FROM users WHERE email = ?")
    # statement 7: no result columns, one parameter (its definition, then EOF)
    prepared = (mysql_packet(1, b"\0" + struct.pack("<IHHxH", 7, 0, 1, 0)) + mysql_packet(2, b"\3def" + b"\0" * 20)
                + mysql_packet(3, b"\xfe\0\0\2\0"))
    execute = mysql_packet(0, b"\x17" + struct.pack("<IBI", 7, 0, 1) + b"\0\1" + b"\xfe\0"
                           + bytes([len(SECRET)]) + SECRET.encode())
    records = parse("mysql", [(True, prepare), (False, prepared), (True, execute), (False, MYSQL_OK)])
    assert [r.attributes["db.query.text"] for r in records][-1] == "SELECT id FROM users WHERE email = ?"
    assert SECRET not in exported_text(records)


def test_mysql_error_messages_hide_quoted_values() -> None:
    sql = "INSERT INTO users (email) VALUES (?)"
    error = mysql_packet(1, b"\xff" + struct.pack("<H", 1062) + b"#23000"
                         + f"Duplicate entry '{SECRET}@example.com' for key 'users.email'".encode())
    runs = [(True, mysql_packet(0, b"\x03" + sql.encode())), (False, error)]
    record = one(parse("mysql", runs))
    assert record.error == "Duplicate entry '?' for key '?'" and record.attributes["error.type"] == "1062"
    assert SECRET not in exported_text([record])
    kept = one(parse("mysql", runs, base.CaptureSettings(statement_parameters=True)))
    assert kept.error is not None and SECRET in kept.error  # values on: the message as the server sent it


def test_postgresql_error_messages_hide_quoted_values() -> None:
    failure = pg(b"E", b"SERROR\0C22P02\0M" + f'invalid input syntax for type integer: "{SECRET}"'.encode() + b"\0\0")
    runs = [(True, pg(b"Q", b"SELECT 1\0")), (False, failure + pg(b"Z", b"I"))]
    record = one(parse("postgresql", runs))
    assert record.error == 'invalid input syntax for type integer: "?"'
    assert SECRET not in exported_text([record])
    kept = one(parse("postgresql", runs, base.CaptureSettings(statement_parameters=True)))
    assert kept.error is not None and SECRET in kept.error


# -- Redis -----------------------------------------------------------------------------------------------

def resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


@pytest.mark.parametrize(("command", "shown"), [
    (("AUTH", SECRET), "AUTH ?"),
    (("AUTH", "admin", SECRET), "AUTH ? ?"),
    (("HELLO", "3", "AUTH", "admin", SECRET), "HELLO ? ? ? ?"),
    (("SET", "session:1", SECRET), "SET ? ?"),
])
def test_redis_arguments_are_redacted(command: tuple[str, ...], shown: str) -> None:
    record = one(parse("redis", [(True, resp(*command)), (False, b"+OK\r\n")]))
    assert record.attributes["db.query.text"] == shown
    assert SECRET not in exported_text([record])


@pytest.mark.parametrize("command", [
    ("AUTH", SECRET), ("HELLO", "3", "AUTH", "admin", SECRET), ("ACL", "SETUSER", "admin", "on", f">{SECRET}"),
    ("CONFIG", "SET", "requirepass", SECRET), ("MIGRATE", "h", "6379", "", "0", "5000", "AUTH", SECRET, "KEYS", "k"),
])
def test_redis_credentials_stay_redacted_with_statement_parameters_on(command: tuple[str, ...]) -> None:
    settings = base.CaptureSettings(statement_parameters=True)
    record = one(parse("redis", [(True, resp(*command)), (False, b"+OK\r\n")], settings))
    assert SECRET not in exported_text([record])


@pytest.mark.parametrize("settings", [DEFAULTS, base.CaptureSettings(statement_parameters=True)])
def test_redis_error_replies_hide_echoed_arguments(settings: base.CaptureSettings) -> None:
    error = f"-ERR unknown command 'AUHT', with args beginning with: 'admin' '{SECRET}' \r\n".encode()
    record = one(parse("redis", [(True, resp("AUHT", "admin", SECRET)), (False, error)], settings))
    assert record.error is not None
    assert record.error.rstrip() == "ERR unknown command '?', with args beginning with: '?' '?'"


def test_redis_reply_values_are_not_recorded() -> None:
    reply = f"${len(SECRET)}\r\n{SECRET}\r\n".encode()
    settings = base.CaptureSettings(statement_parameters=True)
    record = one(parse("redis", [(True, resp("GET", "k")), (False, reply)], settings))
    assert SECRET not in exported_text([record])


# -- MongoDB ---------------------------------------------------------------------------------------------

def test_mongodb_documents_are_not_exported() -> None:
    document = {"_id": 1, "email": SECRET, "nested": {"card": SECRET}}
    insert = test_mongodb._op_msg(1, 0, {"insert": "users", "documents": [document], "$db": "shop"})
    find = test_mongodb._op_msg(2, 0, {"find": "users", "filter": {"email": SECRET}, "$db": "shop"})
    inserted = test_mongodb._op_msg(3, 0, {"n": 1, "ok": 1.0}, response_to=1)
    found = test_mongodb._op_msg(4, 0, {"cursor": {"firstBatch": [document], "id": 0, "ns": "shop.users"},
                                        "ok": 1.0}, response_to=2)
    records = parse("mongodb", [(True, insert), (False, inserted), (True, find), (False, found)])
    assert [r.name for r in records] == ["insert users", "find users"]
    assert SECRET not in exported_text(records)
