"""The API emulator's fault injection, seen by a plain HTTP client: injected statuses, delays, watches cut
or expired, rules that match by method and path and run out after their count."""

from __future__ import annotations

import collections.abc
import json
import time

import pytest
import requests

from podspan_demo import k8s_api_emulator as emu

NTC = "podspan.dev/v1alpha1/nodetraceconfigs"
NTC_PATH = "/apis/podspan.dev/v1alpha1/nodetraceconfigs"


@pytest.fixture
def api() -> collections.abc.Iterator[emu.EmulatorThread]:
    with emu.EmulatorThread() as thread:
        yield thread


def _server(api: emu.EmulatorThread) -> emu.APIServer:
    assert api.emulator is not None
    return api.emulator


def _create(kc: emu.KubeClient, name: str) -> dict:
    return kc.create(NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                           "metadata": {"name": name}, "spec": {}})


def _watch_lines(api: emu.EmulatorThread, params: dict[str, str]) -> tuple[list[dict], bool]:
    """The events of one watch, and whether the stream ended cleanly (False: the connection broke)."""
    events: list[dict] = []
    with requests.get(api.url + NTC_PATH, params={"watch": "true", **params}, stream=True, timeout=10) as r:
        try:
            for line in r.iter_lines():
                if line:
                    events.append(json.loads(line))
        except requests.exceptions.ChunkedEncodingError:
            return events, False
    return events, True


def test_respond_with_retry_after_then_runs_out(api: emu.EmulatorThread) -> None:
    kc = emu.KubeClient(api.url)
    _create(kc, "n1")
    _server(api).inject(emu.Fault("PATCH", r"/nodetraceconfigs/n1/status$", emu.Respond(429, retry_after=2), 2))
    url = api.url + NTC_PATH + "/n1/status"
    headers = {"Content-Type": kc.MERGE}
    answers = [requests.patch(url, data='{"status": {"a": 1}}', headers=headers, timeout=10) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "2"
    body = answers[0].json()
    assert body["kind"] == "Status" and body["code"] == 429 and body["details"]["retryAfterSeconds"] == 2
    # Other methods and paths were never matched: a GET of the same object is served.
    assert requests.get(api.url + NTC_PATH + "/n1", timeout=10).status_code == 200
    assert (kc.get(NTC, "n1") or {})["status"] == {"a": 1}
    assert _server(api).request_counts["python-requests", "patch", "nodetraceconfigs"] == 3


def test_respond_until_cleared_and_any_method(api: emu.EmulatorThread) -> None:
    _server(api).inject(emu.Fault("*", r"/nodetraceconfigs", emu.Respond(500), count=None))
    for _ in range(3):
        assert requests.get(api.url + NTC_PATH, timeout=10).status_code == 500
    _server(api).clear_faults()
    assert requests.get(api.url + NTC_PATH, timeout=10).status_code == 200


def test_delay_then_served(api: emu.EmulatorThread) -> None:
    _server(api).inject(emu.Fault("GET", r"/nodetraceconfigs$", emu.Delay(0.5)))
    started = time.monotonic()
    slow = requests.get(api.url + NTC_PATH, timeout=10)
    held = time.monotonic() - started
    assert slow.status_code == 200 and slow.json()["kind"] == "NodeTraceConfigList"
    assert held >= 0.5  # the delay is the fault under test, not a performance figure


def test_cut_watch_drops_the_connection_after_n_events(api: emu.EmulatorThread) -> None:
    kc = emu.KubeClient(api.url)
    for name in ("n1", "n2", "n3"):
        _create(kc, name)
    # A watch-only rule: a list of the same path does not consume it.
    _server(api).inject(emu.Fault("GET", r"/nodetraceconfigs\?", emu.CutWatch(after=2)))
    assert requests.get(api.url + NTC_PATH, timeout=10).status_code == 200
    events, clean = _watch_lines(api, {"timeoutSeconds": "5"})
    assert not clean
    assert [e["object"]["metadata"]["name"] for e in events] == ["n1", "n2"]
    # The rule is spent: the next watch streams every object and ends at its timeout.
    events, clean = _watch_lines(api, {"timeoutSeconds": "1"})
    assert clean and len(events) == 3


def test_expire_watch_sends_410_in_the_stream(api: emu.EmulatorThread) -> None:
    kc = emu.KubeClient(api.url)
    version = _create(kc, "n1")["metadata"]["resourceVersion"]
    _server(api).inject(emu.Fault("GET", r"watch=true.*resourceVersion=|resourceVersion=.*watch=true",
                                  emu.ExpireWatch()))
    events, clean = _watch_lines(api, {"resourceVersion": version, "timeoutSeconds": "1"})
    assert clean
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]
    events, _ = _watch_lines(api, {"resourceVersion": version, "timeoutSeconds": "1"})
    assert events == []  # nothing changed since `version`; the rule was used up
    assert _server(api).request_counts["python-requests", "watch", "nodetraceconfigs"] == 2


def test_delay_stacks_with_the_next_matching_rule(api: emu.EmulatorThread) -> None:
    _server(api).inject(emu.Fault("GET", r"/nodetraceconfigs$", emu.Delay(0.3)),
                        emu.Fault("GET", r"/nodetraceconfigs$", emu.Respond(503, retry_after=1)))
    started = time.monotonic()
    answer = requests.get(api.url + NTC_PATH, timeout=10)
    assert answer.status_code == 503 and time.monotonic() - started >= 0.3
    assert requests.get(api.url + NTC_PATH, timeout=10).status_code == 200


def test_drop_watches_breaks_the_streams_being_served(api: emu.EmulatorThread) -> None:
    kc = emu.KubeClient(api.url)
    _create(kc, "n1")
    with requests.get(api.url + NTC_PATH, params={"watch": "true", "timeoutSeconds": "30"}, stream=True,
                      timeout=10) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["object"]["metadata"]["name"] == "n1"
        assert _server(api).drop_watches(r"/pods\?") == 0
        assert _server(api).drop_watches(r"/nodetraceconfigs\?.*watch=true") == 1
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            list(lines)
