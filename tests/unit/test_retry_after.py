"""podspan_api.retry: the Retry-After of a refused request, read from a real kubernetes ApiException."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client import exceptions, rest

from podspan_api import retry


def _refused(status: int, headers: dict[str, str]) -> exceptions.ApiException:
    response = urllib3.HTTPResponse(body=b"{}", headers=headers, status=status, reason="refused")
    return exceptions.ApiException(http_resp=rest.RESTResponse(response))


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "1.5"}, 1.5),  # header names are case-insensitive
    ({}, 0.0),
    ({"Retry-After": "Wed, 02 Dec 2026 15:00:00 GMT"}, 0.0),  # an HTTP date: the caller's own delay applies
    ({"Retry-After": "-4"}, 0.0),
])
def test_retry_after_of_a_refused_request(headers: dict[str, str], seconds: float) -> None:
    assert retry.retry_after(_refused(429, headers)) == seconds


def test_other_errors_ask_for_no_wait() -> None:
    assert retry.retry_after(ConnectionResetError("reset by peer")) == 0.0
