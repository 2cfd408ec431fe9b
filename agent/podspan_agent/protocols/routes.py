"""Low-cardinality `http.route` templates from raw URL paths (ids -> `{id}`), shared by HTTP parsers.

Rules, in order:
1. The query (`?...`) and fragment (`#...`) are stripped; an empty path becomes `/`.
2. The first user pattern (e.g. `/users/{id}/orders/{order}`) that matches the whole path wins and
   is returned as written. `{name}` matches exactly one non-empty segment; a trailing slash on the
   path is ignored.
3. Otherwise each segment is kept unless it looks like an identifier, which becomes `{id}`:
   integers, UUIDs, hex strings of >= 8 chars containing a digit, dates (`2024-01-31`, optionally with
   a time), e-mail addresses, and opaque tokens (ULIDs, base64-ish ids) of >= 16 chars mixing letters
   and digits. A short alphabetic file extension is preserved (`/img/123.png` -> `/img/{id}.png`).
4. At most MAX_SEGMENTS segments are kept; a longer path ends in `/...` (MORE), so deep, generated
   paths cannot explode cardinality. Parsers also use MORE for paths cut off by the capture size.
"""

from __future__ import annotations

import functools
import re

ID = "{id}"
MORE = "..."
MAX_SEGMENTS = 8

_ID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|(?=[a-fA-F]*[0-9])[0-9a-fA-F]{8,}"  # long hex with at least one digit
    r"|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"  # date
    r"|[^@/\s]+(?:@|%40)[^@/\s]+\.[^@/\s]+"  # e-mail
    r"|(?=[A-Za-z_-]*[0-9])(?=[0-9_-]*[A-Za-z])[A-Za-z0-9_-]{16,}={0,2}"  # ULID / base64-ish token
)
_EXTENSION_RE = re.compile(r"(.+)(\.[A-Za-z]{1,5})")
_PLACEHOLDER_RE = re.compile(r"\\\{[^/{}]+\\\}")


@functools.lru_cache(maxsize=4096)
def template(path: str, patterns: tuple[str, ...] = ()) -> str:
    """Return the low-cardinality route for `path` (see the module docstring for the rules).

    Cached: a service answers the same few paths over and over (pure function, bounded cache).
    """
    for cut in ("?", "#"):
        if cut in path:
            path = path.partition(cut)[0]
    if not path:
        return "/"
    if patterns:
        stripped = path.rstrip("/") or "/"
        for pattern, regex in _compile(patterns):
            if regex.fullmatch(stripped):
                return pattern
    segments = path.split("/")
    limit = MAX_SEGMENTS + 1  # segments[0] is the empty string before the leading '/'
    if len(segments) > limit:
        segments = [*segments[:limit], MORE]
    return "/".join([segment if segment.isalpha() else _segment(segment) for segment in segments])


def _segment(segment: str) -> str:
    if segment.isdigit():
        return ID
    # Fast path: every other identifier shape is at least 8 characters long, or has '.'/'@'.
    if len(segment) < 8 and "." not in segment and "@" not in segment:
        return segment
    if _ID_RE.fullmatch(segment):
        return ID
    match = _EXTENSION_RE.fullmatch(segment)
    if match and (match[1].isdigit() or _ID_RE.fullmatch(match[1])):
        return ID + match[2]
    return segment


@functools.lru_cache(maxsize=64)
def _compile(patterns: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    compiled = []
    for pattern in patterns:
        body = pattern.rstrip("/") or "/"
        compiled.append((pattern, re.compile(_PLACEHOLDER_RE.sub("[^/]+", re.escape(body)))))
    return tuple(compiled)
