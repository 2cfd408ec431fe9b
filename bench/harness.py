"""Shared by the overhead benchmarks: the OTLP receiver and the agent CLI as child processes (their
stderr, start-up and final lines), process-tree CPU/RSS, CPU steal, and BPF program run-time accounting."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
STATS_SYSCTL = pathlib.Path("/proc/sys/kernel/bpf_stats_enabled")


class StderrReader:
    """Collects a child's stderr lines in a thread; `wait_for(prefix)` returns the first match."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if "<eof>" in self.lines:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def start_receiver() -> tuple[subprocess.Popen[str], StderrReader, int]:
    """`podspan_demo.otlp_receiver` as its own process (counting only): (process, stderr, gRPC port)."""
    receiver = subprocess.Popen(
        [PYTHON, "-m", "podspan_demo.otlp_receiver", "--grpc-port", "0", "--http-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert receiver.stdout is not None
    ports_line = receiver.stdout.readline()
    grpc_match = re.search(r"grpc=(\d+)", ports_line)
    if grpc_match is None:
        stop_process(receiver)
        raise RuntimeError(f"OTLP receiver did not start: {ports_line!r}")
    return receiver, StderrReader(receiver), int(grpc_match.group(1))


def agent_command(cgroup_dirs: Sequence[pathlib.Path], grpc_port: int) -> list[str]:
    """The real agent CLI tracing `cgroup_dirs`, exporting OTLP/gRPC to the receiver; no local output."""
    selection = [arg for directory in cgroup_dirs for arg in ("--cgroup", str(directory))]
    return [PYTHON, "-m", "podspan_agent.cli", "trace", *selection, "--output", "jsonl", "--output-file",
            "/dev/null", "--otlp-endpoint", f"http://{HOST}:{grpc_port}", "--otlp-protocol", "grpc"]


def start_agent(command: list[str]) -> tuple[subprocess.Popen[str], StderrReader, str]:
    """Start the agent and wait until it has attached: (process, stderr, its `podspan: tracing` line)."""
    agent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    reader = StderrReader(agent)
    line = reader.wait_for("podspan: tracing", timeout=120)
    if line is None:
        stop_process(agent)
        raise RuntimeError("agent did not attach:\n" + "\n".join(reader.lines[-20:]))
    return agent, reader, line


def final_line(process: subprocess.Popen[str], reader: StderrReader, prefix: str, timeout: float = 30) -> str:
    """Stop a child started here (SIGINT, so it drains and prints its totals; SIGKILL after `timeout`);
    its line starting with `prefix`."""
    stop_process(process, timeout=timeout)
    reader.join(10)
    line = reader.wait_for(prefix, timeout=1)
    return line or f"(no {prefix!r} line; last lines: {' | '.join(reader.lines[-3:])})"


def bpf_programs() -> dict[int, dict[str, int]]:
    cmd = ["bpftool", "prog", "show", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {
        int(p["id"]): {"run_time_ns": int(p.get("run_time_ns", 0)), "run_cnt": int(p.get("run_cnt", 0))}
        for p in json.loads(out)
    }


def bpf_totals(ids: set[int]) -> tuple[int, int]:
    progs = bpf_programs()
    return (sum(progs[i]["run_time_ns"] for i in ids if i in progs),
            sum(progs[i]["run_cnt"] for i in ids if i in progs))


def cpu_steal_idle() -> tuple[int, int, int]:
    """(steal, idle, total) jiffies of all CPUs from /proc/stat: a noisy hypervisor shows up as steal."""
    fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7] if len(fields) > 7 else 0, fields[3], sum(fields[:8])


def _tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (those that exist right now)."""
    procs = [psutil.Process(pid)]
    with contextlib.suppress(psutil.Error):
        procs += procs[0].children(recursive=True)
    return procs


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def print_run_header(command: str, agent_cmd: list[str], sharing: str) -> None:
    """The lines every benchmark report starts with: how to reproduce it and what shared the CPUs."""
    print()
    print("command: " + command)
    print("agent:   " + " ".join(shlex.quote(a) for a in agent_cmd))
    print(f"machine: {os.cpu_count()} CPUs, kernel {platform.release()}; {sharing} share them")


def stop_process(process: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 30) -> None:
    """Stop one child this script started, by its pid: `sig`, then SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
