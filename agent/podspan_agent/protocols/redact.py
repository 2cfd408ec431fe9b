"""Redaction of credentials in query strings and headers, shared by protocol parsers.

Over-redacting is preferred to leaking: design.md keeps private data off or redacted by default.
"""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "REDACTED"

# Query keys whose values are credentials, compared after lower-casing, percent-decoding and '-' -> '_'.
CREDENTIAL_KEYS = frozenset({
    "token", "access_token", "api_key", "apikey", "key", "password", "passwd", "pwd", "secret",
    "signature", "sig", "auth", "authorization", "session", "sessionid", "code", "awsaccesskeyid",
    "credential", "passphrase", "jwt", "otp",
})
# Any key ending in one of these is a credential too: client_secret, accessToken, x_amz_signature,
# id_token, private_key (the short ones only after '_': "monkey" or "config" are not credentials).
_CREDENTIAL_ENDINGS = (
    "token", "secret", "password", "passwd", "passphrase", "signature", "credential", "credentials", "apikey",
    "_key", "_sig", "_session",
)

# Fragments every credential key above contains (also percent-encoded keys, after their first byte).
_SUSPECT_RE = re.compile(r"token|key|pass|pwd|secret|sig|auth|session|code|credential|jwt|otp", re.IGNORECASE)

# Header names (lower-case) containing one of these fragments carry credentials: authorization,
# proxy-authorization, cookie, set-cookie, x-api-key, x-auth-token, x-amz-security-token, x-csrf-token,
# x-goog-api-key, x-vault-token, x-session-id (also www-authenticate: over-redacting is fine).
_SENSITIVE_HEADER_RE = re.compile(r"auth|token|secret|passw|cookie|session|signature|credential|api-?key|csrf|xsrf")


def is_credential_key(key: str) -> bool:
    """True when a query/form parameter named `key` carries a credential."""
    key = _normalized(key)
    return key in CREDENTIAL_KEYS or key.endswith(_CREDENTIAL_ENDINGS)


def _normalized(key: str) -> str:
    if "%" in key or "+" in key:
        key = urllib.parse.unquote_plus(key)
    return key.strip().lower().replace("-", "_")


def query(raw: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """Return `raw` (a query string without '?') with credential values replaced by REDACTED;
    `extra_keys` (normalized: lower-case, '-' -> '_') are credentials too.

    Parameter order, separators and non-credential values are kept byte for byte.
    """
    if not extra_keys and not _SUSPECT_RE.search(raw):  # most queries hold no credential-like key at all
        return raw
    parts = raw.split("&")
    changed = False
    for index, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if sep and value and (is_credential_key(key) or _normalized(key) in extra_keys):
            parts[index] = f"{key}={REDACTED}"
            changed = True
    return "&".join(parts) if changed else raw


def header(name: str, value: str) -> str:
    """Return the value to record for header `name` (lower-case)."""
    return REDACTED if _SENSITIVE_HEADER_RE.search(name) else value


# A JSON member whose key is credential-like ("password": "...", "api_key": 123), its value up to the
# closing quote or the next separator; the capture may cut a body anywhere, so no JSON parser is used.
_JSON_MEMBER_RE = re.compile(r'"((?:[^"\\]|\\.){0,128})"(\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,{}\[\]\s]+)')


def body(data: bytes) -> str:
    """The text to record for the first bytes of a message body: UTF-8 (undecodable bytes replaced),
    with the values of credential-like JSON members and form fields replaced by REDACTED."""
    text = data.decode("utf-8", "replace")
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        return _JSON_MEMBER_RE.sub(_redact_member, text)
    if "=" in text and not any(c.isspace() for c in stripped):  # application/x-www-form-urlencoded
        return query(text)
    return text


def _redact_member(match: re.Match[str]) -> str:
    if not is_credential_key(match.group(1)):
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}"{REDACTED}"'


# A quoted value in a server's error message: a quote that does not follow a letter or digit (so "doesn't"
# is no quote) up to the same quote or the end of the captured text.
_QUOTED_VALUE_RE = re.compile(r"""(?<![\w])(['"])(?:(?!\1).)*(?:\1|\Z)""", re.DOTALL)


def error_message(text: str) -> str:
    """A database's error message with its quoted values replaced by `?`: servers quote the offending
    value (MySQL "Duplicate entry 'alice@example.com' for key 'email'", PostgreSQL 'invalid input syntax
    for type integer: "abc"', Redis "unknown command 'x', with args beginning with: 'secret'"); quoted
    identifiers go too (over-redacting is preferred)."""
    return _QUOTED_VALUE_RE.sub(lambda match: f"{match.group(1)}?{match.group(1)}", text)
