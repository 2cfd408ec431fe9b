"""`podspan-agent trace` as a user runs it: clear errors with exit 2, spans out, clean detach."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import time

import pytest

from podspan_demo import otlp_receiver, pods, servers
from tests.agent import conftest
from tests.support import bpftool

AGENT = [sys.executable, "-m", "podspan_agent.cli"]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "--cgroup", "/sys/fs/cgroup/no/such/podspan-cgroup"], "does not exist"),
        (["trace", "--cgroup", "/tmp"], "not a cgroup v2 directory"),
        (["trace", "--pid", "999999999"], "no process with pid 999999999"),
        (["trace"], "nothing to trace"),
        (["trace", "--pid", "1", "--protocols", "http,gopher"], "unknown protocol(s) gopher"),
        (["trace", "--pid", "1", "--capture-size", "100"], "power of two"),
        (["trace", "--pid", "1", "--cpu-budget", "0"], "--cpu-budget must be a positive percentage"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = _run(args)
    assert result.returncode == 2
    # One line and nothing else: the loader logs a line when it loads anything, so nothing was attached.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("podspan-agent: ") and message in lines[0], result.stderr


def test_without_root_is_refused() -> None:
    # Import as root, then drop to nobody: the checkout may not be readable by nobody.
    script = (
        "import os, sys\n"
        "from podspan_agent import cli\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "sys.exit(cli.main(['trace', '--pid', '1']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 2
    assert "needs root" in result.stderr


def _start_agent(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    agent = subprocess.Popen([*AGENT, *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
    assert agent.stderr is not None
    for line in agent.stderr:
        if line.startswith("podspan: tracing"):
            return agent
    agent.wait()
    raise AssertionError(f"agent did not start (exit {agent.returncode})")


def _traffic(port: int, paths: list[str]) -> None:
    for path in paths:
        conn = __import__("http.client").client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()


def test_otlp_http_export_and_ctrl_c_detaches(pod_runner: pods.PodRunner) -> None:
    port = conftest.free_port()
    app = pod_runner.start("app", [*conftest.SAMPLE_APP, "backend", "--port", str(port)])
    pods.wait_for_port("127.0.0.1", port)
    with otlp_receiver.OtlpReceiver() as receiver:
        agent = _start_agent(
            ["trace", "--cgroup", str(app.cgroup_dir), "--otlp-endpoint", f"http://127.0.0.1:{receiver.http_port}",
             "--otlp-protocol", "http/protobuf"],
            env={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,team=podspan"},
        )
        try:
            attached = bpftool.attached_programs(agent.pid)
            assert len(attached) > 10  # one program per syscall tracepoint
            _traffic(port, ["/users/5", "/users/6"])
            spans = receiver.wait_for(lambda got: len(got) >= 2, timeout=20)
        finally:
            agent.send_signal(signal.SIGINT)
            agent.communicate(timeout=60)
    assert agent.returncode == 0
    assert {s.attributes["url.path"] for s in spans} == {"/users/5", "/users/6"}
    assert all(s.transport == "http" for s in spans)
    resource = spans[0].resource
    assert resource["deployment.environment.name"] == "test" and resource["team"] == "podspan"
    assert resource["process.pid"] == app.pid
    assert resource["host.name"] and resource["process.executable.name"]
    # Everything detached: none of its programs is left in the kernel.
    assert not attached & bpftool.program_ids()


def test_duration_and_jsonl_output(pod_runner: pods.PodRunner, tmp_path: pathlib.Path) -> None:
    port = conftest.free_port()
    app = pod_runner.start("app", [*conftest.SAMPLE_APP, "backend", "--port", str(port)])
    pods.wait_for_port("127.0.0.1", port)
    out = tmp_path / "spans.jsonl"
    started = time.monotonic()
    agent = _start_agent(["trace", "--pid", str(app.pid), "--duration", "3", "--output", "jsonl",
                          "--output-file", str(out)])
    _traffic(port, ["/users/9", "/healthz"])
    _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert time.monotonic() - started >= 3
    assert "podspan: done" in stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["attributes"]["url.path"] for r in records) == ["/healthz", "/users/9"]
    assert all(len(r["trace_id"]) == 32 for r in records)


@pytest.mark.parametrize("no_tls", [False, True])
def test_https_server_and_no_tls(pod_runner: pods.PodRunner, tmp_path: pathlib.Path, no_tls: bool) -> None:
    cert, key = servers.self_signed_certificate(tmp_path)
    port = conftest.free_port()
    app = pod_runner.start("app", [*conftest.SAMPLE_APP, "backend", "--port", str(port), "--tls-cert", str(cert),
                                   "--tls-key", str(key)])
    pods.wait_for_port("127.0.0.1", port)
    out = tmp_path / "spans.jsonl"
    agent = _start_agent(["trace", "--pid", str(app.pid), "--duration", "4", "--output", "jsonl",
                          "--output-file", str(out), *(["--no-tls"] if no_tls else [])])
    assert agent.stderr is not None
    if not no_tls:  # the TLS library is announced before the first requests are worth sending
        line = next(line for line in agent.stderr if line.startswith("podspan: TLS"))
        assert line.startswith(f"podspan: TLS pid {app.pid}: openssl-3.") and line.rstrip().endswith(
            "(libssl.so.3): attached"), line
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl.create_default_context(cafile=cert))
    conn.request("GET", "/users/10")
    conn.getresponse().read()
    conn.close()
    _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    if no_tls:
        assert records == [] and "podspan: TLS" not in stderr
    else:
        seen = [(r["attributes"]["url.path"], r["attributes"]["url.scheme"]) for r in records]
        assert seen == [("/users/10", "https")]
