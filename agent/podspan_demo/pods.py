"""Local "pods" for tests and demos: real process trees in kubelet-named cgroup v2 directories,
optionally in their own network namespace joined to the host by a veth pair."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid

from podspan_agent import cgroups


@dataclasses.dataclass
class Pod:
    name: str
    uid: str
    container_id: str
    cgroup_dir: pathlib.Path
    process: subprocess.Popen[bytes] | None = None
    netns: str | None = None
    pod_ip: str | None = None

    @property
    def cgroup_id(self) -> int:
        return cgroups.cgroup_id(self.cgroup_dir)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


_runners = itertools.count()


class PodRunner:
    """Starts and stops pods; removes every cgroup, namespace, link and process it made.

    Pods with their own network namespace sit on one bridge per runner (10.231.N.0/24, the host
    at .1), like pods on a node's CNI bridge: they reach each other and the host without IP
    forwarding, and nothing outside this machine.
    """

    def __init__(self) -> None:
        self.mount = cgroups.cgroup2_mount()
        self.pods: list[Pod] = []
        runner = next(_runners)
        self._tag = f"{os.getpid() % 100000}x{runner}"
        self._subnet = f"10.231.{(os.getpid() + runner) % 250 + 1}"
        self._bridge: str | None = None
        self._addresses = itertools.count(2)

    @property
    def host_ip(self) -> str:
        """The host's address on the pods' bridge."""
        return f"{self._subnet}.1"

    def start(self, name: str, argv: list[str], netns: bool = False, env: dict[str, str] | None = None,
              log_path: pathlib.Path | None = None, uid: str | None = None,
              container_id: str | None = None) -> Pod:
        """Start `argv` as pod `name`; `uid`/`container_id` default to fresh random ones (pass the
        Pod object's uid when an API server assigned it)."""
        pod_uid = uid or str(uuid.uuid4())
        container_id = container_id or uuid.uuid4().hex + uuid.uuid4().hex
        relative = cgroups.kubelet_systemd_path(pod_uid, container_id, "besteffort", "containerd")
        directory = self.mount / relative
        directory.mkdir(parents=True)
        pod = Pod(name, pod_uid, container_id, directory)
        self.pods.append(pod)
        command = list(argv)
        if netns:
            self._make_netns(pod)
            assert pod.netns is not None
            command = ["ip", "netns", "exec", pod.netns, *command]
        # The shell moves itself into the cgroup before exec, so every child is inside from birth.
        wrapper = ["sh", "-c", f'echo $$ > "{directory}/cgroup.procs" && exec "$@"', "pod-" + name, *command]
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        pod.process = subprocess.Popen(wrapper, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})}, start_new_session=True)
        return pod

    def _make_netns(self, pod: Pod) -> None:
        if self._bridge is None:
            bridge = f"psbr{self._tag}"[:15]
            for cmd in (["ip", "link", "add", bridge, "type", "bridge"],
                        ["ip", "addr", "add", f"{self.host_ip}/24", "dev", bridge],
                        ["ip", "link", "set", bridge, "up"]):
                _ip(cmd)
            self._bridge = bridge
        index = next(self._addresses)
        if index > 254:
            raise RuntimeError("a PodRunner holds at most 253 pods with their own network namespace")
        pod.netns = f"podspan-{self._tag}-{index}"
        host_if, pod_if = f"psh{self._tag}.{index}"[:15], f"psp{self._tag}.{index}"[:15]
        pod.pod_ip = f"{self._subnet}.{index}"
        for cmd in (
            ["ip", "netns", "add", pod.netns],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if],
            ["ip", "link", "set", pod_if, "netns", pod.netns],
            ["ip", "link", "set", host_if, "master", self._bridge, "up"],
            ["ip", "-n", pod.netns, "addr", "add", f"{pod.pod_ip}/24", "dev", pod_if],
            ["ip", "-n", pod.netns, "link", "set", pod_if, "up"],
            ["ip", "-n", pod.netns, "link", "set", "lo", "up"],
            ["ip", "-n", pod.netns, "route", "add", "default", "via", self.host_ip],
        ):
            _ip(cmd)

    def stop(self, pod: Pod) -> None:
        if pod.process is not None and pod.process.poll() is None:
            try:
                os.killpg(pod.process.pid, signal.SIGTERM)
                pod.process.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, signal.SIGKILL)
                pod.process.wait(timeout=5)
        _kill_cgroup(pod.cgroup_dir)
        _remove_cgroup_tree(pod.cgroup_dir, self.mount / "kubepods.slice")
        if pod.netns:
            subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
            pod.netns = None

    def stop_all(self) -> None:
        for pod in reversed(self.pods):
            self.stop(pod)
        self.pods.clear()
        if self._bridge is not None:
            subprocess.run(["ip", "link", "del", self._bridge], capture_output=True)
            self._bridge = None


def _ip(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def _kill_cgroup(directory: pathlib.Path) -> None:
    """SIGKILL what is left in the pod's cgroup: only processes this runner put there."""
    kill_file = directory / "cgroup.kill"
    if kill_file.exists():
        kill_file.write_text("1")
    deadline = time.monotonic() + 5
    procs = directory / "cgroup.procs"
    while directory.exists() and procs.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)


def _remove_cgroup_tree(directory: pathlib.Path, stop_at: pathlib.Path) -> None:
    """rmdir the pod's directory and its now-empty parents up to `stop_at` (kept if shared)."""
    current = directory
    while current != stop_at.parent and current.exists():
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def require_root_tools() -> str | None:
    """Why pod tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None
