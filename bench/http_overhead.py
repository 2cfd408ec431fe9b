"""HTTP/1.1 tracing overhead on nginx (or a Go HTTPS server): untraced vs traced, in one run on one machine.

nginx runs in its own cgroup "pod" (podspan_demo.pods.PodRunner); the agent is the real CLI
(`python -m podspan_agent.cli trace --cgroup ...`) exporting OTLP/gRPC to a local receiver process
(podspan_demo.otlp_receiver). Order: untraced, traced, untraced again; the untraced baseline is the
mean of the two untraced runs. Per arm:
  (a) saturation throughput: `wrk -t1 -c16 -d10s http://127.0.0.1:PORT/`;
  (b) latency at a fixed rate: bench/openloop.c (an open-loop HTTP/1.1 client in C, one thread, epoll;
      compiled with gcc into bench/.build/ when missing or older than the source), GET / at --rate req/s
      spread round-robin over --connections keep-alive connections after 1 s of warm-up, latency from
      each request's scheduled send time to the end of its response (no coordinated omission):
      p50/p99/p99.9 and their difference to the untraced mean (targets at 2,000 req/s: p50 ≤ +10 µs,
      p99 ≤ +50 µs);
  (c) agent CPU during the traced wrk run -> traced requests per agent-CPU-second, agent RSS;
  (d) in-kernel cost per request from `kernel.bpf_stats_enabled` (restored afterwards);
  (e) the agent's final `podspan: done` totals (spans, dropped, events lost).
With --tls nginx serves HTTPS (a self-signed certificate; TLS 1.2, nginx 1.22's default; keep-alive) and wrk
requests https://: the agent reads the plaintext with its OpenSSL uprobes. The fixed-rate latency client
speaks plain HTTP only, so (b) is skipped; the uprobes also fire in wrk (untraced, same libssl), whose
cost is part of what the throughput ratio shows.
With --go the server is tests/support/gotls's Go HTTPS server (crypto/tls, TLS 1.3, HTTP/1.1, built with
Debian's Go into the run's temporary directory) instead of nginx, and the agent reads it through its Go
crypto/tls uprobes; wrk is untraced OpenSSL (its libssl is not probed: no traced process maps it).
wrk, nginx, the agent, the receiver and the latency client all share the machine's cores.
Nothing is asserted; the script prints a table and exits 0.
Run (root): `.venv/bin/python bench/http_overhead.py [--duration 10] [--rate 2000] [--connections 4] [--tls|--go]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time

import harness

from podspan_demo import pods, servers

sys.path.insert(0, str(harness.ROOT))  # for tests.support: the Go server's source and its build
from tests.support import go_programs

HOST = harness.HOST


# ---------------------------------------------------------------- wrk


def run_wrk(port: int, duration: int, scheme: str = "http") -> dict[str, float]:
    cmd = ["wrk", "-t1", "-c16", f"-d{duration}s", f"{scheme}://{HOST}:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


# ---------------------------------------------------------------- fixed-rate latency client (bench/openloop.c)

OPENLOOP_SOURCE = harness.ROOT / "bench" / "openloop.c"
OPENLOOP_BINARY = harness.ROOT / "bench" / ".build" / "openloop"  # gitignored
LATENCY_PATH = "/"  # nginx's static file, the same URL as the wrk runs
LATENCY_WARMUP_S = 1.0  # sent at the same rate before the measured window, not recorded


def build_openloop() -> pathlib.Path:
    """Compile bench/openloop.c with gcc (installed by scripts/setup.sh) when the binary is missing or older
    than the source; via a temporary file and a rename, so a concurrent run never sees half a binary."""
    binary = OPENLOOP_BINARY
    if binary.exists() and binary.stat().st_mtime >= OPENLOOP_SOURCE.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f".{binary.name}.{os.getpid()}")
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", str(tmp), str(OPENLOOP_SOURCE)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise RuntimeError("gcc not found (scripts/setup.sh installs it)") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"compiling {OPENLOOP_SOURCE} failed:\n{exc.stderr}") from exc
    os.replace(tmp, binary)
    return binary


def fixed_rate_latency(binary: pathlib.Path, port: int, rate: float, duration: float,
                       connections: int) -> dict[str, float]:
    """bench/openloop.c: open loop, request i due at t0 + i/rate on keep-alive connection i % connections
    (one thread, epoll). Latency runs from the scheduled time (a late send counts against the server: no
    coordinated omission) to the end of the response. Its exit code 1 (errors, timeouts) is reported, not
    raised; no result line at all is an error."""
    cmd = [str(binary), "--host", HOST, "--port", str(port), "--path", LATENCY_PATH, "--rate", f"{rate:g}",
           "--duration", f"{duration:g}", "--connections", str(connections), "--warmup", f"{LATENCY_WARMUP_S:g}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + LATENCY_WARMUP_S + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("openloop: ")), None)
    if done.returncode not in (0, 1) or line is None:
        raise RuntimeError(f"openloop failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    fields = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.e+]+)", line)}
    return {
        "p50_us": fields["p50_us"],
        "p99_us": fields["p99_us"],
        "p999_us": fields["p999_us"],
        "max_us": fields["max_us"],
        "mean_us": fields["mean_us"],
        "count": fields["completed"],
        "scheduled": fields["scheduled"],
        "warmup": fields["warmup"],
        "lat_incomplete": fields["scheduled"] - fields["completed"],
        "lat_errors": fields["errors"] + fields["timeouts"],
        "lat_non2xx": fields["non2xx"],
        "late": fields["late_sends"],
    }


def latency_run(binary: pathlib.Path, port: int, args: argparse.Namespace) -> dict[str, float]:
    """The fixed-rate run, or (HTTPS: the client speaks plain HTTP only) the same fields, all NaN."""
    if args.tls:
        return dict.fromkeys(("p50_us", "p99_us", "p999_us", "max_us", "mean_us", "count", "scheduled", "warmup",
                              "lat_incomplete", "lat_errors", "lat_non2xx", "late"), float("nan"))
    return fixed_rate_latency(binary, port, args.rate, args.duration, args.connections)


# ---------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run and per latency run")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="requests/s of the fixed-rate latency run (bench/openloop.c)")
    parser.add_argument("--connections", type=int, default=4,
                        help="keep-alive connections of the latency client (the rate is spread round-robin)")
    parser.add_argument("--tls", action="store_true",
                        help="HTTPS: nginx with TLS, wrk on https:// (no fixed-rate latency run)")
    parser.add_argument("--go", action="store_true", help="HTTPS to a Go crypto/tls server instead of nginx")
    args = parser.parse_args(argv)
    args.tls = args.tls or args.go
    scheme = "https" if args.tls else "http"
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(harness.PYTHON, harness.ROOT), *sys.argv])
    if os.geteuid() != 0:
        print("needs root (eBPF, cgroups)", file=sys.stderr)
        return 2

    openloop = build_openloop()
    runner = pods.PodRunner()
    workdir = tempfile.TemporaryDirectory(prefix="podspan-bench-")
    root = pathlib.Path(workdir.name)
    receiver: subprocess.Popen[str] | None = None
    agent: subprocess.Popen[str] | None = None
    stats_before = harness.STATS_SYSCTL.read_text().strip()
    results: dict[str, dict[str, float]] = {}
    agent_info: dict[str, float] = {}
    agent_text: dict[str, str] = {}
    agent_cmd: list[str] = []
    try:
        port = servers.free_port(HOST)
        certificate = servers.self_signed_certificate(root) if args.tls else None
        if args.go and certificate:
            server = [str(go_programs.build(root).unstripped), "server", str(port), *map(str, certificate)]
        else:
            conf = servers.nginx_config(root, HOST, port, tls=certificate)
            server = ["/usr/sbin/nginx", "-c", str(conf), "-p", str(root)]
        pod = runner.start("server", server, log_path=root / "server.out")
        pods.wait_for_port(HOST, port)
        print(f"{pathlib.Path(server[0]).name} pid {pod.pid} on {HOST}:{port}, cgroup {pod.cgroup_dir}", flush=True)

        receiver, receiver_reader, grpc_port = harness.start_receiver()
        print(f"OTLP receiver pid {receiver.pid}, grpc port {grpc_port}", flush=True)

        run_wrk(port, 2, scheme)  # warm-up
        for phase in ("untraced1", "traced", "untraced2"):
            steal0 = harness.cpu_steal_idle()
            if phase == "traced":
                ids_before = set(harness.bpf_programs())
                agent_cmd = harness.agent_command([pod.cgroup_dir], grpc_port)
                started = time.monotonic()
                agent, agent_reader, line = harness.start_agent(agent_cmd)
                agent_info["startup_wall_s"] = time.monotonic() - started
                attached = re.search(r"attached in ([\d.]+)s", line)
                agent_info["attach_s"] = float(attached.group(1)) if attached else float("nan")
                print(f"agent pid {agent.pid} attached ({line})", flush=True)
                time.sleep(1.0)
                # After the agent's first ticks: the TLS uprobe programs load when it attaches to libssl.
                agent_ids = set(harness.bpf_programs()) - ids_before
                agent_info["programs"] = float(len(agent_ids))
                agent_info["cpu_attached_s"] = harness.tree_cpu_seconds(agent.pid)
                subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
                cpu0 = harness.tree_cpu_seconds(agent.pid)
                bpf0 = harness.bpf_totals(agent_ids)
                wrk = run_wrk(port, args.duration, scheme)
                bpf1 = harness.bpf_totals(agent_ids)
                time.sleep(1.5)  # let the agent drain what the window produced (its CPU counts)
                cpu1 = harness.tree_cpu_seconds(agent.pid)
                agent_info["cpu_s"] = cpu1 - cpu0
                agent_info["bpf_ns"] = float(bpf1[0] - bpf0[0])
                agent_info["bpf_runs"] = float(bpf1[1] - bpf0[1])
                lat_bpf0 = harness.bpf_totals(agent_ids)
                latency = latency_run(openloop, port, args)
                lat_bpf1 = harness.bpf_totals(agent_ids)
                agent_info["lat_bpf_ns"] = float(lat_bpf1[0] - lat_bpf0[0])
                subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={stats_before}"], check=True)
                time.sleep(1.5)
                agent_info["rss_mb"] = harness.tree_rss_bytes(agent.pid) / 2**20
                agent_info["cpu_traced_s"] = harness.tree_cpu_seconds(agent.pid) - agent_info["cpu_attached_s"]
                agent_text["done"] = harness.final_line(agent, agent_reader, "podspan: done")
                agent_info["exit"] = float(agent.returncode)
                agent = None
            else:
                wrk = run_wrk(port, args.duration, scheme)
                latency = latency_run(openloop, port, args)
            steal1 = harness.cpu_steal_idle()
            elapsed = max(1, steal1[2] - steal0[2])
            results[phase] = {**wrk, **latency, "steal_pct": 100 * (steal1[0] - steal0[0]) / elapsed,
                              "idle_pct": 100 * (steal1[1] - steal0[1]) / elapsed}
            print(f"{phase:9s}: wrk {wrk['rps']:9.0f} req/s ({wrk['requests']:.0f} requests)  "
                  f"p50 {latency['p50_us']:7.1f} µs  p99 {latency['p99_us']:7.1f} µs  "
                  f"p99.9 {latency['p999_us']:7.1f} µs  ({latency['count']:.0f} requests at {args.rate:.0f}/s "
                  f"on {args.connections} connections, {latency['late']:.0f} sent >1 ms late, "
                  f"{latency['lat_incomplete']:.0f} not completed)",
                  flush=True)

        agent_text["received"] = harness.final_line(receiver, receiver_reader, "received")
        receiver = None
    finally:
        if agent is not None:
            harness.stop_process(agent)
        if receiver is not None:
            harness.stop_process(receiver)
        runner.stop_all()
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={stats_before}"], check=True)
        workdir.cleanup()

    report(results, agent_info, agent_text, args, command, agent_cmd)
    return 0


def report(results: dict[str, dict[str, float]], agent: dict[str, float], text: dict[str, str],
           args: argparse.Namespace, command: str, agent_cmd: list[str]) -> None:
    base = {k: (results["untraced1"][k] + results["untraced2"][k]) / 2 for k in results["traced"]}
    traced = results["traced"]
    cpu = agent["cpu_s"]
    u1, u2 = results["untraced1"], results["untraced2"]
    requests = traced["requests"]
    lat_requests = traced["count"] + traced["warmup"]

    def row(name: str, untraced: str, traced_value: str, derived: str, target: str) -> str:
        return f"| {name} | {untraced} | {traced_value} | {derived} | {target} |"

    lines = [
        "| metric | untraced (mean of 2) | traced | traced vs untraced | target |",
        "|---|---|---|---|---|",
        row("wrk -t1 -c16 throughput (req/s)",
            f"{base['rps']:.0f} ({u1['rps']:.0f} / {u2['rps']:.0f})",
            f"{traced['rps']:.0f}", f"ratio {traced['rps'] / base['rps']:.3f}", "≥ 0.95"),
        row(f"p50 at {args.rate:.0f} req/s (µs)",
            f"{base['p50_us']:.1f} ({u1['p50_us']:.1f} / {u2['p50_us']:.1f})",
            f"{traced['p50_us']:.1f}", f"{traced['p50_us'] - base['p50_us']:+.1f} µs", "≤ +10 µs"),
        row(f"p99 at {args.rate:.0f} req/s (µs)",
            f"{base['p99_us']:.1f} ({u1['p99_us']:.1f} / {u2['p99_us']:.1f})",
            f"{traced['p99_us']:.1f}", f"{traced['p99_us'] - base['p99_us']:+.1f} µs", "≤ +50 µs"),
        row(f"p99.9 at {args.rate:.0f} req/s (µs)",
            f"{base['p999_us']:.1f} ({u1['p999_us']:.1f} / {u2['p999_us']:.1f})",
            f"{traced['p999_us']:.1f}", f"{traced['p999_us'] - base['p999_us']:+.1f} µs", "-"),
        row("in-kernel BPF time per request (wrk window)", "-",
            f"{agent['bpf_ns']:.0f} ns / {requests:.0f} req",
            f"{agent['bpf_ns'] / requests:.0f} ns/req ({agent['bpf_runs'] / requests:.1f} prog runs/req)",
            "≤ 1000 ns"),
        row("in-kernel BPF time per request (fixed-rate window)", "-",
            f"{agent['lat_bpf_ns']:.0f} ns / {lat_requests:.0f} req (incl. warm-up)",
            f"{agent['lat_bpf_ns'] / lat_requests:.0f} ns/req", "≤ 1000 ns"),
        row("agent CPU during traced wrk run (+1.5 s drain)", "-", f"{cpu:.2f} s",
            f"{requests / cpu:.0f} req per agent-CPU-s" if cpu > 0 else "n/a", "≥ 50000"),
        row("agent RSS at end (MB)", "-", f"{agent['rss_mb']:.0f}", "", "≤ 150"),
        row("agent compile + attach (s)", "-",
            f"{agent['attach_s']:.1f} (process start to attached: {agent['startup_wall_s']:.1f})", "", "≤ 3"),
    ]
    harness.print_run_header(command, agent_cmd, "wrk, nginx, the agent, the OTLP receiver and the latency client")
    print(f"agent BPF programs: {agent['programs']:.0f}; agent exit code {agent['exit']:.0f}")
    print("agent final: " + text["done"])
    spans = re.search(r"(\d+) spans ", text["done"])
    if spans and agent["cpu_traced_s"] > 0:
        print(f"agent spans per agent-CPU-s while attached (excl. compile, incl. idle/drain): "
              f"{int(spans.group(1)) / agent['cpu_traced_s']:.0f} ({spans.group(1)} spans, "
              f"{agent['cpu_traced_s']:.2f} CPU-s)")
    print("receiver: " + text["received"])
    print("non-2xx in wrk runs: " + ", ".join(f"{k}={v['non2xx']:.0f}" for k, v in results.items()))
    print("CPU steal / idle % per phase: "
          + ", ".join(f"{k}={v['steal_pct']:.1f}/{v['idle_pct']:.1f}" for k, v in results.items()))
    print(f"fixed-rate latency client: bench/openloop.c, GET {LATENCY_PATH} at {args.rate:.0f} req/s on "
          f"{args.connections} keep-alive connections, {args.duration} s after {LATENCY_WARMUP_S:g} s of warm-up; "
          "latency from each request's scheduled send time")
    print("fixed-rate sends >1 ms late: " + ", ".join(f"{k}={v['late']:.0f}" for k, v in results.items()))
    print("fixed-rate not completed / errors / non-2xx: "
          + ", ".join(f"{k}={v['lat_incomplete']:.0f}/{v['lat_errors']:.0f}/{v['lat_non2xx']:.0f}"
                      for k, v in results.items()))
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
