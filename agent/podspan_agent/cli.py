"""`podspan-agent`: `trace` (standalone, no cluster) and `run` (Kubernetes node agent)."""

from __future__ import annotations

import argparse
import collections.abc
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence

from podspan_agent import budget, cgroups, kernel_headers, loader, process_info, tls, tracer
from podspan_agent.export import otlp, otlp_metrics, otlp_settings, sinks
from podspan_agent.metrics import prometheus, red
from podspan_agent.protocols import base, registry

EXIT_USAGE = 2
log = logging.getLogger("podspan_agent")


class UsageError(Exception):
    """Bad input or environment: reported as one line, exit code 2, nothing attached."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
        return result
    except UsageError as exc:
        print(f"podspan-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podspan-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    trace = commands.add_parser("trace", help="trace cgroups or processes on this machine (no cluster)")
    trace.add_argument("--cgroup", action="append", default=[], metavar="PATH",
                       help="cgroup v2 directory to trace (absolute, or relative to the cgroup2 mount)")
    trace.add_argument("--pid", action="append", default=[], type=int, metavar="PID",
                       help="process to trace")
    # Both default to None so the exporter applies the OTLP spec's order: argument, then
    # OTEL_EXPORTER_OTLP_TRACES_*, then OTEL_EXPORTER_OTLP_* (a base URL, /v1/traces appended), then defaults.
    trace.add_argument("--otlp-endpoint",
                       help="OTLP endpoint (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then "
                            "$OTEL_EXPORTER_OTLP_ENDPOINT; none of them: print spans)")
    trace.add_argument("--otlp-protocol", choices=otlp_settings.PROTOCOLS,
                       help=f"(default: $OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then $OTEL_EXPORTER_OTLP_PROTOCOL, "
                            f"else {otlp_settings.DEFAULT_PROTOCOL} as the OTLP spec says)")
    trace.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    trace.add_argument("--output", choices=("console", "jsonl"), default="console",
                       help="how to print spans when there is no endpoint")
    trace.add_argument("--output-file", type=pathlib.Path, help="write jsonl/console output here")
    trace.add_argument("--protocols", help=f"comma-separated subset of: {','.join(registry.NAMES)}")
    trace.add_argument("--capture-size", type=int, default=512, help="bytes captured per message")
    trace.add_argument("--capture-headers", action="store_true", help="record HTTP headers (redacted)")
    trace.add_argument("--capture-bodies", type=int, default=0, metavar="BYTES",
                       help="record the first BYTES of HTTP/1 bodies with a Content-Length, as far as the capture "
                            "size reaches (credential-like JSON and form values redacted); default: none")
    trace.add_argument("--no-tls", action="store_true",
                       help="do not read TLS plaintext from OpenSSL or Go crypto/tls (uprobes); TLS connections "
                            "then yield no spans")
    trace.add_argument("--no-otlp-metrics", dest="otlp_metrics", action="store_false",
                       help="with an OTLP endpoint, do not also push RED metrics to it (/v1/metrics, every "
                            "$OTEL_METRIC_EXPORT_INTERVAL ms, default 60000)")
    trace.add_argument("--metrics-port", type=int, metavar="PORT",
                       help="serve RED metrics and agent health for Prometheus at http://ADDRESS:PORT/metrics "
                            "(0: any free port, logged); default: no metrics")
    trace.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDRESS",
                       help="address the metrics endpoint listens on (default 127.0.0.1)")
    trace.add_argument("--cpu-budget", type=float, metavar="PERCENT",
                       help="keep the agent's cost (its CPU time plus its BPF programs' run time) within PERCENT of "
                            "one CPU by fully capturing fewer HTTP/1 and Redis exchanges (the rest are counted in the "
                            "RED metrics only); default: capture everything")
    trace.set_defaults(func=_trace)

    run = commands.add_parser("run", help="Kubernetes mode: follow this node's NodeTraceConfig")
    run.add_argument("--node", default=os.environ.get("NODE_NAME"), help="node name (default $NODE_NAME)")
    run.add_argument("--export-queue", type=int, default=otlp.DEFAULT_MAX_QUEUE_SIZE, metavar="SPANS",
                     help="spans each profile's exporter holds while its endpoint is slow or down; beyond it "
                          "new spans are dropped and counted (bounds memory)")
    run.add_argument("--probe-retry", type=float, default=60.0, metavar="SECONDS",
                     help="when the capture program cannot load, report why in the node status and retry this "
                          "often")
    run.add_argument("--metrics-port", type=int, default=prometheus.DEFAULT_PORT, metavar="PORT",
                     help=f"Prometheus endpoint for RED metrics and agent health (default {prometheus.DEFAULT_PORT}; "
                          "-1: none)")
    # All addresses by default: Prometheus scrapes the agent from outside its node.
    run.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDRESS",
                     help="address the metrics endpoint listens on (default all)")
    run.set_defaults(func=_run)
    return parser


def _protocols(text: str | None) -> frozenset[str] | None:
    if not text:
        return None
    chosen = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = chosen - set(registry.NAMES)
    if unknown:
        known = ", ".join(registry.NAMES)
        raise UsageError(f"unknown protocol(s) {', '.join(sorted(unknown))}; known: {known}")
    return chosen


def _check_privileges() -> None:
    if os.geteuid() != 0:
        raise UsageError("tracing needs root (eBPF programs and tracepoints); run with sudo")


def _selection(cgroup_paths: list[str], pids: list[int]) -> tuple[dict[int, pathlib.Path], list[int]]:
    if not cgroup_paths and not pids:
        raise UsageError("nothing to trace: give at least one --cgroup PATH or --pid PID")
    try:
        selected = {cgroups.cgroup_id(p): p for p in (cgroups.resolve(path) for path in cgroup_paths)}
    except cgroups.CgroupError as exc:
        raise UsageError(str(exc)) from exc
    for pid in pids:
        if not os.path.exists(f"/proc/{pid}"):
            raise UsageError(f"no process with pid {pid}")
    return selected, pids


def _trace(args: argparse.Namespace) -> int:
    protocols = _protocols(args.protocols)
    if args.capture_bodies < 0:
        raise UsageError(f"--capture-bodies must be 0 or more bytes, got {args.capture_bodies}")
    if args.cpu_budget is not None and not args.cpu_budget > 0:
        raise UsageError(f"--cpu-budget must be a positive percentage, got {args.cpu_budget}")
    selected, pids = _selection(args.cgroup, args.pid)
    _check_privileges()
    try:
        headers = kernel_headers.resolve()
    except kernel_headers.HeadersNotFound as exc:
        raise UsageError(str(exc)) from exc
    try:
        options = loader.ProbeOptions(capture_size=args.capture_size)
        options.cflags()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

    red_metrics = red.RedMetrics()
    try:
        outputs = sinks.Standalone(args.otlp_endpoint, args.otlp_protocol, args.output, args.output_file,
                                   metrics=red_metrics if args.otlp_metrics else None)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    collector = prometheus.Collector(red_metrics)
    endpoint = None
    try:
        if args.metrics_port is not None:
            endpoint = metrics_endpoint(args.metrics_address, args.metrics_port, collector)
        probes = loader.Probes(options, headers)
    except (UsageError, loader.ProbeError) as exc:
        outputs.shutdown()
        if endpoint is not None:
            endpoint.close()
        raise UsageError(str(exc)) from exc
    resources = process_info.ResourceResolver(lambda _cgroup: {})
    settings = tracer.TracerSettings(
        capture=base.CaptureSettings(headers=args.capture_headers, bodies=args.capture_bodies > 0,
                                     body_limit=args.capture_bodies), protocols=protocols
    )
    measured = endpoint is not None or outputs.otlp_metrics is not None
    governor = budget.Governor(probes)
    skipped = red.SkippedFolder(red_metrics)
    span_sinks = [red.Recorder(red_metrics), *outputs.sinks] if measured else outputs.sinks
    the_tracer = tracer.Tracer(probes, settings, span_sinks, resources,
                               on_pair=red_metrics.record_pair if measured else None)
    stop = threading.Event()
    try:
        for cid in selected:
            probes.trace_cgroup(cid)
        for pid in pids:
            probes.trace_pid(pid)
        if args.cpu_budget is not None:
            budgeted = set(selected) | {cgroups.cgroup_id(d) for d in map(cgroups.of_process, pids) if d and d.is_dir()}
            governor.configure(args.cpu_budget, budgeted)
            the_tracer.set_sampling(True)
        what = [str(p) for p in selected.values()] + [f"pid {p}" for p in pids]
        served = f"; metrics at {endpoint.url}" if endpoint else ""
        print(f"podspan: tracing {', '.join(what)}; {outputs.describe()}{served} ({headers.describe()}; "
              f"attached in {probes.load_seconds:.1f}s). Ctrl-C to stop.", file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if args.duration is not None:
            threading.Timer(args.duration, stop.set).start()
        last_summary = [time.monotonic()]
        libraries = _TlsFollower(None if args.no_tls else tls.Tracker(probes), list(selected.values()), pids)

        def on_tick() -> None:
            libraries.follow(the_tracer.table.tls_processes)
            if time.monotonic() - last_summary[0] >= 1.0:
                # Once a second, one snapshot for both: it reads the kernel's counters and every connection.
                last_summary[0] = time.monotonic()
                governor.tick(time.monotonic_ns())
                skipped.fold(probes.skipped_exchanges(),
                             lambda s: [("", red.workload_of(resources.of(s.tgid, s.cgroup_id)))])
                stats = the_tracer.stats()
                if endpoint is not None:
                    collector.publish(prometheus.Health.of(stats, outputs.export_stats(), probes.tracepoints_attached,
                                                           *governor.health()))
                outputs.summary(stats)

        the_tracer.run(stop, on_tick)
    finally:
        stop.set()
        final_stats = the_tracer.stats()
        if args.cpu_budget is not None:
            skipped.fold(probes.skipped_exchanges(),  # the last ones, counted when their connections closed
                         lambda s: [("", red.workload_of(resources.of(s.tgid, s.cgroup_id)))])
            cost = governor.cost
            print(f"podspan: budget {args.cpu_budget:g}% of a CPU ({governor.scope}): agent at "
                  f"{cost.percent if cost else 0.0:.2f}%, capturing {governor.fraction or 1.0:.4f} of HTTP/1 and "
                  f"Redis exchanges; {final_stats.get('kernel_skipped', 0)} skipped (counted in RED metrics only)",
                  file=sys.stderr, flush=True)
        governor.close()
        outputs.shutdown()
        probes.close()
        if endpoint is not None:
            endpoint.close()
    outputs.summary(final_stats, final=True)
    return 0


class _TlsFollower:
    """Standalone mode's TLS discovery: the selected processes' OpenSSL attached and reported on stderr as it
    changes, and processes whose TLS stack is not probed named once each."""

    _EVERY_S = 2.0  # like the node agent's reconcile: processes that start later are picked up

    def __init__(self, tracker: tls.Tracker | None, directories: list[pathlib.Path], pids: list[int]) -> None:
        self._tracker, self._directories, self._pids = tracker, directories, pids
        self._next = 0.0
        self._reported: set[str] = set()

    def follow(self, tls_processes: collections.abc.Iterable[tuple[int, int]]) -> None:
        if self._tracker is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._EVERY_S
        traced = [*self._pids, *(pid for directory in self._directories for pid in cgroups.processes(directory))]
        self._tracker.sync(traced)
        lines = [f"pid {pid}: {state.describe()}" for pid in traced for state in self._tracker.libraries(pid)]
        lines += [f"pid {pid}: TLS connections through a TLS stack that is not probed (only OpenSSL with socket "
                  f"BIOs is): no spans for them"
                  for pid in self._tracker.unsupported(tls_processes)]
        for line in lines:
            if line not in self._reported:
                self._reported.add(line)
                print(f"podspan: TLS {line}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if not args.node:
        raise UsageError("no node name: pass --node NAME or set NODE_NAME")
    import podspan_agent.node_agent as node_agent  # deferred: pulls in the Kubernetes client

    if args.export_queue < 1:
        raise UsageError(f"--export-queue must be at least 1, got {args.export_queue}")
    if args.probe_retry <= 0:
        raise UsageError(f"--probe-retry must be positive, got {args.probe_retry}")
    _check_privileges()
    try:
        otlp_metrics.interval_from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    red_metrics = red.RedMetrics()
    collector = prometheus.Collector(red_metrics)
    endpoint = metrics_endpoint(args.metrics_address, args.metrics_port, collector) if args.metrics_port >= 0 else None
    if endpoint is not None:
        log.info("serving metrics at %s", endpoint.url)
    try:
        return node_agent.run(args.node, export_queue=args.export_queue, probe_retry_s=args.probe_retry,
                              red_metrics=red_metrics, collector=collector if endpoint else None)
    finally:
        if endpoint is not None:
            endpoint.close()


def metrics_endpoint(address: str, port: int, collector: prometheus.Collector) -> prometheus.Endpoint:
    """Start the Prometheus endpoint; a bad address or a port in use is a usage error."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--metrics-port must be 0..65535, got {port}")
    try:
        return prometheus.Endpoint(address, port, collector)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
