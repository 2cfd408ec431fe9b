"""How the operator and the agents wait after the Kubernetes API refused a request: at least what the server
asked for (Retry-After on a 429 or 503), shared so both clients read it the same way."""

from __future__ import annotations


def retry_after(exc: BaseException) -> float:
    """Seconds of the Retry-After header of a refused request (the kubernetes clients' ApiException keeps the
    response headers), 0 when there is none or it is an HTTP date (rare from API servers)."""
    headers = getattr(exc, "headers", None)
    try:
        return max(0.0, float((headers or {}).get("Retry-After") or 0))
    except (TypeError, ValueError):
        return 0.0
