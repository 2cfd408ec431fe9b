"""In-kernel cost per HTTP/1.1 request of two BPF source trees, alternating on one nginx: A/B for capture changes.

nginx (configured as in bench/http_overhead.py, static `/`) runs in a cgroup "pod". Per round
and per tree: the capture program is compiled from that tree (`PODSPAN_BPF_DIR`), attached to the pod's
cgroup, its ring buffer drained by a thread (no parsing: only the kernel side is measured); with
`kernel.bpf_stats_enabled=1` (restored afterwards) `wrk -t1 -c4 -d{duration}s` runs, and the run time of the
programs that appeared with the load is divided by wrk's request count. The trees alternate, so slow drift
of a shared machine hits both. Nothing is asserted; it prints one line per run and the medians.

Run (root): `.venv/bin/python bench/bpf_ab.py BEFORE_BPF_DIR bpf [--rounds 4] [--duration 4]`, e.g. with
BEFORE_BPF_DIR the `bpf/` of a checkout of the previous commit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading

import harness

from podspan_agent import kernel_headers, loader
from podspan_demo import pods, servers


def measure(bpf_dir: pathlib.Path, cgroup_id: int, port: int, duration: int,
            headers: kernel_headers.HeaderSource) -> dict[str, float]:
    os.environ[loader.BPF_DIR_ENV] = str(bpf_dir)
    ids_before = set(harness.bpf_programs())
    probes = loader.Probes(loader.ProbeOptions(), headers)
    try:
        ids = set(harness.bpf_programs()) - ids_before
        probes.open_events(lambda _address, _size: None)
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                probes.poll(50)

        drainer = threading.Thread(target=drain)
        drainer.start()
        probes.trace_cgroup(cgroup_id)
        try:
            subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
            ns0, runs0 = harness.bpf_totals(ids)
            out = subprocess.run(["wrk", "-t1", "-c4", f"-d{duration}s", f"http://{harness.HOST}:{port}/"],
                                 capture_output=True, text=True, check=True).stdout
            ns1, runs1 = harness.bpf_totals(ids)
        finally:
            stop.set()
            drainer.join()
        found = re.search(r"(\d+) requests in", out)
        if found is None:
            raise RuntimeError(f"cannot parse wrk output:\n{out}")
        requests = int(found.group(1))
        stats = probes.stats()
        return {"ns_per_req": (ns1 - ns0) / requests, "runs_per_req": (runs1 - runs0) / requests,
                "requests": requests, "events_per_req": stats["events"] / requests,
                "lost": stats["events_lost"], "load_s": probes.load_seconds}
    finally:
        probes.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("trees", nargs=2, type=pathlib.Path, help="two BPF source directories (A, then B)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=4, help="seconds of wrk per run")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (eBPF, cgroups)", file=sys.stderr)
        return 2
    runner = pods.PodRunner()
    stats_before = harness.STATS_SYSCTL.read_text().strip()
    results: dict[pathlib.Path, list[float]] = {tree: [] for tree in args.trees}
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
                    run = measure(tree.resolve(), pod.cgroup_id, port, args.duration, headers)
                    results[tree].append(run["ns_per_req"])
                    print(f"round {round_number} {tree}: {run['ns_per_req']:.0f} ns/req, "
                          f"{run['runs_per_req']:.2f} prog runs/req, {run['events_per_req']:.2f} events/req, "
                          f"{run['requests']:.0f} requests, {run['lost']:.0f} events lost, "
                          f"compile+attach {run['load_s']:.2f} s", flush=True)
        finally:
            runner.stop_all()
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={stats_before}"], check=True)
    for tree, values in results.items():
        print(f"{tree}: median {statistics.median(values):.0f} ns/req (runs: "
              f"{', '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
