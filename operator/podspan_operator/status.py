"""Pure status aggregation: NodeTraceConfig statuses -> a profile's status, conditions and their transitions.

Counts are sums over nodes (never last-writer-wins); a silent node degrades a profile but never blocks Ready.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from podspan_api import models
from podspan_operator import render

READY = "Ready"
DEGRADED = "Degraded"

# Reasons (documented in docs/operator.md).
TRACING = "Tracing"
AS_EXPECTED = "AsExpected"
APPLYING = "Applying"
NO_MATCHING_PODS = "NoMatchingPods"
NODES_NOT_REPORTING = "NodesNotReporting"
PROBE_ERRORS = "ProbeErrors"
EVENTS_LOST = "EventsLost"
EXPORT_FAILING = "ExportFailing"
TLS_NOT_READABLE = "TLSNotReadable"
OVER_BUDGET = "OverBudget"
INVALID_SPEC = "InvalidSpec"

_MESSAGE_CHARS = 300  # of an agent's error quoted in a condition message
_TRUE, _FALSE = models.ConditionStatus.TRUE, models.ConditionStatus.FALSE


@dataclasses.dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: posted as an Event."""

    warning: bool
    reason: str
    message: str


@dataclasses.dataclass
class _Tally:
    ready: list[str] = dataclasses.field(default_factory=list)
    applying: list[str] = dataclasses.field(default_factory=list)
    silent: list[str] = dataclasses.field(default_factory=list)
    probe_errors: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> its first probe error
    failed: list[str] = dataclasses.field(default_factory=list)  # probes never loaded: nothing applied
    export_errors: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> its exporter's error
    # "<node>/<pod uid>/<container>" -> its processes whose TLS stack is not probed
    tls_unprobed: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    traced: int = 0
    exported: int = 0
    dropped: int = 0
    lost: int = 0
    parser_drops: int = 0
    sampled_out: int = 0
    skipped: int = 0
    # node -> (captured fraction, the agent's cost in percent of a CPU) of budgeted profiles on reporting nodes
    budgets: dict[str, tuple[float, float | None]] = dataclasses.field(default_factory=dict)

    @property
    def nodes(self) -> int:
        """Nodes with pods of the profile, whatever their state."""
        return len(self.ready) + len(self.applying) + len(self.silent) + len(self.failed)


def _names(nodes: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(nodes)[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def _tally(key: str, configs: Iterable[render.NodeConfig], now: datetime.datetime,
           heartbeat_timeout: float) -> _Tally:
    tally = _Tally()
    for config in configs:
        if config.spec is None:
            continue
        # (pod uid, container) pairs of this profile on this node
        wanted = {(t.uid, c.name) for t in config.spec.targets for c in t.containers if key in c.profiles}
        if not wanted:
            continue
        status = config.status
        counters = next((c for c in status.profiles if c.profile == key), None) if status else None
        if counters is not None:  # a silent node's last counts still happened: keep them in the sums
            tally.exported += counters.spans_exported
            tally.dropped += counters.spans_dropped
            tally.lost += counters.events_lost
            tally.parser_drops += counters.parser_drops
            tally.sampled_out += counters.spans_sampled_out
            tally.skipped += counters.exchanges_skipped
        heartbeat = status.heartbeat_time if status else None
        if heartbeat is None and config.created and (now - config.created).total_seconds() <= heartbeat_timeout:
            tally.applying.append(config.name)  # a new node config: its agent has not had time to report
            continue
        if status is None or heartbeat is None or (now - heartbeat).total_seconds() > heartbeat_timeout:
            tally.silent.append(config.name)
            continue
        if status.probe_errors:
            first = status.probe_errors[0]
            tally.probe_errors[config.name] = f"{first.probe}: {first.message}"[:_MESSAGE_CHARS]
        if counters is None:
            (tally.failed if status.probe_errors else tally.applying).append(config.name)
            continue
        tally.ready.append(config.name)
        if counters.capture_fraction is not None:
            tally.budgets[config.name] = (counters.capture_fraction, counters.agent_cpu_percent)
        attached = {(t.pod_uid, t.container) for t in status.targets
                    if t.state == models.TargetState.ATTACHED}
        tally.traced += len({uid for uid, _ in attached & wanted})
        for target in status.targets:
            if target.tls_unprobed and (target.pod_uid, target.container) in wanted:
                tally.tls_unprobed[f"{config.name}/{target.pod_uid}/{target.container}"] = target.tls_unprobed
        if counters.export_error:
            tally.export_errors[config.name] = counters.export_error
    return tally


def _first_error(errors: dict[str, str]) -> str:
    node = sorted(errors)[0]
    return f"{node}: {errors[node]}"


def _ready_and_degraded(profile: render.Profile, matched: int, t: _Tally,
                        heartbeat_timeout: float) -> tuple[tuple[bool, str, str], tuple[bool, str, str]]:
    """(status, reason, message) of Ready and of Degraded."""
    if profile.error is not None:
        return (False, INVALID_SPEC, profile.error), (True, INVALID_SPEC, profile.error)
    if matched == 0:
        return (False, NO_MATCHING_PODS, "no running or pending pod matches the selectors"), \
            (False, AS_EXPECTED, "nothing to trace")
    total = t.nodes
    if total == 0:
        ready = (False, APPLYING, f"{matched} matching pods, none on a node with a NodeTraceConfig yet")
    elif t.applying:
        ready = (False, APPLYING, f"{len(t.ready)}/{total} nodes applied the profile; waiting for "
                                  f"{_names(t.applying)}")
    elif not t.ready and t.failed:
        ready = (False, PROBE_ERRORS, f"no node could load its probes: {_first_error(t.probe_errors)}")
    elif not t.ready:
        ready = (False, NODES_NOT_REPORTING, f"none of the {total} nodes reports: {_names(t.silent)}")
    else:
        ready = (True, TRACING, f"{t.traced}/{matched} pods traced on {len(t.ready)}/{total} nodes")
    if t.silent:
        degraded = (True, NODES_NOT_REPORTING, f"{len(t.silent)} nodes sent no heartbeat for "
                                               f"{heartbeat_timeout:g}s: {_names(t.silent)}")
    elif t.probe_errors:
        degraded = (True, PROBE_ERRORS, f"probes failed on {_names(list(t.probe_errors))}; "
                                        f"{_first_error(t.probe_errors)}")
    elif t.export_errors:
        degraded = (True, EXPORT_FAILING, f"OTLP export failing on {_names(list(t.export_errors))} "
                                          f"({t.dropped} spans dropped so far); {_first_error(t.export_errors)}")
    elif t.lost:
        degraded = (True, EVENTS_LOST, f"{t.lost} kernel events lost since the agents started")
    elif throttled := {node: b for node, b in t.budgets.items() if b[0] < 1.0}:
        node = min(throttled, key=lambda n: throttled[n][0])
        fraction, cost = throttled[node]
        degraded = (True, OVER_BUDGET,
                    f"{len(throttled)} nodes capture part of the exchanges to stay within overheadBudget (RED metrics "
                    f"still count all); lowest: {node} captures {fraction:.0%}"
                    + (f", agent at {cost:g}% CPU" if cost is not None else ""))
    elif t.tls_unprobed:
        first = sorted(t.tls_unprobed)[0]
        degraded = (True, TLS_NOT_READABLE,
                    f"{len(t.tls_unprobed)} containers open TLS connections through a TLS stack that is not probed "
                    f"(only OpenSSL with socket BIOs is), so those yield no spans; {first}: "
                    f"{', '.join(t.tls_unprobed[first][:3])}"[:_MESSAGE_CHARS])
    else:
        degraded = (False, AS_EXPECTED, "all nodes report, no probe errors, no lost events")
    return ready, degraded


def _conditions(previous: list[models.Condition], generation: int | None, now: datetime.datetime,
                wanted: dict[str, tuple[bool, str, str]]) -> tuple[list[models.Condition], list[Transition]]:
    old = {c.type: c for c in previous}
    conditions, transitions = [], []
    for ctype, (flag, reason, message) in wanted.items():
        status = _TRUE if flag else _FALSE
        before = old.get(ctype)
        changed = before is None or before.status != status or before.reason != reason
        conditions.append(models.Condition(
            type=ctype, status=status, reason=reason, message=message, observed_generation=generation,
            last_transition_time=now if changed or before is None else before.last_transition_time))
        if changed:
            bad = (ctype == READY) != flag and reason != APPLYING  # applying is progress, not a problem
            transitions.append(Transition(warning=bad, reason=reason, message=f"{ctype}={status}: {message}"))
    return conditions, transitions


def aggregate(
    profile: render.Profile, matched: int, configs: Iterable[render.NodeConfig], now: datetime.datetime,
    heartbeat_timeout: float,
) -> tuple[models.ProfileStatus, list[Transition]]:
    """The profile's status from the node configs that reference it, and the condition transitions."""
    now = now.replace(microsecond=0)  # metav1.Time has second precision: keep round trips equal
    tally = _tally(profile.key, configs, now, heartbeat_timeout)
    if profile.error is not None:
        matched = 0
    ready, degraded = _ready_and_degraded(profile, matched, tally, heartbeat_timeout)
    previous = profile.status.conditions if profile.status else []
    wanted = {READY: ready, DEGRADED: degraded}
    conditions, transitions = _conditions(previous, profile.generation, now, wanted)
    status = models.ProfileStatus(
        observed_generation=profile.generation, matched_pods=matched, traced_pods=tally.traced,
        nodes=models.NodeCounts(ready=len(tally.ready),
                                total=tally.nodes),
        spans_exported=tally.exported, spans_dropped=tally.dropped, events_lost=tally.lost,
        parser_drops=tally.parser_drops, spans_sampled_out=tally.sampled_out, exchanges_skipped=tally.skipped,
        capture_fraction=min((b[0] for b in tally.budgets.values()), default=None), conditions=conditions)
    return status, transitions
