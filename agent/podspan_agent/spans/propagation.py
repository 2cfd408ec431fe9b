"""Parse incoming trace context: W3C traceparent/tracestate and B3 (single and multi header)."""

from __future__ import annotations

import dataclasses
import re

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_HEX16_OR_32 = re.compile(r"^(?:[0-9a-f]{16}|[0-9a-f]{32})$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteContext:
    trace_id: int
    span_id: int
    trace_state: str = ""
    sampled: bool | None = None  # the caller's sampling decision, when its headers carry one


def extract(headers: dict[str, str]) -> RemoteContext | None:
    """The caller's context from lower-cased request headers; W3C wins over B3."""
    if not headers:  # most requests carry none
        return None
    return _w3c(headers) or _b3_single(headers) or _b3_multi(headers)


def _valid(trace_id: int, span_id: int) -> bool:
    return trace_id != 0 and span_id != 0


def _w3c(headers: dict[str, str]) -> RemoteContext | None:
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not _valid(trace_id, span_id):
        return None
    sampled = bool(int(match.group(4), 16) & 1)
    return RemoteContext(trace_id, span_id, headers.get("tracestate", "").strip()[:512], sampled)


def _b3_ids(trace_hex: str, span_hex: str, sampled: bool | None) -> RemoteContext | None:
    trace_hex, span_hex = trace_hex.strip().lower(), span_hex.strip().lower()
    if not _HEX16_OR_32.match(trace_hex) or not _HEX16.match(span_hex):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    return RemoteContext(trace_id, span_id, sampled=sampled) if _valid(trace_id, span_id) else None


def _b3_sampled(value: str | None) -> bool | None:
    """B3's sampling state: 1/true or d (debug) keep, 0/false drop, anything else defers."""
    value = (value or "").strip().lower()
    return True if value in ("1", "true", "d") else False if value in ("0", "false") else None


def _b3_single(headers: dict[str, str]) -> RemoteContext | None:
    parts = headers.get("b3", "").split("-")
    if len(parts) < 2:
        return None
    return _b3_ids(parts[0], parts[1], _b3_sampled(parts[2] if len(parts) > 2 else None))


def _b3_multi(headers: dict[str, str]) -> RemoteContext | None:
    if "x-b3-traceid" not in headers or "x-b3-spanid" not in headers:
        return None
    sampled = True if headers.get("x-b3-flags", "").strip() == "1" else _b3_sampled(headers.get("x-b3-sampled"))
    return _b3_ids(headers["x-b3-traceid"], headers["x-b3-spanid"], sampled)
