"""Reliability figures for docs/reliability.md, with the whole installation as separate processes on this
machine (podspan_demo.cluster: emulated API server, podspan-operator, podspan-agent run, OTLP receiver, the
sample shop as pods) under a steady request rate:

  outage        : the OTLP receiver stopped for --outage seconds: the agent's RSS over the outage, the spans
                  dropped and counted in the node status, the seconds until spans arrive after it returns
  agent-kill    : SIGKILL of the agent: its programs left in the kernel, seconds until a restarted agent has
                  its probes attached and spans arrive again
  operator-kill : SIGKILL of the operator right after a selector change, then a restart: seconds until the
                  node config converges, and how many NodeTraceConfig writes it took (generation increments)

Prints one table per scenario. Nothing is asserted (tests/e2e/local asserts the behaviour).
Run, as root (a few minutes plus the outage): `PYTHONPATH=. .venv/bin/python bench/reliability.py [--outage 300]
[--rate 50] [--scenarios outage,agent-kill,operator-kill]`.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from podspan_demo import cluster
from tests.support import bpftool

NS, PROFILE = "shop", "web"


class Load:
    """GETs to the frontend at a fixed rate on a background thread; counts answers by status."""

    def __init__(self, url: str, rate: float) -> None:
        self._url, self._interval = url, 1.0 / rate
        self.statuses: collections.Counter[int] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at, i = time.monotonic(), 0
        while not self._stop.is_set():
            i += 1
            try:
                self.statuses[cluster.http_get(f"{self._url}/users/{i % 1000 + 1}", timeout=5)] += 1
            except OSError:
                self.statuses[0] += 1
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _until(probe: Callable[[], Any], timeout: float = 120.0) -> float:
    """Seconds until probe() is truthy (inf if it never is)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(0.1)
    return float("inf")


def _counters(installation: cluster.LocalCluster) -> dict[str, Any]:
    profiles = installation.node_config().get("status", {}).get("profiles", [])
    return next((p for p in profiles if p["profile"] == f"TraceProfile/{NS}/{PROFILE}"), {})


def _span_count(installation: cluster.LocalCluster) -> int:
    return len(installation.spans())


def outage(installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod], args: argparse.Namespace) -> None:
    agent = psutil.Process(installation.components["agent"].pid)
    load = Load(shop["frontend"].url, args.rate)
    time.sleep(10)
    dropped_before = _counters(installation).get("spansDropped", 0)
    installation.components["receiver"].stop()
    rss = [agent.memory_info().rss]
    started = time.monotonic()
    while time.monotonic() - started < args.outage:
        time.sleep(1)
        rss.append(agent.memory_info().rss)
    spans_before = _span_count(installation)
    installation.start_receiver()
    recovery = _until(lambda: _span_count(installation) > spans_before)
    time.sleep(12)  # a status write after recovery
    load.stop()
    dropped = _counters(installation).get("spansDropped", 0) - dropped_before
    print(f"\n| receiver outage under {args.rate:g} req/s | value |\n|---|---|")
    print(f"| outage | {args.outage:.0f} s |")
    print(f"| requests answered / failed | {sum(v for k, v in load.statuses.items() if k)} / {load.statuses[0]} |")
    print(f"| agent RSS at start / max / end of outage | {rss[0] / 2**20:.0f} / {max(rss) / 2**20:.0f} / "
          f"{rss[-1] / 2**20:.0f} MB |")
    print(f"| spans dropped and counted (node status) | {dropped} |")
    print(f"| first span after the receiver returned | {recovery:.1f} s |")
    print(f"| agent still running | {agent.is_running()} |")


def agent_kill(installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod],
               args: argparse.Namespace) -> None:
    load = Load(shop["frontend"].url, args.rate)
    time.sleep(5)
    agent = installation.components["agent"]
    attached = bpftool.attached_programs(agent.pid)
    heartbeat = installation.node_config()["status"]["heartbeatTime"]
    agent.stop(signal.SIGKILL)
    freed = _until(lambda: not attached & bpftool.program_ids(), timeout=30)
    left = len(attached & bpftool.program_ids())
    spans_before = _span_count(installation)
    restarted_at = time.monotonic()
    installation.start_agent(*installation.agent_args)

    def reattached() -> bool:
        status = installation.node_config().get("status", {})
        return status.get("heartbeatTime") != heartbeat and {t["state"] for t in status.get("targets", [])} == {
            "attached"}

    attach = _until(reattached)
    _until(lambda: _span_count(installation) > spans_before)
    spans_at = time.monotonic() - restarted_at
    load.stop()
    print(f"\n| agent SIGKILL under {args.rate:g} req/s | value |\n|---|---|")
    print(f"| programs the killed agent had attached | {len(attached)} |")
    print(f"| of them left in the kernel after {freed:.1f} s | {left} |")
    print(f"| restart to targets attached in status | {attach:.1f} s |")
    print(f"| restart to the first new span | {spans_at:.1f} s |")


def operator_kill(installation: cluster.LocalCluster, shop: dict[str, cluster.ClusterPod],
                  args: argparse.Namespace) -> None:
    generation = installation.node_config()["metadata"]["generation"]
    installation.apply_profile(cluster.profile(PROFILE, NS, installation.otlp_endpoint,
                                               ["frontend", "backend", "other"]))
    time.sleep(0.05)  # mid-reconcile: the operator has seen the change, the node config may not be written
    installation.components["operator"].stop(signal.SIGKILL)
    installation.start_operator()
    converged = _until(lambda: len(installation.node_config()["spec"]["targets"]) == 3)
    time.sleep(20)  # any write storm would show in the generation
    writes = installation.node_config()["metadata"]["generation"] - generation
    ready = installation.condition(NS, PROFILE, "Ready")
    print("\n| operator SIGKILL right after a selector change | value |\n|---|---|")
    print(f"| restart to the node config converged | {converged:.1f} s |")
    print(f"| NodeTraceConfig writes for the change (generation increments, 20 s later) | {writes} |")
    print(f"| profile Ready | {ready[0]} ({ready[1]}) |")


SCENARIOS = {"outage": outage, "agent-kill": agent_kill, "operator-kill": operator_kill}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--rate", type=float, default=50.0, metavar="REQUESTS_PER_S")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    with tempfile.TemporaryDirectory(prefix="podspan-reliability-") as workdir, \
            cluster.LocalCluster(pathlib.Path(workdir)) as installation:
        shop = installation.run_shop(NS)
        installation.apply_profile(cluster.profile(PROFILE, NS, installation.otlp_endpoint, ["frontend", "backend"]))
        cluster.wait_for(lambda: installation.condition(NS, PROFILE, "Ready"), "Ready=True", timeout=60,
                         until=lambda c: c[0] == "True")
        print(f"installation ready in {workdir}; scenarios: {', '.join(chosen)}", file=sys.stderr)
        for name in chosen:
            SCENARIOS[name](installation, shop, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
