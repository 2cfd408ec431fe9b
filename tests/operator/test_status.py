"""Pure status aggregation: sums over nodes, conditions, reasons and transitions."""

from __future__ import annotations

import dataclasses
import datetime

from podspan_api import models
from podspan_operator import render, status
from tests.operator.test_render import tp

NOW = datetime.datetime(2025, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
KEY = "TraceProfile/shop/p"


def config(name: str, pods: int, *, reported: bool = True, age: float = 1.0, exported: int = 0,
           lost: int = 0, drops: int = 0, sampled_out: int = 0, attached: bool = True, probe_errors: bool = False,
           export_error: str | None = None, tls_unprobed: tuple[str, ...] = (), skipped: int = 0,
           capture_fraction: float | None = None, now: datetime.datetime = NOW) -> render.NodeConfig:
    spec = models.NodeTraceConfigSpec(targets=[
        models.PodTarget(uid=f"{name}-{i}", namespace="shop", name=f"{name}-{i}", qos_class="BestEffort",
                         service_name="web", containers=[models.ContainerTarget(name="app", profiles=[KEY])])
        for i in range(pods)])
    st = models.NodeTraceConfigStatus(
        heartbeat_time=now - datetime.timedelta(seconds=age),
        targets=[models.TargetStatus(pod_uid=f"{name}-{i}", container="app",
                                     state="attached" if attached else "waiting", tls_unprobed=list(tls_unprobed))
                 for i in range(pods)],
        profiles=[models.ProfileCounters(profile=KEY, spans_exported=exported, events_lost=lost, parser_drops=drops,
                                         spans_sampled_out=sampled_out, exchanges_skipped=skipped,
                                         capture_fraction=capture_fraction,
                                         agent_cpu_percent=None if capture_fraction is None else 7.5,
                                         spans_dropped=40 if export_error else 0, export_error=export_error)]
        if reported
        else [],
        probe_errors=[models.ProbeError(probe="x", message="EPERM")] if probe_errors else [])
    return render.NodeConfig(name=name, generation=1, spec=spec, status=st)


def conditions(s: models.ProfileStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in s.conditions}


def test_counts_are_summed_over_nodes() -> None:
    s, transitions = status.aggregate(tp("p"), 5, [config("a", 2, exported=10, drops=2, sampled_out=90),
                                                   config("b", 3, exported=5, drops=1, sampled_out=45)], NOW, 60)
    assert (s.matched_pods, s.traced_pods, s.spans_exported, s.parser_drops) == (5, 5, 15, 3)
    assert s.spans_sampled_out == 135
    assert (s.nodes.ready, s.nodes.total) == (2, 2)
    assert conditions(s) == {"Ready": ("True", "Tracing"), "Degraded": ("False", "AsExpected")}
    assert [t.reason for t in transitions] == ["Tracing", "AsExpected"]


def test_reasons() -> None:
    def reasons(matched: int, *configs: render.NodeConfig) -> dict[str, tuple[str, str]]:
        return conditions(status.aggregate(tp("p"), matched, configs, NOW, 60)[0])

    assert reasons(0) == {"Ready": ("False", "NoMatchingPods"), "Degraded": ("False", "AsExpected")}
    assert reasons(1) == {"Ready": ("False", "Applying"), "Degraded": ("False", "AsExpected")}
    assert reasons(2, config("a", 1), config("b", 1, reported=False))["Ready"] == ("False", "Applying")
    assert reasons(2, config("a", 1), config("b", 1, age=600)) == {
        "Ready": ("True", "Tracing"), "Degraded": ("True", "NodesNotReporting")}
    assert reasons(1, config("a", 1, age=600))["Ready"] == ("False", "NodesNotReporting")
    assert reasons(1, config("a", 1, probe_errors=True))["Degraded"] == ("True", "ProbeErrors")
    assert reasons(1, config("a", 1, lost=3))["Degraded"] == ("True", "EventsLost")
    assert reasons(1, config("a", 1, capture_fraction=1.0)) == {"Ready": ("True", "Tracing"),
                                                                "Degraded": ("False", "AsExpected")}
    assert reasons(2, config("a", 1, capture_fraction=1.0), config("b", 1, capture_fraction=0.2)) == {
        "Ready": ("True", "Tracing"), "Degraded": ("True", "OverBudget")}
    assert reasons(1, config("a", 1, lost=3, capture_fraction=0.2))["Degraded"] == ("True", "EventsLost")
    assert reasons(1, config("a", 1, tls_unprobed=("pid 42 (node)",))) == {
        "Ready": ("True", "Tracing"), "Degraded": ("True", "TLSNotReadable")}
    failing = reasons(2, config("a", 1, lost=3), config("b", 1, export_error="refused"))
    assert failing == {"Ready": ("True", "Tracing"), "Degraded": ("True", "ExportFailing")}
    invalid = tp("p", protocols=["smtp"])
    assert conditions(status.aggregate(invalid, 3, [], NOW, 60)[0]) == {
        "Ready": ("False", "InvalidSpec"), "Degraded": ("True", "InvalidSpec")}


def test_budget_shows_the_lowest_fraction_and_skipped_exchanges_summed() -> None:
    s, _ = status.aggregate(tp("p"), 3, [config("a", 1, skipped=40, capture_fraction=0.5),
                                         config("b", 1, skipped=2, capture_fraction=0.25), config("c", 1)], NOW, 60)
    assert (s.capture_fraction, s.exchanges_skipped) == (0.25, 42)
    degraded = next(c for c in s.conditions if c.type == "Degraded")
    assert degraded.reason == "OverBudget" and "2 nodes" in degraded.message
    assert "b captures 25%, agent at 7.5% CPU" in degraded.message
    without, _ = status.aggregate(tp("p"), 1, [config("a", 1)], NOW, 60)
    assert without.capture_fraction is None and "captureFraction" not in without.to_k8s()


def test_transition_time_kept_until_status_or_reason_changes() -> None:
    profile = tp("p")
    first, _ = status.aggregate(profile, 1, [config("a", 1, exported=1)], NOW, 60)
    later = NOW + datetime.timedelta(minutes=5)
    second, transitions = status.aggregate(dataclasses.replace(profile, status=first), 1,
                                           [config("a", 1, exported=9, now=later)], later, 60)
    assert transitions == []
    assert second.conditions == first.conditions and second.spans_exported == 9
    third, transitions = status.aggregate(dataclasses.replace(profile, status=second), 1,
                                          [config("a", 1, lost=1, now=later)], later, 60)
    assert [(t.reason, t.warning) for t in transitions] == [("EventsLost", True)]
    degraded = {c.type: c for c in third.conditions}["Degraded"]
    assert degraded.last_transition_time == later
    assert {c.type: c for c in third.conditions}["Ready"].last_transition_time == NOW


def test_waiting_containers_are_not_traced() -> None:
    s, _ = status.aggregate(tp("p"), 2, [config("a", 2, attached=False)], NOW, 60)
    assert s.traced_pods == 0 and s.nodes.ready == 1


def test_export_failure_message_names_node_error_and_drops() -> None:
    s, _ = status.aggregate(tp("p"), 1, [config("a", 1, export_error="gRPC UNAVAILABLE: refused")], NOW, 60)
    [degraded] = [c for c in s.conditions if c.type == "Degraded"]
    assert degraded.message == "OTLP export failing on a (40 spans dropped so far); a: gRPC UNAVAILABLE: refused"
    _, transitions = status.aggregate(dataclasses.replace(tp("p"), status=s), 1, [config("a", 1)], NOW, 60)
    assert [(t.reason, t.warning) for t in transitions] == [("AsExpected", False)]


def test_a_node_whose_probes_never_loaded_is_not_ready_and_says_why() -> None:
    failed = config("a", 1, reported=False, probe_errors=True)
    s, _ = status.aggregate(tp("p"), 1, [failed], NOW, 60)
    assert conditions(s) == {"Ready": ("False", "ProbeErrors"), "Degraded": ("True", "ProbeErrors")}
    assert (s.nodes.ready, s.nodes.total, s.traced_pods) == (0, 1, 0)
    messages = {c.type: c.message for c in s.conditions}
    assert messages["Ready"] == "no node could load its probes: a: x: EPERM"
    # Another node traces: the profile is Ready, and still Degraded by the failing one.
    s, _ = status.aggregate(tp("p"), 2, [failed, config("b", 1)], NOW, 60)
    assert conditions(s) == {"Ready": ("True", "Tracing"), "Degraded": ("True", "ProbeErrors")}
    assert (s.nodes.ready, s.nodes.total) == (1, 2)


def test_a_new_node_config_is_applying_until_its_agent_had_time_to_report() -> None:
    fresh = dataclasses.replace(config("a", 1), status=None, created=NOW - datetime.timedelta(seconds=5))
    s, transitions = status.aggregate(tp("p"), 1, [fresh], NOW, 60)
    assert conditions(s) == {"Ready": ("False", "Applying"), "Degraded": ("False", "AsExpected")}
    assert not any(t.warning for t in transitions)  # no Warning Event for every node a profile reaches
    old = dataclasses.replace(fresh, created=NOW - datetime.timedelta(seconds=600))
    s, _ = status.aggregate(tp("p"), 1, [old], NOW, 60)
    assert conditions(s) == {"Ready": ("False", "NodesNotReporting"), "Degraded": ("True", "NodesNotReporting")}


def test_unprobed_tls_names_a_container_and_its_processes() -> None:
    s, _ = status.aggregate(tp("p"), 2, [config("a", 2, tls_unprobed=("pid 42 (node)", "pid 43 (app)"))], NOW, 60)
    degraded = next(c for c in s.conditions if c.type == "Degraded")
    assert degraded.message.startswith("2 containers open TLS connections through a TLS stack that is not probed")
    assert degraded.message.endswith("a/a-0/app: pid 42 (node), pid 43 (app)")
