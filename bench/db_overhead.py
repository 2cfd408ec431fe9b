"""Database tracing overhead: redis-benchmark and pgbench against real servers, untraced vs traced,
in one run on one machine.

redis-server and PostgreSQL (tests.support.db_servers) run in cgroup "pods"; the load tools run in one
more pod (joined `kubectl exec`-style, so the agent can select it before they start). In the traced arm
the real agent CLI (bench/harness.py: `podspan_agent.cli trace --cgroup ...`, OTLP/gRPC to a separate
podspan_demo.otlp_receiver process) selects the pods chosen by `--trace`: the servers (default), the
load tools, or both. Order: untraced, traced, untraced again; the baseline is the mean of
the two untraced arms. Per arm:
  redis: `redis-benchmark -c 16 -n N -t set,get --csv` (throughput, p50, p99 as the tool reports them);
  PostgreSQL: `pgbench -S -M prepared -c 8 -j 2 -T D` after `pgbench -i -s 1`, with per-transaction
  latencies logged (`-l`) for p50/p99.
During the traced arm: in-kernel BPF time per request (`kernel.bpf_stats_enabled`, restored afterwards)
and the agent's CPU per tool, its final `podspan: done` totals and what the receiver got.
Nothing is asserted; the script prints a table and exits 0. Run (root, from the repository root):
`PYTHONPATH=. .venv/bin/python bench/db_overhead.py [--requests 200000] [--duration 10] [--trace server]`.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import functools
import glob
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import harness

from podspan_demo import pods
from tests.support import db_servers

PHASES = ("untraced1", "traced", "untraced2")
Result = dict[str, float]


def run_in_pod(pod: pods.Pod, name: str, argv: list[str], log: pathlib.Path) -> str:
    """Like `kubectl exec`: run a load tool to completion inside an existing pod's cgroup; its output."""
    wrapper = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(pod.cgroup_dir), *argv]
    with log.open("wb") as out:
        code = subprocess.run(wrapper, stdout=out, stderr=subprocess.STDOUT, timeout=600).returncode
    output = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{name} exited with {code}:\n{output[-2000:]}")
    return output


def redis_benchmark(loadgen: pods.Pod, server: db_servers.Server, requests: int,
                    log: pathlib.Path) -> dict[str, Result]:
    argv = ["redis-benchmark", "-h", server.host, "-p", str(server.port), "-c", "16", "-n", str(requests),
            "-t", "set,get", "--csv"]
    results: dict[str, Result] = {}
    # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
    for line in run_in_pod(loadgen, "redis-benchmark", argv, log).splitlines():
        fields = [field.strip('"') for field in line.split(",")]
        if len(fields) >= 7 and fields[0] in ("SET", "GET"):
            results[f"redis {fields[0]}"] = {"rps": float(fields[1]), "p50_ms": float(fields[4]),
                                             "p99_ms": float(fields[6]), "requests": float(requests)}
    if len(results) != 2:
        raise RuntimeError(f"cannot parse redis-benchmark output:\n{log.read_text()}")
    return results


def pgbench_argv(server: db_servers.Server, *args: str) -> list[str]:
    return ["env", f"PGPASSWORD={db_servers.PASSWORD}", "PGSSLMODE=disable", "pgbench", "-h", server.host,
            "-p", str(server.port), "-U", db_servers.USER, *args, db_servers.DATABASE]


def pgbench(loadgen: pods.Pod, server: db_servers.Server, duration: int, workdir: pathlib.Path,
            phase: str) -> dict[str, Result]:
    prefix = workdir / f"pgbench-latency-{phase}"
    argv = pgbench_argv(server, "-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", str(duration), "-l",
                        f"--log-prefix={prefix}")
    out = run_in_pod(loadgen, "pgbench", argv, workdir / f"pgbench-{phase}.out")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    if tps is None or done is None:
        raise RuntimeError(f"cannot parse pgbench output:\n{out}")
    # Per-transaction log lines: client_id transaction_no latency_us script_no epoch_s epoch_us.
    latencies = sorted(int(line.split()[2]) for path in glob.glob(f"{prefix}.*")
                       for line in pathlib.Path(path).read_text().splitlines())
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"pgbench -S": {"rps": float(tps.group(1)), "p50_ms": quantiles[49] / 1000,
                           "p99_ms": quantiles[98] / 1000, "requests": float(done.group(1))}}


@dataclasses.dataclass
class Agent:
    process: subprocess.Popen[str]
    stderr: harness.StderrReader
    program_ids: set[int]  # the BPF programs it loaded


def measured(agent: Agent | None, run: collections.abc.Callable[[], dict[str, Result]]) -> dict[str, Result]:
    """Run one load tool; with an agent, add its CPU and BPF run time over the run to the results."""
    if agent is None:
        return run()
    cpu0, bpf0 = harness.tree_cpu_seconds(agent.process.pid), harness.bpf_totals(agent.program_ids)
    results = run()
    bpf1 = harness.bpf_totals(agent.program_ids)
    time.sleep(1.5)  # let the agent drain what the run produced (its CPU counts)
    cpu = harness.tree_cpu_seconds(agent.process.pid) - cpu0
    total = sum(result["requests"] for result in results.values())
    for result in results.values():
        # A tool's tests share the window (redis SET and GET): split it by their requests.
        share = result["requests"] / total
        result["agent_cpu_s"] = cpu * share
        result["bpf_ns"] = (bpf1[0] - bpf0[0]) * share
    return results


def start_agent(cgroups: list[pathlib.Path], grpc_port: int) -> tuple[Agent, list[str]]:
    ids_before = set(harness.bpf_programs())
    command = harness.agent_command(cgroups, grpc_port)
    process, stderr, line = harness.start_agent(command)
    print(f"agent pid {process.pid} attached ({line})", flush=True)
    return Agent(process, stderr, set(harness.bpf_programs()) - ids_before), command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200_000, help="redis-benchmark requests per test")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--trace", choices=("server", "client", "both"), default="server",
                        help="which pods the traced arm selects")
    args = parser.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
                                                os.path.relpath(harness.PYTHON, harness.ROOT), *sys.argv])
    if os.geteuid() != 0:
        print("needs root (eBPF, cgroups)", file=sys.stderr)
        return 2
    try:
        db_servers.postgresql_bin()
        missing = [tool for tool in ("redis-server", "redis-benchmark", "pgbench") if shutil.which(tool) is None]
    except db_servers.Unavailable as exc:
        missing = [str(exc)]
    if missing:
        print(f"cannot run, not installed: {', '.join(missing)} (scripts/setup.sh installs them)", file=sys.stderr)
        return 2

    runner = pods.PodRunner()
    stats_before = harness.STATS_SYSCTL.read_text().strip()
    results: dict[str, dict[str, Result]] = {}
    text: dict[str, str] = {}
    agent_cmd: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="podspan-dbbench-")))
            redis = stack.enter_context(db_servers.redis(db_servers.spawn_in_pod(runner)))
            postgresql = stack.enter_context(db_servers.postgresql(db_servers.spawn_in_pod(runner)))
            subprocess.run(pgbench_argv(postgresql, "-i", "-s", "1", "-q"), check=True, capture_output=True)
            server_cgroups = [pod.cgroup_dir for pod in runner.pods]
            # Every load tool runs in this one pod, so the agent can select it before they start.
            loadgen = runner.start("loadgen", ["sleep", "infinity"])
            selected = {"server": server_cgroups, "client": [loadgen.cgroup_dir],
                        "both": [*server_cgroups, loadgen.cgroup_dir]}[args.trace]
            print(f"redis-server pid {redis.pid} on port {redis.port}; postgres pid {postgresql.pid} on port "
                  f"{postgresql.port}", flush=True)
            receiver, receiver_stderr, grpc_port = harness.start_receiver()
            stack.callback(harness.stop_process, receiver)

            redis_benchmark(loadgen, redis, args.requests // 10, workdir / "warmup.out")
            for phase in PHASES:
                agent = None
                if phase == "traced":
                    agent, agent_cmd = start_agent(selected, grpc_port)
                    stack.callback(harness.stop_process, agent.process)
                    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
                steal0 = harness.cpu_steal_idle()
                results[phase] = measured(agent, functools.partial(
                    redis_benchmark, loadgen, redis, args.requests, workdir / f"redis-{phase}.out"))
                results[phase] |= measured(agent, functools.partial(
                    pgbench, loadgen, postgresql, args.duration, workdir, phase))
                steal1 = harness.cpu_steal_idle()
                text[f"steal {phase}"] = f"{100 * (steal1[0] - steal0[0]) / max(1, steal1[2] - steal0[2]):.1f}"
                if agent is not None:
                    subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={stats_before}"], check=True)
                    text["agent rss"] = f"{harness.tree_rss_bytes(agent.process.pid) / 2**20:.0f}"
                    # An agent that fell behind drains its backlog before it prints its totals.
                    text["done"] = harness.final_line(agent.process, agent.stderr, "podspan: done", timeout=180)
                for workload, result in results[phase].items():
                    print(f"{phase:9s} {workload:11s} {result['rps']:9.0f} req/s  p50 {result['p50_ms']:.3f} ms  "
                          f"p99 {result['p99_ms']:.3f} ms", flush=True)
            text["received"] = harness.final_line(receiver, receiver_stderr, "received")
    finally:
        runner.stop_all()
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={stats_before}"], check=True)
    report(results, text, args, command, agent_cmd)
    return 0


def report(results: dict[str, dict[str, Result]], text: dict[str, str], args: argparse.Namespace,
           command: str, agent_cmd: list[str]) -> None:
    traced = results["traced"]
    lines = [
        "| workload | untraced req/s (mean; arm 1 / 2) | traced req/s | ratio | p50 ms untraced → traced "
        "| p99 ms untraced → traced | BPF ns/req | requests per agent-CPU-s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload, t in traced.items():
        u1, u2 = results["untraced1"][workload], results["untraced2"][workload]
        base = {key: (u1[key] + u2[key]) / 2 for key in ("rps", "p50_ms", "p99_ms")}
        per_cpu = f"{t['requests'] / t['agent_cpu_s']:.0f}" if t.get("agent_cpu_s") else "n/a"
        lines.append(
            f"| {workload} | {base['rps']:.0f} ({u1['rps']:.0f} / {u2['rps']:.0f}) | {t['rps']:.0f} "
            f"| **{t['rps'] / base['rps']:.3f}** | {base['p50_ms']:.3f} → {t['p50_ms']:.3f} "
            f"| {base['p99_ms']:.3f} → {t['p99_ms']:.3f} | {t['bpf_ns'] / t['requests']:.0f} | {per_cpu} |")
    harness.print_run_header(command, agent_cmd, "servers, load tools, the agent and the OTLP receiver")
    print(f"traced pods: {args.trace}; agent RSS at end {text['agent rss']} MB")
    print("agent final: " + text["done"])
    print("receiver: " + text["received"])
    print("CPU steal % per arm: " + ", ".join(f"{p}={text[f'steal {p}']}" for p in PHASES))
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
