"""Two operator replicas with kopf peering: one active writer, the same end state as one operator, no write
storm; when the active one stops, the other takes over (issue 12)."""

from __future__ import annotations

import asyncio
import contextlib

from podspan_operator import kube
from tests.operator.conftest import TP, Operator, profile, run_pod, targets, wait_for

PEERING = "podspan-test-peering"


def test_two_replicas_have_one_writer_and_the_other_takes_over(kc):
    asyncio.run(kube.ensure_peering(PEERING))
    kc.ensure_namespace("shop")
    kc.create_node("n1")
    run_pod(kc, "web-1", "shop", {"app": "web"}, "n1")
    active, standby = Operator(PEERING, priority=100), Operator(PEERING, priority=10)
    try:
        active.start()
        standby.start(first_pass=False)
        kc.create(TP, profile("web", "shop", {"app": "web"}))
        key = "TraceProfile/shop/web"
        wait_for(lambda: targets(kc, "n1") == {"shop/web-1": [key]}, "n1 targets")
        run_pod(kc, "web-2", "shop", {"app": "web"}, "n1")
        wait_for(lambda: targets(kc, "n1") == {"shop/web-1": [key], "shop/web-2": [key]}, "both pods")
        # The standby never wrote; the active one wrote the node config once per change, not in a loop.
        # Paused: kopf delivers it no events, so its reconciler never made a pass (nor a write).
        assert standby.reconciler.passes == 0 and standby.writes == 0
        node_config_writes = active.reconciler.api.metrics.registry.get_sample_value(
            "podspan_operator_api_writes_total", {"kind": "node_config"})
        assert node_config_writes is not None and 1 <= node_config_writes <= 3

        active.stop()  # the standby takes over (kopf peering: the highest priority alive is active)
        run_pod(kc, "web-3", "shop", {"app": "web"}, "n1")
        wait_for(lambda: len(targets(kc, "n1")) == 3, "the standby applies the next change", timeout=60)
        assert standby.writes >= 1
    finally:
        for operator in (standby, active):
            with contextlib.suppress(AssertionError):
                operator.stop()
