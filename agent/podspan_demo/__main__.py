"""`python -m podspan_demo`: start frontend and backend "pods", trace them with
`podspan-agent trace`, drive some traffic, show the traces, clean up.

`python -m podspan_demo cluster`: the same through Kubernetes objects (see cluster_demo)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from podspan_demo import cluster_demo, pods

FRONTEND_PORT, BACKEND_PORT = 18480, 18481


def _forward(stream: object, ready: threading.Event) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        if line.startswith("podspan: tracing"):
            ready.set()
    ready.set()


def _traffic(requests: int) -> None:
    base = f"http://127.0.0.1:{FRONTEND_PORT}"
    paths = [f"/users/{i}" for i in range(1, requests)] + ["/missing/7"]
    for index, path in enumerate(paths):
        headers = {}
        if index == 1:  # one request arrives with a caller's W3C context, which the trace adopts
            headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=5) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            exc.read()
        time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(prog="podspan-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", choices=("standalone", "cluster"), default="standalone",
                        help="standalone: podspan-agent trace on two cgroups; cluster: a TraceProfile applied to "
                             "a local operator + agent installation")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--output", choices=("console", "jsonl"), default="console",
                        help="standalone only: how the agent prints spans")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("podspan-demo: needs root (it creates cgroups and loads eBPF programs)", file=sys.stderr)
        return 2
    if args.target == "cluster":
        return cluster_demo.run(args.requests)
    runner = pods.PodRunner()
    app = [sys.executable, "-m", "podspan_demo.sample_app"]
    try:
        backend = runner.start("backend", [*app, "backend", "--port", str(BACKEND_PORT)],
                               env={"OTEL_SERVICE_NAME": "backend"})
        frontend = runner.start(
            "frontend",
            [*app, "frontend", "--port", str(FRONTEND_PORT), "--backend", f"http://127.0.0.1:{BACKEND_PORT}"],
            env={"OTEL_SERVICE_NAME": "frontend"},
        )
        pods.wait_for_port("127.0.0.1", BACKEND_PORT)
        pods.wait_for_port("127.0.0.1", FRONTEND_PORT)
        print(f"podspan-demo: frontend pod {frontend.cgroup_dir}\n"
              f"podspan-demo: backend pod  {backend.cgroup_dir}", file=sys.stderr)
        duration = 6 + 0.3 * args.requests
        agent = subprocess.Popen(
            [sys.executable, "-m", "podspan_agent.cli", "trace",
             "--cgroup", str(frontend.cgroup_dir), "--cgroup", str(backend.cgroup_dir),
             "--duration", str(duration), "--output", args.output],
            stderr=subprocess.PIPE,
        )
        ready = threading.Event()
        threading.Thread(target=_forward, args=(agent.stderr, ready), daemon=True).start()
        if not ready.wait(60) or agent.poll() is not None:
            print("podspan-demo: the agent did not start", file=sys.stderr)
            agent.wait()
            return 1
        print(f"podspan-demo: sending {args.requests} requests to the frontend ...", file=sys.stderr)
        _traffic(args.requests)
        return agent.wait()
    finally:
        runner.stop_all()


if __name__ == "__main__":
    sys.exit(main())
