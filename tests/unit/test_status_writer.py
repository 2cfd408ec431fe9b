"""The node agent's status writer (kube.StatusWriter) against the API emulator over HTTP: the tracer hands a status
over and goes on while the write is held by a slow server; only the newest waiting status is written; a refused
one is retried after the backoff."""

from __future__ import annotations

import pathlib
import time

import pytest

from podspan_agent import kube
from podspan_api import models
from podspan_demo import k8s_api_emulator as emu

NTC = "podspan.dev/v1alpha1/nodetraceconfigs"
NODE = "n1"
STATUS_PATH = rf"/nodetraceconfigs/{NODE}/status$"


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _observed(kc: emu.KubeClient) -> int | None:
    return ((kc.get(NTC, NODE) or {}).get("status") or {}).get("observedGeneration")


def test_hand_over_never_waits_and_the_newest_status_wins(tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with emu.EmulatorThread(kubeconfig=tmp_path / "kubeconfig") as api:
        assert api.emulator is not None
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
        kc = emu.KubeClient(api.url)
        kc.create(NTC, {"apiVersion": "podspan.dev/v1alpha1", "kind": "NodeTraceConfig",
                        "metadata": {"name": NODE}, "spec": {}})
        # The first write is held 2 s and then refused; the next ones are answered normally.
        held = emu.Fault("PATCH", STATUS_PATH, emu.Delay(2.0), count=1)
        refused = emu.Fault("PATCH", STATUS_PATH, emu.Respond(500), count=1)
        api.emulator.inject(held, refused)
        writer = kube.StatusWriter(kube.custom_objects(), NODE)
        writer.start()
        try:
            writer.submit(models.NodeTraceConfigStatus(observed_generation=1))
            _wait(lambda: held.hits == 1, "the first write at the server")
            for generation in (2, 3):  # handed over while the server holds the first write
                writer.submit(models.NodeTraceConfigStatus(observed_generation=generation))
            assert (writer.refused, writer.written) == (0, 0)  # the first write still unanswered: nothing waited
            _wait(lambda: _observed(kc) == 3, "the newest status written after the refusal")
            assert (writer.refused, writer.written) == (1, 1)  # generation 2 was replaced before it was sent
        finally:
            writer.stop()
            writer.join(timeout=5)
        assert not writer.is_alive()
