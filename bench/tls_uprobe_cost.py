"""What the TLS probes cost by themselves, on this machine: a uprobe hit, and HTTPS throughput of processes
that are not traced but map the probed libssl (a uprobe lives on the file, so they trap too).

(a) `SSL_free(NULL)` (returns at once) called in a loop through ctypes, without and with the agent's TLS probes
    on libssl (SSL_free has an entry probe only): the difference is one uprobe hit.
(b) `wrk -t1 -c16 https://` against an untraced nginx with TLS, alternately without and with the probes
    attached (the capture program loaded in both arms, nothing selected): what every other process on a node
    pays once a traced one shares its libssl.
Nothing is asserted; prints one line per measurement. Run (root):
`.venv/bin/python bench/tls_uprobe_cost.py [--rounds 2] [--duration 4]`.
"""

from __future__ import annotations

import argparse
import collections.abc
import ctypes
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import harness
import http_overhead

from podspan_agent import kernel_headers, loader, tls
from podspan_demo import pods, servers

CALLS = 20000


def libssl_path() -> str:
    """The libssl this process maps (loading it through ctypes)."""
    ctypes.CDLL("libssl.so.3")
    return next(path for path in tls.mapped_files(os.getpid()) if tls.is_libssl(path))


def call_ns(function: collections.abc.Callable[[None], object]) -> float:
    started = time.perf_counter_ns()
    for _ in range(CALLS):
        function(None)
    return (time.perf_counter_ns() - started) / CALLS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the wrk arms")
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (eBPF)", file=sys.stderr)
        return 2
    library = libssl_path()
    ssl_free = ctypes.CDLL(library).SSL_free
    probes = loader.Probes(loader.ProbeOptions(), kernel_headers.resolve())
    with tempfile.TemporaryDirectory(prefix="podspan-bench-") as workdir:
        root = pathlib.Path(workdir)
        port = servers.free_port(harness.HOST)
        conf = servers.nginx_config(root, harness.HOST, port, tls=servers.self_signed_certificate(root))
        nginx = subprocess.Popen([servers.nginx_binary(), "-c", str(conf), "-p", str(root)])
        try:
            pods.wait_for_port(harness.HOST, port)
            bare = call_ns(ssl_free)
            probes.attach_tls(library)
            probed = call_ns(ssl_free)
            probes.detach_tls(library)
            print(f"SSL_free(NULL): {bare:.0f} ns per call unprobed, {probed:.0f} ns with its uprobe: "
                  f"{probed - bare:.0f} ns per uprobe hit ({CALLS} calls each)")
            http_overhead.run_wrk(port, 2, "https")  # warm-up
            for round_number in range(1, args.rounds + 1):
                without = http_overhead.run_wrk(port, args.duration, "https")["rps"]
                probes.attach_tls(library)
                attached = http_overhead.run_wrk(port, args.duration, "https")["rps"]
                probes.detach_tls(library)
                print(f"round {round_number}: untraced nginx + wrk over https: {without:.0f} req/s without the "
                      f"TLS probes, {attached:.0f} req/s with them attached (ratio {attached / without:.3f})")
        finally:
            nginx.terminate()
            nginx.wait(timeout=30)
            probes.close()
    harness.print_run_header(" ".join([os.path.relpath(harness.PYTHON, harness.ROOT), *sys.argv]), [],
                             "wrk and nginx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
