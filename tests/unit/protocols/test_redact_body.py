"""Body redaction (capture.body): credential-like JSON members and form fields lose their values,
whatever the capture cut; everything else is kept as it came."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podspan_agent.protocols import redact


@pytest.mark.parametrize(("raw", "recorded"), [
    (b'{"user":"bob","password":"hunter2"}', '{"user":"bob","password":"REDACTED"}'),
    (b'{"a": {"client_secret": "x\\"y", "n": 1}, "api-key": 42}',
     '{"a": {"client_secret": "REDACTED", "n": 1}, "api-key": "REDACTED"}'),
    (b'[{"access_token": "abc.def"}]', '[{"access_token": "REDACTED"}]'),
    (b'{"token":"abc', '{"token":"REDACTED"'),  # cut by the capture inside the value
    (b'user=bob&password=x&next=%2F', "user=bob&password=REDACTED&next=%2F"),
    (b"plain text, not a form", "plain text, not a form"),
    (b'{"name": "caf\xc3\xa9", "bad": "\xff"}', '{"name": "café", "bad": "\ufffd"}'),
])
def test_credential_values_are_redacted(raw: bytes, recorded: str) -> None:
    assert redact.body(raw) == recorded


@given(st.text(min_size=1, max_size=40).filter(lambda s: '"' not in s and "\\" not in s))
def test_a_password_member_never_keeps_its_value(secret: str) -> None:
    recorded = redact.body(b'{"id": 7, "password": "' + secret.encode() + b'", "x": 1}')
    assert recorded == '{"id": 7, "password": "REDACTED", "x": 1}'


@given(st.binary(max_size=300))
def test_any_bytes_give_text(raw: bytes) -> None:
    assert isinstance(redact.body(raw), str)
