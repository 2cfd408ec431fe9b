"""Driving a kind cluster from the e2e test: prerequisites, commands with readable failures, polling.

Everything shells out to docker, kind and kubectl, the tools a user has, so the test installs and
inspects Podspan exactly the way docs/e2e.md tells a person to.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
HERE = pathlib.Path(__file__).resolve().parent
MANIFESTS = HERE / "manifests"
KIND_CONFIG = HERE / "kind-cluster.yaml"

CLUSTER = "podspan-e2e"
NAMESPACE = "podspan-e2e"
SYSTEM_NAMESPACE = "podspan-system"
TRACES_FILE = "/data/traces.jsonl"  # the collector's file exporter (manifests/otel-collector.yaml)

KEEP_ENV = "PODSPAN_E2E_KEEP"  # 1: keep the cluster afterwards, and reuse a kept one next time
DISABLE_ENV = "PODSPAN_E2E_KIND"  # 0: skip even where docker and kind are available

# The placeholder image names in config/ and the Dockerfile each one is built from.
DOCKERFILES = {"podspan-agent": "Dockerfile.agent", "podspan-operator": "Dockerfile.operator"}
WORKLOADS = ("deployment/podspan-operator", "daemonset/podspan-agent")

_TAIL_CHARS = 4000

T = TypeVar("T")
Progress = Callable[[str], None]  # one line for the person watching (long steps: builds, cluster setup)


class CommandError(RuntimeError):
    """A command failed or timed out; the message carries the command and the end of its output."""


def _tail(output: str | bytes | None, limit: int = _TAIL_CHARS) -> str:
    # TimeoutExpired carries bytes even when the command ran with text=True.
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def run(args: Sequence[str | os.PathLike[str]], *, timeout: float, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [os.fspath(arg) for arg in args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"`{shlex.join(argv)}` did not finish within {timeout:g}s\n"
                           f"--- stdout\n{_tail(exc.stdout)}\n--- stderr\n{_tail(exc.stderr)}") from None
    if check and done.returncode != 0:
        raise CommandError(f"`{shlex.join(argv)}` exited with {done.returncode}\n"
                           f"--- stdout\n{_tail(done.stdout)}\n--- stderr\n{_tail(done.stderr)}")
    return done


def missing_prerequisites() -> str | None:
    """Why the kind e2e cannot run here, or None when it can."""
    if os.environ.get(DISABLE_ENV) == "0":
        return f"kind e2e disabled by {DISABLE_ENV}=0"
    if not sys.platform.startswith("linux"):
        return "kind e2e needs a Linux host: the agent loads eBPF programs into the kernel the kind node shares"
    problems = [f"`{tool}` is not on PATH" for tool in ("docker", "kind", "kubectl") if shutil.which(tool) is None]
    if shutil.which("docker") is not None:
        try:
            info = subprocess.run(["docker", "info", "--format", "{{json .SecurityOptions}}"],
                                  capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            problems.append("`docker info` did not answer within 30s")
        else:
            if info.returncode != 0:
                said = next((line for line in info.stderr.splitlines() if line.strip()), "no output")
                problems.append(f"no reachable Docker daemon (`docker info`: {said.strip()})")
            elif "rootless" in info.stdout:
                problems.append("Docker runs rootless, and the agent needs a rootful daemon to load eBPF programs")
    if problems:
        return "kind e2e needs docker (with a running daemon), kind and kubectl: " + "; ".join(problems)
    return None


def keep_cluster() -> bool:
    return os.environ.get(KEEP_ENV) == "1"


def config_images() -> dict[str, str]:
    """Placeholder name in config/ -> the image reference `kubectl apply -k config/` deploys."""
    kustomization = yaml.safe_load((ROOT / "config" / "kustomization.yaml").read_text())
    return {image["name"]: f"{image['newName']}:{image['newTag']}" for image in kustomization["images"]}


def build_images(images: dict[str, str]) -> None:
    """Build each image from this checkout, tagged as config/ references it (so the manifests need no edit)."""
    for placeholder, reference in images.items():
        run(["docker", "build", "--file", ROOT / DOCKERFILES[placeholder], "--tag", reference, ROOT],
            timeout=2400)


def wait_for(probe: Callable[[], tuple[bool, T]], what: str, *, timeout: float, interval: float = 2.0,
             diagnose: Callable[[], str] | None = None) -> T:
    """Poll `probe` (-> (done, observed)) until done; on timeout fail with the last observation."""
    deadline = time.monotonic() + timeout
    while True:
        done, observed = probe()
        if done:
            return observed
        if time.monotonic() >= deadline:
            details = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last observed:\n"
                                 f"{_tail(json.dumps(observed, indent=1, default=str))}{details}")
        time.sleep(interval)


class Kind:
    """One kind cluster, with its kubeconfig in a file of its own (the user's ~/.kube/config is not touched)."""

    def __init__(self, name: str, kubeconfig: pathlib.Path) -> None:
        self.name, self.kubeconfig = name, kubeconfig

    def exists(self) -> bool:
        return self.name in run(["kind", "get", "clusters"], timeout=60).stdout.split()

    def create(self) -> None:
        run(["kind", "create", "cluster", "--name", self.name, "--config", KIND_CONFIG,
             "--kubeconfig", self.kubeconfig, "--wait", "180s"], timeout=600)

    def write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(run(["kind", "get", "kubeconfig", "--name", self.name], timeout=60).stdout)

    def load(self, images: Iterable[str]) -> None:
        run(["kind", "load", "docker-image", "--name", self.name, *images], timeout=900)

    def delete(self) -> None:
        run(["kind", "delete", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig], timeout=300)


class Kubectl:
    """kubectl against one kubeconfig; failures carry the command's output."""

    def __init__(self, kubeconfig: pathlib.Path) -> None:
        self._env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str | os.PathLike[str], timeout: float = 60,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["kubectl", *args], timeout=timeout, check=check, env=self._env)

    def json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self("get", *args, "-o", "json").stdout)

    def json_or_none(self, *args: str) -> Any:
        """Like json(), but None when the object does not exist."""
        done = self("get", *args, "-o", "json", "--ignore-not-found")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def node_name(self) -> str:
        nodes = [node["metadata"]["name"] for node in self.json("nodes")["items"]]
        assert len(nodes) == 1, f"the e2e cluster has one node (see {KIND_CONFIG.name}), found {nodes}"
        return nodes[0]

    def rollout(self, namespace: str, workload: str, timeout: int = 300) -> None:
        try:
            self("-n", namespace, "rollout", "status", workload, f"--timeout={timeout}s", timeout=timeout + 30)
        except CommandError as exc:
            raise CommandError(f"{exc}\n{self.diagnostics()}") from None

    def apply_config(self) -> None:
        """`kubectl apply -k config/`, as a user runs it: one pass on a fresh cluster (config/ holds no
        object of a kind its own CRDs define; the operator creates its ClusterKopfPeering itself)."""
        self("apply", "-k", ROOT / "config", timeout=120)

    def diagnostics(self) -> str:
        """What to look at when a wait times out: profiles, node configs, pods, and the components' logs."""
        commands = [
            ["get", "traceprofiles", "-A", "-o", "yaml"],
            ["get", "nodetraceconfigs", "-o", "yaml"],
            ["get", "pods", "-A", "-o", "wide"],
            ["-n", SYSTEM_NAMESPACE, "describe", "pods"],
            ["-n", SYSTEM_NAMESPACE, "logs", "deployment/podspan-operator", "--tail=150"],
            ["-n", SYSTEM_NAMESPACE, "logs", "daemonset/podspan-agent", "--tail=150"],
            ["-n", SYSTEM_NAMESPACE, "logs", "daemonset/podspan-agent", "--previous", "--tail=50"],
            ["-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"],
            ["-n", NAMESPACE, "logs", "deployment/otel-collector", "--container=collector", "--tail=50"],
        ]
        sections = []
        for args in commands:
            try:
                done = self(*args, check=False, timeout=30)
                output = done.stdout + done.stderr
            except CommandError as exc:  # a hung API server must not hide the original failure
                output = str(exc)
            sections.append(f"===== kubectl {shlex.join(args)}\n{_tail(output)}")
        return "\n".join(sections)
