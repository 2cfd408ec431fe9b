"""The agent runs with only the capabilities config/agent/daemonset.yaml grants, on the real kernel.

`podspan-agent trace --pid` runs as uid 0 (as in the DaemonSet) under `setpriv`, whose bounding set
then is its whole capability set, with no_new_privs (allowPrivilegeEscalation: false). The traced
server runs as another user (nobody), as most pods do. Each granted capability must be needed: without
it the agent cannot attach. docs/reliability.md ("Privileges") records what each one is for.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from podspan_demo import pods
from tests.agent import conftest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETPRIV = shutil.which("setpriv")
NOBODY = "65534"
SERVICE = "checkout"  # OTEL_SERVICE_NAME in the traced server's own environment

pytestmark = pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")


def daemonset_capabilities() -> list[str]:
    """The capabilities the agent container adds (it drops ALL), lower-case as setpriv spells them."""
    docs = yaml.safe_load_all((ROOT / "config" / "agent" / "daemonset.yaml").read_text())
    (daemonset,) = (doc for doc in docs if doc and doc["kind"] == "DaemonSet")
    (agent,) = (c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    capabilities = agent["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    return [name.lower() for name in capabilities["add"]]


def trace_with(capabilities: list[str], pid: int, port: int, out: pathlib.Path) -> tuple[int, str]:
    """Run `trace --pid` with exactly `capabilities`; once attached, send two requests to `port`.
    Returns the exit code and stderr."""
    assert SETPRIV is not None
    bounding = ",".join(["-all", *(f"+{name}" for name in capabilities)])
    agent = subprocess.Popen(
        [SETPRIV, f"--bounding-set={bounding}", "--no-new-privs", "--",
         sys.executable, "-m", "podspan_agent.cli", "trace", "--pid", str(pid), "--duration", "3",
         "--output", "jsonl", "--output-file", str(out)],
        stderr=subprocess.PIPE, text=True,
    )
    assert agent.stderr is not None
    seen = []
    for line in agent.stderr:
        seen.append(line)
        if line.startswith("podspan: tracing"):
            for path in ("/a", "/b"):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", path)
                conn.getresponse().read()
                conn.close()
            break
    _, rest = agent.communicate(timeout=120)
    return agent.returncode, "".join(seen) + rest


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An HTTP server in its own pod cgroup, running as nobody with OTEL_SERVICE_NAME set."""
    runner = pods.PodRunner()
    port = conftest.free_port()
    root = tmp_path_factory.mktemp("www")
    root.chmod(0o755)
    command = [str(SETPRIV), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(root)]
    pod = runner.start("server", command, env={"OTEL_SERVICE_NAME": SERVICE})
    try:
        pods.wait_for_port("127.0.0.1", port)
        yield pod, port
    finally:
        runner.stop_all()


def spans(out: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_daemonset_capabilities_attach_and_trace(server: Any, tmp_path: pathlib.Path) -> None:
    pod, port = server
    out = tmp_path / "spans.jsonl"
    code, stderr = trace_with(daemonset_capabilities(), pod.pid, port, out)
    assert code == 0, stderr
    got = spans(out)
    assert sorted(s["attributes"]["url.path"] for s in got) == ["/a", "/b"], stderr
    # /proc/<pid>/comm and cgroup of another user's process are readable with these capabilities.
    assert got[0]["resource"]["process.executable.name"].startswith("python")
    assert got[0]["resource"]["container.id"] == pod.container_id


@pytest.mark.parametrize("missing", daemonset_capabilities())
def test_every_daemonset_capability_is_needed(missing: str, server: Any, tmp_path: pathlib.Path) -> None:
    pod, port = server
    out = tmp_path / "spans.jsonl"
    code, stderr = trace_with([c for c in daemonset_capabilities() if c != missing], pod.pid, port, out)
    assert code == 2 and "podspan-agent: loading" in stderr, stderr
    assert spans(out) == []


def test_standalone_reads_the_declared_service_name_with_dac_read_search(server: Any, tmp_path: pathlib.Path) -> None:
    # /proc/<pid>/environ is mode 0400 of the traced user: root reads it only with CAP_DAC_READ_SEARCH.
    # Kubernetes mode takes service.name from the pod instead, so the DaemonSet does without it.
    pod, port = server
    with_it, without_it = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    assert trace_with([*daemonset_capabilities(), "dac_read_search"], pod.pid, port, with_it)[0] == 0
    assert trace_with(daemonset_capabilities(), pod.pid, port, without_it)[0] == 0
    assert {s["resource"]["service.name"] for s in spans(with_it)} == {SERVICE}
    assert {s["resource"]["service.name"] for s in spans(without_it)} == {"python3"}
