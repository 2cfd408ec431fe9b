"""Operator benchmark: 1,000 emulated pods on 100 nodes, the real operator process, 100 scripted agents.

The API is agent/podspan_demo/k8s_api_emulator.py on loopback; the operator is `python -m podspan_operator.cli
--standalone` in its own process (so its RSS is its own); a watcher thread plays the 100 node agents: it
writes each NodeTraceConfig's status (all containers attached) whenever that config's spec changes, and
records when each spec change arrived. Measured:
  (a) seconds from applying a TraceProfile that selects all 1,000 pods to Ready with 100/100 nodes;
  (b) latency from a pod label change to the change being visible in its node's config, p50/p99;
  (c) operator API writes per label change (NodeTraceConfig + profile status + Events);
  (d) operator RSS (peak of samples).
Nothing is asserted; the script prints the results. Run: `.venv/bin/python bench/operator_bench.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil
import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from podspan_api import models  # noqa: E402
from podspan_demo import k8s_api_emulator as emu  # noqa: E402

NTC = "podspan.dev/v1alpha1/nodetraceconfigs"
TP = "podspan.dev/v1alpha1/traceprofiles"
OPERATOR_AGENTS = ("kopf", "OpenAPI-Generator")  # User-Agent products of the operator's two clients


class Agents(threading.Thread):
    """Every node's agent at once: report status on spec changes; remember when each node's spec changed."""

    def __init__(self, url: str):
        super().__init__(daemon=True, name="agents")
        self.url = url
        self.kc = emu.KubeClient(url)
        self.changed = threading.Condition()
        self.targets: dict[str, tuple[float, set[str]]] = {}  # node -> (arrival time, pod names)
        self._reported: dict[str, int] = {}

    def run(self) -> None:
        path = self.url + emu.KubeClient.path(NTC)
        with requests.get(path, params={"watch": "true"}, stream=True, timeout=None) as response:
            for line in response.iter_lines():
                event = json.loads(line)
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._observe(event["object"])

    def _observe(self, body: dict[str, Any]) -> None:
        config = models.NodeTraceConfig.model_validate(body)
        name, generation = config.metadata.name, config.metadata.generation or 0
        if self._reported.get(name) == generation:
            return  # a status update of ours
        with self.changed:
            self.targets[name] = (time.monotonic(), {t.name for t in config.spec.targets})
            self.changed.notify_all()
        self._reported[name] = generation
        status = models.NodeTraceConfigStatus(
            observed_generation=generation, heartbeat_time=time.time(), header_source="host",
            targets=[models.TargetStatus(pod_uid=t.uid, container=c.name, state=models.TargetState.ATTACHED)
                     for t in config.spec.targets for c in t.containers],
            profiles=[models.ProfileCounters(profile=p.key) for p in config.spec.profiles])
        self.kc.patch(NTC, name, {"status": status.to_k8s()}, subresource="status")

    def wait_until(self, node: str, predicate: Any, timeout: float = 30.0) -> float:
        """Arrival time of the first spec of `node` whose pod names satisfy predicate."""
        with self.changed:
            ok = self.changed.wait_for(lambda: node in self.targets and predicate(self.targets[node][1]), timeout)
            if not ok:
                raise TimeoutError(f"node {node} never reached the expected targets")
            return self.targets[node][0]


def operator_writes(api: emu.EmulatorThread) -> int:
    assert api.emulator is not None
    return sum(n for (agent, _), n in api.emulator.writes.items() if agent in OPERATOR_AGENTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=200, help="label changes to time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, emu.EmulatorThread(kubeconfig=pathlib.Path(tmp, "kc")) as api:
        kc = emu.KubeClient(api.url)
        kc.ensure_namespace("bench")
        for n in range(args.nodes):
            kc.create_node(f"node-{n:03d}")
        for i in range(args.pods):
            name, node = f"web-{i:04d}", f"node-{i % args.nodes:03d}"
            pod = kc.create_pod(name, "bench", {"app": "web"}, node)
            kc.mark_pod_running(name, "bench", pod["metadata"]["uid"].replace("-", "") * 2, ip="127.0.0.1")
        print(f"cluster: {args.pods} pods on {args.nodes} nodes", flush=True)

        env = {**os.environ, "KUBECONFIG": str(api.kubeconfig)}
        started = time.monotonic()
        log = open(pathlib.Path(tmp, "operator.log"), "wb")  # noqa: SIM115  (closed with the directory)
        operator = subprocess.Popen([sys.executable, "-m", "podspan_operator.cli", "--standalone"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(operator.pid)
        rss_peak = 0
        try:
            agents = Agents(api.url)
            agents.start()
            for n in range(args.nodes):
                agents.wait_until(f"node-{n:03d}", lambda pods: True)
            startup = time.monotonic() - started

            # (a) apply -> Ready on every node
            t0 = time.monotonic()
            kc.create(TP, {"apiVersion": models.API_VERSION, "kind": "TraceProfile",
                           "metadata": {"name": "web", "namespace": "bench"},
                           "spec": {"selector": {"matchLabels": {"app": "web"}},
                                    "export": {"otlp": {"endpoint": "http://127.0.0.1:4317"}}}})
            while True:
                status = (kc.get(TP, "web", "bench") or {}).get("status") or {}
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
                if ready and status["nodes"] == {"ready": args.nodes, "total": args.nodes}:
                    break
                time.sleep(0.01)
            apply_to_ready = time.monotonic() - t0
            rss_peak = max(rss_peak, proc.memory_info().rss)

            # (b, c) label changes: move one pod out of the profile, then back in, and so on
            writes_before = operator_writes(api)
            latencies = []
            for k in range(args.changes):
                i = k // 2 % args.pods
                name, node = f"web-{i:04d}", f"node-{i % args.nodes:03d}"
                leaving = k % 2 == 0
                t = time.monotonic()
                kc.patch("v1/pods", name, {"metadata": {"labels": {"app": "other" if leaving else "web"}}}, "bench")
                arrived = agents.wait_until(node, lambda pods, n=name, out=leaving: (n not in pods) == out)
                latencies.append(arrived - t)
                rss_peak = max(rss_peak, proc.memory_info().rss)
            time.sleep(1.0)  # let the status writes of the last change land before counting
            writes = operator_writes(api) - writes_before
        except BaseException:
            log.flush()
            print(pathlib.Path(tmp, "operator.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            operator.terminate()
            operator.wait(30)
            log.close()

    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"operator startup (first pass over {args.nodes} nodes): {startup:.2f} s")
    print(f"apply -> Ready ({args.pods} pods, {args.nodes}/{args.nodes} nodes): {apply_to_ready:.2f} s")
    print(f"label change -> node config ({len(latencies)} changes): p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    print(f"operator API writes per label change: {writes / len(latencies):.2f}")
    print(f"operator RSS (peak of samples): {rss_peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
