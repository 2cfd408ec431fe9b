"""Kubernetes mode (`podspan-agent run`): follow this node's NodeTraceConfig, trace the cgroups of
its targets, route each span to the exporters of the profiles that selected its pod, report status.

Threads: the tracer loop runs on the main thread and applies configuration on its ticks; one
thread watches the NodeTraceConfig; status is written from the tracer's ticks.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import logging
import pathlib
import signal
import threading
import time
from typing import Any

from podspan_agent import (
    bpf_events,
    budget,
    cgroups,
    kernel_headers,
    kube,
    loader,
    process_info,
    profile_view,
    sampling,
    tls,
    tracer,
)
from podspan_agent.export import otlp, otlp_metrics, otlp_settings
from podspan_agent.metrics import prometheus, red
from podspan_agent.protocols import base
from podspan_agent.spans import model
from podspan_api import models

log = logging.getLogger(__name__)

_RECONCILE_EVERY_S = 2.0  # also picks up containers that start (or restart) later
_STATUS_EVERY_S = 10.0
_HEALTH_EVERY_S = 1.0  # how fresh the Prometheus endpoint's agent health is; also the overhead budget's cadence
_RUNTIMES = ("containerd", "cri-o", "docker")
_ERROR_CHARS = 300  # an exporter error in status: enough to diagnose, small enough for an object
_PROBE_ERROR_CHARS = 2000  # compiler output is long; its first lines say what failed
AGENT_VERSION = "0.1.0"


@dataclasses.dataclass(frozen=True, slots=True)
class TargetPlan:
    """One container of the spec and where the agent stands with it."""

    status: models.TargetStatus
    cgroup_id: int | None
    cgroup_dir: pathlib.Path | None
    resource: dict[str, base.AttributeValue]
    profiles: tuple[str, ...]
    container_hex: str | None


def split_container_id(container_id: str) -> tuple[str, str] | None:
    """`containerd://<hex>` -> ("containerd", "<hex>")."""
    runtime, sep, hex_id = container_id.partition("://")
    return (runtime, hex_id) if sep and runtime in _RUNTIMES and hex_id else None


def find_cgroup(
    mount: pathlib.Path, pod_uid: str, runtime: str, hex_id: str, qos: str, roots: list[str]
) -> pathlib.Path | None:
    """The container's cgroup under either kubelet cgroup driver and any of the kubelet `roots`."""
    qos_name = qos.lower()
    for root in roots:
        for relative in (
            cgroups.kubelet_systemd_path(pod_uid, hex_id, qos_name, runtime, root),
            cgroups.kubelet_cgroupfs_path(pod_uid, hex_id, qos_name, root),
        ):
            if (mount / relative).is_dir():
                return mount / relative
    return None


def plan(spec: models.NodeTraceConfigSpec, node: str, mount: pathlib.Path) -> list[TargetPlan]:
    """Resolve every container of the spec to a cgroup id (or a reason why not yet)."""
    plans = []
    roots = cgroups.kubelet_roots(mount) if spec.targets else []
    for pod in spec.targets:
        for container in pod.containers:
            resource = _pod_resource(pod, container.name, node)
            parsed = split_container_id(container.container_id or "")
            cgroup_id, directory = None, None
            state, reason, message = models.TargetState.WAITING, "", ""
            if container.container_id is None:
                reason, message = "ContainerNotStarted", "no container id reported yet"
            elif parsed is None:
                state, reason = models.TargetState.ERROR, "UnsupportedRuntime"
                message = f"cannot read container id {container.container_id!r}"
            else:
                resource["container.id"] = parsed[1]
                directory = find_cgroup(mount, pod.uid, parsed[0], parsed[1], str(pod.qos_class), roots)
                if directory is None:
                    reason, message = "CgroupNotFound", f"no cgroup for container {parsed[1][:12]} yet"
                else:
                    state, cgroup_id = models.TargetState.ATTACHED, cgroups.cgroup_id(directory)
            status = models.TargetStatus(pod_uid=pod.uid, container=container.name,
                                         container_id=container.container_id, state=state,
                                         reason=reason, message=message)
            plans.append(TargetPlan(status, cgroup_id, directory, resource, tuple(container.profiles),
                                    parsed[1] if parsed else None))
    return plans


def _pod_resource(pod: models.PodTarget, container: str, node: str) -> dict[str, base.AttributeValue]:
    resource: dict[str, base.AttributeValue] = {
        "k8s.namespace.name": pod.namespace,
        "k8s.pod.name": pod.name,
        "k8s.pod.uid": pod.uid,
        "k8s.container.name": container,
        "k8s.node.name": node,
        "service.name": pod.service_name,
    }
    if pod.workload is not None:
        resource[f"k8s.{pod.workload.kind.lower()}.name"] = pod.workload.name
    if "app.kubernetes.io/version" in pod.labels:
        resource["service.version"] = pod.labels["app.kubernetes.io/version"]
    return resource


class Router:
    """The tracer's only sink in Kubernetes mode: one OTLP exporter per profile."""

    def __init__(self, export_queue: int, metrics: red.RedMetrics) -> None:
        self._export_queue = export_queue
        self._metrics = metrics  # every span counts for each profile that traces it, whether sampled or not
        self._metric_exporters: dict[str, otlp_metrics.MetricsExporter] = {}
        self._profiles: dict[str, models.ResolvedProfile] = {}
        self._views: dict[str, profile_view.View] = {}
        self._exporters: dict[str, otlp.OtlpExporter] = {}
        self._samplers: dict[str, sampling.SmartSampler] = {}  # profiles in smart mode
        self._by_container: dict[str, tuple[str, ...]] = {}
        self._by_cgroup: dict[int, tuple[str, ...]] = {}  # attached targets' cgroup id -> their profiles
        # Per cgroup, the cumulative counts already attributed to profiles: kernel losses, parser drops.
        self._lost_seen: dict[int, int] = {}
        self._lost_by_profile: collections.Counter[str] = collections.Counter()
        self._drops_seen: dict[int, int] = {}
        self._drops_by_profile: collections.Counter[str] = collections.Counter()
        # Spans sampling did not keep: ratio/parentBased drops, and what retired smart samplers dropped.
        self._sampled_out_before: collections.Counter[str] = collections.Counter()
        self._skipped = red.SkippedFolder(metrics)
        self._skipped_by_profile: collections.Counter[str] = collections.Counter()
        self.unrouted = 0

    def configure(self, profiles: list[models.ResolvedProfile], plans: list[TargetPlan]) -> None:
        wanted = {p.key: p for p in profiles}
        for key in list(self._exporters):
            old, new = self._profiles[key], wanted.get(key)
            if new is None or (new.export, new.resource_attributes) != (old.export, old.resource_attributes):
                self._exporters.pop(key).shutdown(timeout=1.0)
                if key in self._metric_exporters:
                    self._metric_exporters.pop(key).shutdown(timeout=1.0)
        for key, profile in wanted.items():
            if key not in self._exporters:
                export = profile.export.otlp
                self._exporters[key] = otlp.OtlpExporter(
                    export.endpoint, protocol=str(export.protocol), headers=export.headers,
                    insecure=export.insecure, compression=str(export.compression),
                    resource=otlp_settings.base_resource(extra=profile.resource_attributes),
                    max_queue_size=self._export_queue,
                )
                if export.metrics:
                    settings = otlp_settings.resolve(
                        otlp_settings.METRICS, otlp_metrics.metrics_endpoint(export.endpoint),
                        protocol=str(export.protocol), headers=export.headers, insecure=export.insecure,
                        compression=str(export.compression))
                    self._metric_exporters[key] = otlp_metrics.MetricsExporter(
                        functools.partial(self._metrics.snapshot, key), settings,
                        otlp_settings.base_resource(extra=profile.resource_attributes))
        for key in list(self._samplers):
            old_settings, new = self._profiles[key].sampling, wanted.get(key)
            if new is None or new.sampling != old_settings:
                retired = self._samplers.pop(key)
                retired.flush(time.monotonic_ns())  # what it holds goes out under the old rules
                self._sampled_out_before[key] += retired.stats.spans_dropped  # the profile's count stays monotonic
        for key, profile in wanted.items():
            if profile.sampling.effective_mode == models.SamplingMode.SMART and key not in self._samplers:
                self._samplers[key] = sampling.SmartSampler(profile.sampling.smart,
                                                            functools.partial(self._export_to, key))
        self._profiles = wanted
        self._views = {key: profile_view.View.of(profile) for key, profile in wanted.items()}
        self._by_container = {p.container_hex: p.profiles for p in plans if p.container_hex}
        self._by_cgroup = {p.cgroup_id: p.profiles for p in plans if p.cgroup_id is not None}

    def export(self, span: model.SpanRecord) -> None:
        keys = self._by_container.get(str(span.resource.get("container.id", "")), ())
        if not keys:
            self.unrouted += 1
        for key in keys:
            profile = self._profiles.get(key)
            if profile is None or span.protocol not in profile.protocols:
                continue
            seen = profile_view.apply(self._views[key], span)
            if seen is None:
                continue
            sampler = self._samplers.get(key)
            if sampler is not None:
                kept = sampler.offer(seen, time.monotonic_ns())
            else:
                kept = sampling.keep(span, profile.sampling)
                if kept:
                    self._exporters[key].export(seen)
                else:
                    self._sampled_out_before[key] += 1
            self._metrics.record(span, sampled=kept, profile=key)

    def record_pair(self, client: model.SpanRecord, server: model.SpanRecord) -> None:
        """A service-graph request, for every profile that traces either end."""
        keys = {*self._by_container.get(str(client.resource.get("container.id", "")), ()),
                *self._by_container.get(str(server.resource.get("container.id", "")), ())}
        for key in sorted(keys):
            self._metrics.record_pair(client, server, profile=key)

    def fold_skipped(self, totals: dict[bpf_events.SkipSeries, bpf_events.SkipTotals],
                     resources_by_cgroup: dict[int, dict[str, base.AttributeValue]]) -> None:
        """The kernel's counts of skipped exchanges into the RED metrics of every profile that traces their cgroup
        and protocol (the workload as its spans name it)."""
        def owners(series: bpf_events.SkipSeries) -> list[tuple[str, red.Labels]]:
            protocol = "redis" if series.protocol == bpf_events.SampleProtocol.REDIS else "http"
            workload = red.workload_of(resources_by_cgroup.get(series.cgroup_id, {}))
            return [(key, workload) for key in self._by_cgroup.get(series.cgroup_id, ())
                    if key in self._profiles and protocol in self._profiles[key].protocols]
        self._skipped_by_profile.update(self._skipped.fold(totals, owners))

    def counters(self, lost_by_cgroup: dict[int, int], drops_by_cgroup: dict[int, int],
                 governor: budget.Governor | None = None) -> list[models.ProfileCounters]:
        """Per profile: its exporter's counters, the kernel events lost and the exchanges the parsers dropped or
        the kernel skipped for its own pods' cgroups, and where a budgeted profile's budget stands."""
        self._attribute(lost_by_cgroup, self._lost_seen, self._lost_by_profile)
        self._attribute(drops_by_cgroup, self._drops_seen, self._drops_by_profile)
        counters = []
        for key, exporter in sorted(self._exporters.items()):
            stats = exporter.stats()
            counters.append(models.ProfileCounters(
                profile=key, spans_exported=stats.spans_exported, spans_dropped=stats.spans_dropped,
                events_lost=self._lost_by_profile[key], parser_drops=self._drops_by_profile[key],
                spans_sampled_out=self._sampled_out(key), exchanges_skipped=self._skipped_by_profile[key],
                export_error=stats.failing[:_ERROR_CHARS] if stats.failing else None,
                **(_budget_counters(governor) if governor and self._profiles[key].overhead_budget else {}),
            ))
        return counters

    def _attribute(self, totals: dict[int, int], seen_by_cgroup: dict[int, int],
                   by_profile: collections.Counter[str]) -> None:
        # Profiles keep what they lost when a target goes (monotonic counters); losses of a cgroup no
        # profile traces any more stay only in the node-wide counters (Probes.stats(), tracer stats).
        for cgroup_id, total in totals.items():
            seen = seen_by_cgroup.get(cgroup_id, 0)
            new = total - seen if total >= seen else total  # a reloaded program counts from zero again
            seen_by_cgroup[cgroup_id] = total
            if new > 0:
                for key in self._by_cgroup.get(cgroup_id, ()):
                    by_profile[key] += new

    def _sampled_out(self, key: str) -> int:
        sampler = self._samplers.get(key)
        return self._sampled_out_before[key] + (sampler.stats.spans_dropped if sampler is not None else 0)

    def _export_to(self, key: str, span: model.SpanRecord) -> None:
        exporter = self._exporters.get(key)
        if exporter is not None:
            exporter.export(span)

    def tick(self, now_ns: int) -> None:
        """Smart sampling decides the traces whose wait is over."""
        for sampler in self._samplers.values():
            sampler.tick(now_ns)

    def export_stats(self) -> list[otlp.ExportStats]:
        return [exporter.stats() for exporter in self._exporters.values()]

    def failing(self) -> list[str]:
        """Profiles whose exporter's last send failed."""
        return [key for key, exporter in sorted(self._exporters.items()) if exporter.stats().failing]

    def shutdown(self) -> None:
        for sampler in self._samplers.values():
            sampler.flush(time.monotonic_ns())
        for exporter in self._exporters.values():
            exporter.shutdown(timeout=2.0)
        for metric_exporter in self._metric_exporters.values():
            metric_exporter.shutdown(timeout=2.0)


def _budget_counters(governor: budget.Governor) -> dict[str, Any]:
    cost = governor.cost
    return {"capture_fraction": round(governor.fraction or 1.0, 4), "cost_scope": governor.scope,
            "agent_cpu_percent": round(cost.percent, 2) if cost is not None else None}


class NodeAgent:
    def __init__(self, node: str, custom: kube.CustomObjects, probes: loader.Probes,
                 headers: kernel_headers.HeaderSource, export_queue: int,
                 red_metrics: red.RedMetrics, collector: prometheus.Collector | None) -> None:
        """`collector`: the Prometheus endpoint's, which the agent's health is published to (None: no endpoint)."""
        self.node, self._custom, self._probes, self._headers = node, custom, probes, headers
        self._mount = cgroups.cgroup2_mount()
        self._watcher = kube.ConfigWatcher(custom, node)
        self._status_writer = kube.StatusWriter(custom, node)
        self._collector = collector
        self.router = Router(export_queue, red_metrics)
        self._resources_by_cgroup: dict[int, dict[str, base.AttributeValue]] = {}
        self.resources = process_info.ResourceResolver(lambda cid: self._resources_by_cgroup.get(cid, {}))
        self._capture = base.CaptureSettings()
        self.tracer = tracer.Tracer(probes, tracer.TracerSettings(capture=self._capture), [self.router],
                                    self.resources, on_pair=self.router.record_pair)
        self._tls = tls.Tracker(probes)
        self._governor = budget.Governor(probes)
        self._tls_targets: list[TargetPlan] = []  # attached targets some profile of which reads TLS
        self._applied_version = -1
        self._generation: int | None = None
        self._plans: list[TargetPlan] = []
        self._next_reconcile = 0.0
        self._next_status = 0.0
        self._next_health = 0.0
        self._status_dirty = True
        self._failing: list[str] = []

    def run(self, stop: threading.Event) -> None:
        self._watcher.start()
        self._status_writer.start()
        try:
            self.tracer.run(stop, self._tick)
        finally:
            self._watcher.stopping.set()
            self._status_writer.stop()
            self._governor.close()
            self._tls.close()
            self.router.shutdown()

    def _tick(self) -> None:
        now = time.monotonic()
        version, obj = self._watcher.latest()
        if version != self._applied_version or now >= self._next_reconcile:
            self._apply(obj)
            self._applied_version, self._next_reconcile = version, now + _RECONCILE_EVERY_S
        if now >= self._next_health:
            # Once a second, not every tick: the snapshot reads the kernel's counters and every connection.
            self._next_health = now + _HEALTH_EVERY_S
            throttled = self._governor.throttled
            self._governor.tick(time.monotonic_ns())
            if throttled != self._governor.throttled:  # over budget or back within it: tell the operator now
                self._status_dirty = True
            self.router.fold_skipped(self._probes.skipped_exchanges(), self._resources_by_cgroup)
            if self._collector is not None:
                self._collector.publish(prometheus.Health.of(self.tracer.stats(), self.router.export_stats(),
                                                             self._probes.tracepoints_attached,
                                                             *self._governor.health()))
        self.router.tick(time.monotonic_ns())
        failing = self.router.failing()
        if failing != self._failing:  # export broke or recovered: tell the operator now
            self._failing, self._status_dirty = failing, True
        if obj is not None and (self._status_dirty or now >= self._next_status):
            self._submit_status()
            self._status_dirty, self._next_status = False, now + _STATUS_EVERY_S

    def _apply(self, obj: dict[str, Any] | None) -> None:
        config = models.NodeTraceConfig.model_validate(obj) if obj else None
        spec = config.spec if config else models.NodeTraceConfigSpec()
        self._generation = config.metadata.generation if config else None
        plans = plan(spec, self.node, self._mount)
        wanted = {p.cgroup_id: p.resource for p in plans if p.cgroup_id is not None}
        current = set(self._resources_by_cgroup)
        for cid in current - set(wanted):
            self._probes.untrace_cgroup(cid)
            self.resources.forget_cgroup(cid)
        for cid in set(wanted) - current:
            self._probes.trace_cgroup(cid)
        if wanted and not self._probes.attached:
            self._probes.attach()
            self._status_dirty = True
        elif not wanted and self._probes.attached:
            self._probes.detach()
            self._status_dirty = True
        self._resources_by_cgroup = wanted
        self.router.configure(spec.profiles, plans)
        # The node's agent has one cost: the strictest budget of its profiles, over the cgroups only budgeted
        # profiles trace (a profile without a budget keeps every exchange of its pods).
        budgets = {p.key: p.overhead_budget.cpu_percent for p in spec.profiles if p.overhead_budget}
        budgeted = {p.cgroup_id for p in plans if p.cgroup_id is not None and all(k in budgets for k in p.profiles)}
        self._governor.configure(min(budgets.values(), default=None), budgeted)
        self.tracer.set_sampling(bool(budgets))
        # Parsers keep headers and bodies only when some profile asks for them (bodies up to the largest
        # limit asked); each profile's view trims the rest.
        bodies = [p.capture.body.max_bytes for p in spec.profiles if p.capture.body.enabled]
        capture = base.CaptureSettings(headers=any(p.capture.headers for p in spec.profiles), bodies=bool(bodies),
                                       body_limit=max(bodies, default=0))
        if capture != self._capture:
            self.tracer.set_capture(capture)
            self._capture = capture
        reads_tls = {p.key for p in spec.profiles if p.capture.tls}
        self._tls_targets = [p for p in plans if p.cgroup_dir is not None and reads_tls & set(p.profiles)]
        # On every reconcile: processes that started (or loaded libssl) since are picked up.
        self._tls.sync(pid for p in self._tls_targets if p.cgroup_dir for pid in cgroups.processes(p.cgroup_dir))
        if [p.status for p in plans] != [p.status for p in self._plans]:
            self._status_dirty = True
            log.info("applied NodeTraceConfig/%s: %d attached, %d waiting", self.node, len(wanted),
                     len(plans) - len(wanted))
        self._plans = plans

    def _submit_status(self) -> None:
        """Hand the status to the writer thread (which retries a refused one itself)."""
        lost = self._probes.events_lost_by_cgroup()
        status = models.NodeTraceConfigStatus(
            observed_generation=self._generation,
            heartbeat_time=datetime.datetime.now(datetime.UTC),
            agent_version=AGENT_VERSION,
            header_source=self._headers.describe(),
            targets=[self._with_tls(p) for p in self._plans],
            profiles=self.router.counters(lost, self.tracer.table.parser_drops_by_cgroup(), self._governor),
            probes_attached=self._probes.attached,
        )
        self._status_writer.submit(status)

    def _with_tls(self, target: TargetPlan) -> models.TargetStatus:
        """The target's status with what its processes use for TLS (when a profile of it reads TLS)."""
        if target not in self._tls_targets or target.cgroup_dir is None or target.cgroup_id is None:
            return target.status
        pids = cgroups.processes(target.cgroup_dir)
        found = [state.describe() for pid in pids for state in self._tls.libraries(pid)]
        unprobed = [f"pid {pid} ({process_info.executable_name(pid)})"
                    for pid in self._tls.unsupported(self.tracer.table.tls_processes, target.cgroup_id)]
        return target.status.model_copy(update={"tls": list(dict.fromkeys(found))[:32], "tls_unprobed": unprobed[:32]})


def load_probes(custom: kube.CustomObjects, node: str, stop: threading.Event,
                retry_s: float) -> tuple[loader.Probes, kernel_headers.HeaderSource] | None:
    """Load the capture program. Until it loads, say why in the node's status (the profiles then show
    ProbeErrors instead of a silent node) and retry every `retry_s`. None when stopped first."""
    while not stop.is_set():
        try:
            headers = kernel_headers.resolve()
            return loader.Probes(loader.ProbeOptions(), headers), headers
        except (kernel_headers.HeadersNotFound, loader.ProbeError) as exc:
            log.error("cannot load the capture program (retrying in %.0fs): %s", retry_s, exc)
            error = models.ProbeError(probe="capture program", message=str(exc)[:_PROBE_ERROR_CHARS])
        retry_at = time.monotonic() + retry_s
        while not stop.is_set() and time.monotonic() < retry_at:
            kube.patch_status(custom, node, models.NodeTraceConfigStatus(
                heartbeat_time=datetime.datetime.now(datetime.UTC), agent_version=AGENT_VERSION,
                probe_errors=[error], probes_attached=False))
            stop.wait(min(_STATUS_EVERY_S, max(0.0, retry_at - time.monotonic())))
    return None


def run(node: str, export_queue: int, probe_retry_s: float, red_metrics: red.RedMetrics,
        collector: prometheus.Collector | None) -> int:
    custom = kube.custom_objects()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    loaded = load_probes(custom, node, stop, probe_retry_s)
    if loaded is None:
        return 0
    probes, headers = loaded
    agent = NodeAgent(node, custom, probes, headers, export_queue, red_metrics, collector)
    log.info("following NodeTraceConfig/%s (%s)", node, headers.describe())
    try:
        agent.run(stop)
    finally:
        probes.close()
    return 0
