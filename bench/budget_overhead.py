"""The overhead budget at saturated nginx: throughput with the agent under `--cpu-budget` against untraced, the agent's
measured cost against the budget, and whether every request is counted.

nginx runs in a cgroup "pod"; the agent is the real CLI (`podspan-agent trace --cgroup ... --cpu-budget PERCENT
--metrics-port ...`) exporting OTLP/gRPC to a local receiver process. Order: untraced, traced, untraced again (the
baseline is their mean). Per arm `wrk -t1 -c16 -d{duration}s` on `/` (as bench/http_overhead.py). In the traced arm:
the agent's CPU (its process tree, psutil) plus the run time of its BPF programs (bpftool; the agent keeps the
kernel's run-time accounting on while it has a budget) over the wrk window, in percent of one CPU, against the budget;
the agent's own view of its cost and captured fraction (its final line); then, scraped from its /metrics once it has
drained: the RED request count, spans and skipped exchanges. Exact counting means RED = spans + skipped, and RED = wrk's
completed requests plus at most the 16 requests in flight when wrk stops.
Nothing is asserted; it prints the numbers and exits 0.
Run (root): `.venv/bin/python bench/budget_overhead.py [--duration 10] [--cpu-budget 5]`.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile
import time
import urllib.request

import harness
import http_overhead
from prometheus_client import parser

from podspan_demo import pods, servers

HOST = harness.HOST


def scrape(port: int) -> dict[str, float]:
    """Sample name -> the sum over its series."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def main(argv: list[str] | None = None) -> int:
    parser_ = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser_.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser_.add_argument("--cpu-budget", type=float, default=5.0, help="the agent's budget, percent of one CPU")
    args = parser_.parse_args(argv)
    command = " ".join(["bench/budget_overhead.py", *(argv if argv is not None else sys.argv[1:])])
    runner = pods.PodRunner()
    with tempfile.TemporaryDirectory(prefix="podspan-budget-") as workdir:
        root = pathlib.Path(workdir)
        receiver = agent = None
        try:
            port, metrics_port = servers.free_port(HOST), servers.free_port(HOST)
            conf = servers.nginx_config(root, HOST, port)
            pod = runner.start("nginx", ["/usr/sbin/nginx", "-c", str(conf), "-p", str(root)],
                               log_path=root / "nginx.out")
            pods.wait_for_port(HOST, port)
            receiver, receiver_reader, grpc_port = harness.start_receiver()
            http_overhead.run_wrk(port, 2)  # warm-up
            untraced = [http_overhead.run_wrk(port, args.duration)["rps"]]
            ids_before = set(harness.bpf_programs())
            agent_cmd = [*harness.agent_command([pod.cgroup_dir], grpc_port), "--cpu-budget", str(args.cpu_budget),
                         "--metrics-port", str(metrics_port), "--metrics-address", HOST]
            agent, agent_reader, _ = harness.start_agent(agent_cmd)
            time.sleep(2.0)
            agent_ids = set(harness.bpf_programs()) - ids_before
            cpu0, bpf0 = harness.tree_cpu_seconds(agent.pid), harness.bpf_totals(agent_ids)[0]
            started = time.monotonic()
            traced = http_overhead.run_wrk(port, args.duration)
            elapsed = time.monotonic() - started
            cpu1, bpf1 = harness.tree_cpu_seconds(agent.pid), harness.bpf_totals(agent_ids)[0]
            time.sleep(3.0)  # the agent drains and folds the last counts (once a second)
            metrics = scrape(metrics_port)
            budget_line = harness.final_line(agent, agent_reader, "podspan: budget")
            agent = None
            untraced.append(http_overhead.run_wrk(port, args.duration)["rps"])
            received = harness.final_line(receiver, receiver_reader, "received")
            receiver = None
        finally:
            for process in (agent, receiver):
                if process is not None:
                    harness.stop_process(process)
            runner.stop_all()
    harness.print_run_header(command, agent_cmd, "wrk, nginx, the agent and the OTLP receiver")
    baseline = sum(untraced) / 2
    userspace = 100 * (cpu1 - cpu0) / elapsed
    in_kernel = 100 * (bpf1 - bpf0) / 1e9 / elapsed
    red = metrics.get("http_server_request_duration_seconds_count", 0.0)
    spans = metrics.get("podspan_agent_spans_total", 0.0)
    skipped = metrics.get("podspan_agent_exchanges_skipped_total", 0.0)
    print(f"throughput: untraced {untraced[0]:.0f} / {untraced[1]:.0f} req/s, traced {traced['rps']:.0f} req/s: "
          f"ratio {traced['rps'] / baseline:.3f}")
    print(f"agent cost during wrk: {userspace:.2f}% userspace + {in_kernel:.2f}% BPF = {userspace + in_kernel:.2f}% "
          f"of one CPU, budget {args.cpu_budget:g}%")
    print(f"agent's own view: {budget_line}")
    print(f"counts: wrk {traced['requests']:.0f} completed; RED {red:.0f}; spans {spans:.0f} + skipped {skipped:.0f} "
          f"= {spans + skipped:.0f} (exact: {red == spans + skipped}); RED - wrk = {red - traced['requests']:.0f} "
          f"(in flight at wrk's end, at most 16); uncounted "
          f"{metrics.get('podspan_agent_exchanges_uncounted_total', 0.0):.0f}")
    received = re.sub(r"\s+", " ", received)
    print(f"receiver: {received}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
