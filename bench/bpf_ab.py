"""In-kernel cost per HTTP/1.1 request of two BPF source trees, alternating on one nginx: A/B for capture changes.

nginx (configured as in bench/http_overhead.py: a static file at `/`, `return 200` at `/api/`; `--path`) runs
in a cgroup "pod". Per round and per tree: the capture program is compiled from that tree (`PODSPAN_BPF_DIR`),
attached to the pod's cgroup, its ring buffer drained by a thread (no parsing: only the kernel side is measured); with
`kernel.bpf_stats_enabled=1` (restored afterwards) `wrk -t1 -c4 -d{duration}s` runs, and the run time of the
programs that appeared with the load is divided by wrk's request count. Then the pod is deselected and wrk
runs again for `--unselected-duration` seconds: every process is unselected there, so the programs' cost per
syscall is what an unselected process pays. The trees alternate, so slow drift of a shared machine hits both.
Nothing is asserted; it prints one line per run, then per tree the medians and a per-program breakdown
(ns per run, runs per request, ns per request; and ns per syscall while unselected).

Run (root): `.venv/bin/python bench/bpf_ab.py BEFORE_BPF_DIR bpf [--rounds 5] [--duration 4]`, e.g. with
BEFORE_BPF_DIR the `bpf/` of a checkout of the previous commit (`git worktree add /tmp/bpf-before HEAD`).
`--wakeup-every N [M]` sets the loader's ring-buffer wake-up interval for both trees (or per tree: two copies
of one tree then measure the wake-ups' share).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from typing import Any

import harness

from podspan_agent import kernel_headers, loader
from podspan_demo import pods, servers

Counters = dict[int, tuple[int, int]]  # program id -> (run_time_ns, run_cnt)


def program_counters(ids: set[int]) -> Counters:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True).stdout
    return {int(p["id"]): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
            for p in json.loads(out) if int(p["id"]) in ids}


def program_names(probes: loader.Probes) -> dict[int, str]:
    """Program id -> function name (bpftool truncates names to 15 characters; bcc keeps the fds)."""
    names: dict[int, str] = {}
    bpf: Any = probes._bpf  # a benchmark may look inside
    for name, function in bpf.funcs.items():
        with contextlib.suppress(OSError):
            found = re.search(r"^prog_id:\s*(\d+)", pathlib.Path(f"/proc/self/fdinfo/{function.fd}").read_text(), re.M)
            if found:
                names[int(found.group(1))] = re.sub(r"^tracepoint__[a-z]+__", "", name.decode())
    return names


def delta(before: Counters, after: Counters, names: dict[int, str]) -> dict[str, tuple[int, int]]:
    """Per program name: (ns, runs) between two snapshots, programs that did not run left out."""
    per: dict[str, tuple[int, int]] = {}
    for prog_id, (ns, runs) in after.items():
        ns0, runs0 = before.get(prog_id, (0, 0))
        if runs > runs0:
            per[names.get(prog_id, f"id{prog_id}")] = (ns - ns0, runs - runs0)
    return per


def wrk(port: int, duration: int, path: str) -> int:
    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{duration}s", f"http://{harness.HOST}:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+) requests in", out)
    if found is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return int(found.group(1))


def measure(bpf_dir: pathlib.Path, cgroup_id: int, port: int, path: str, duration: int, unselected_duration: int,
            headers: kernel_headers.HeaderSource, options: loader.ProbeOptions) -> dict[str, Any]:
    os.environ[loader.BPF_DIR_ENV] = str(bpf_dir)
    ids_before = set(harness.bpf_programs())
    probes = loader.Probes(options, headers)
    try:
        ids = set(harness.bpf_programs()) - ids_before
        names = program_names(probes)
        probes.open_events(lambda *_records: None)  # any callback signature: nothing is parsed
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                probes.poll(50)

        drainer = threading.Thread(target=drain)
        drainer.start()
        probes.trace_cgroup(cgroup_id)
        try:
            subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
            c0 = program_counters(ids)
            requests = wrk(port, duration, path)
            c1 = program_counters(ids)
            stats = probes.stats()
            unselected: dict[str, tuple[int, int]] = {}
            if unselected_duration:
                probes.untrace_cgroup(cgroup_id)
                wrk(port, 1, path)  # the pod's connections close: nothing of it is in `conns` any more
                c2 = program_counters(ids)
                wrk(port, unselected_duration, path)
                unselected = delta(c2, program_counters(ids), names)
        finally:
            stop.set()
            drainer.join()
        per = delta(c0, c1, names)
        ns = sum(v[0] for v in per.values())
        runs = sum(v[1] for v in per.values())
        return {"ns_per_req": ns / requests, "runs_per_req": runs / requests,
                "requests": requests, "events_per_req": stats["events"] / requests,
                "lost": stats["events_lost"], "load_s": probes.load_seconds,
                "per_program": {name: (v[0] / v[1], v[1] / requests) for name, v in per.items()},
                "unselected": {name: v[0] / v[1] for name, v in unselected.items()},
                "unselected_runs": unselected}
    finally:
        probes.close()


def print_breakdown(tree: pathlib.Path, runs: list[dict[str, Any]]) -> None:
    """Medians over the rounds, per program: ns per run, runs per request, and their product."""
    programs = sorted({name for run in runs for name in run["per_program"]})
    rows = []
    for name in programs:
        seen = [run["per_program"][name] for run in runs if name in run["per_program"]]
        ns_run = statistics.median(v[0] for v in seen)
        per_req = statistics.median(v[1] for v in seen)
        rows.append((ns_run * per_req, name, ns_run, per_req))
    print(f"{tree}: per program, medians over {len(runs)} rounds (traced nginx, wrk -c4)")
    print(f"  {'program':<24} {'ns/run':>8} {'runs/req':>9} {'ns/req':>8}")
    for ns_req, name, ns_run, per_req in sorted(rows, reverse=True):
        print(f"  {name:<24} {ns_run:8.0f} {per_req:9.2f} {ns_req:8.0f}")
    print(f"  {'total':<24} {'':8} {statistics.median(r['runs_per_req'] for r in runs):9.2f} "
          f"{statistics.median(r['ns_per_req'] for r in runs):8.0f}")
    syscalls = sorted({re.sub(r"^sys_(enter|exit)_", "", name) for run in runs for name in run["unselected"]
                       if name.startswith("sys_")})
    if not syscalls:
        return
    print(f"{tree}: unselected processes (pod deselected, wrk -c4), ns per syscall = enter + exit, medians")
    for syscall in syscalls:
        parts = []
        total = 0.0
        for side in ("enter", "exit"):
            name = f"sys_{side}_{syscall}"
            seen = [run["unselected"][name] for run in runs if name in run["unselected"]]
            if seen:
                value = statistics.median(seen)
                total += value
                parts.append(f"{side} {value:.0f}")
        calls = statistics.median(max((run["unselected_runs"].get(f"sys_{side}_{syscall}", (0, 0))[1]
                                       for side in ("enter", "exit")), default=0) for run in runs)
        print(f"  {syscall:<16} {total:6.0f} ns ({', '.join(parts)}; {calls:.0f} calls)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("trees", nargs=2, type=pathlib.Path, help="two BPF source directories (A, then B)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds of wrk per run")
    parser.add_argument("--path", default="/", help="request path: / (a static file: nginx opens and closes it per "
                                                     "request) or /api/ (return 200, no file)")
    parser.add_argument("--unselected-duration", type=int, default=2,
                        help="seconds of wrk with the pod deselected, per run (0: skip)")
    parser.add_argument("--wakeup-every", type=int, nargs="+", metavar="N",
                        help="ProbeOptions.wakeup_every (ring-buffer wake-up per N events per CPU): one value for "
                             "both trees or one per tree (default: the loader's)")
    args = parser.parse_args(argv)
    wakeups = args.wakeup_every or [loader.ProbeOptions().wakeup_every]
    if len(wakeups) > 2:
        parser.error("--wakeup-every takes one or two values")
    options = {tree: loader.ProbeOptions(wakeup_every=wakeups[min(i, len(wakeups) - 1)])
               for i, tree in enumerate(args.trees)}
    if os.geteuid() != 0:
        print("needs root (eBPF, cgroups)", file=sys.stderr)
        return 2
    runner = pods.PodRunner()
    stats_before = harness.STATS_SYSCTL.read_text().strip()
    results: dict[pathlib.Path, list[dict[str, Any]]] = {tree: [] for tree in args.trees}
    with tempfile.TemporaryDirectory(prefix="podspan-bpf-ab-") as workdir:
        try:
            root = pathlib.Path(workdir)
            port = servers.free_port(harness.HOST)
            conf = servers.nginx_config(root, harness.HOST, port)
            pod = runner.start("nginx", [servers.nginx_binary(), "-c", str(conf), "-p", str(root)])
            pods.wait_for_port(harness.HOST, port)
            headers = kernel_headers.resolve()
            for round_number in range(args.rounds):
                for tree in args.trees:
                    run = measure(tree.resolve(), pod.cgroup_id, port, args.path, args.duration,
                                  args.unselected_duration, headers, options[tree])
                    results[tree].append(run)
                    print(f"round {round_number} {tree}: {run['ns_per_req']:.0f} ns/req, "
                          f"{run['runs_per_req']:.2f} prog runs/req, {run['events_per_req']:.2f} events/req, "
                          f"{run['requests']:.0f} requests, {run['lost']:.0f} events lost, "
                          f"compile+attach {run['load_s']:.2f} s, wake-up every {options[tree].wakeup_every} events",
                          flush=True)
        finally:
            runner.stop_all()
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={stats_before}"], check=True)
    for tree, runs in results.items():
        print_breakdown(tree, runs)
    for tree, runs in results.items():
        values = [run["ns_per_req"] for run in runs]
        print(f"{tree}: median {statistics.median(values):.0f} ns/req, "
              f"{statistics.median(run['runs_per_req'] for run in runs):.2f} runs/req (runs: "
              f"{', '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
