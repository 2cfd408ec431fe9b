"""Local "pods" for tests and demos: real process trees in kubelet-named cgroup v2 directories,
optionally in their own network namespace joined to the host by a veth pair."""

from __future__ import annotations

import contextlib
import dataclasses
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
    host_ip: str | None = None

    @property
    def cgroup_id(self) -> int:
        return cgroups.cgroup_id(self.cgroup_dir)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class PodRunner:
    """Starts and stops pods; removes every cgroup, namespace and process it made."""

    def __init__(self, subnet_index: int = 0) -> None:
        self.mount = cgroups.cgroup2_mount()
        self.pods: list[Pod] = []
        self._subnet_index = subnet_index

    def start(self, name: str, argv: list[str], netns: bool = False, env: dict[str, str] | None = None,
              log_path: pathlib.Path | None = None) -> Pod:
        pod_uid = str(uuid.uuid4())
        container_id = uuid.uuid4().hex + uuid.uuid4().hex
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
        index = self._subnet_index * 64 + len(self.pods)
        pod.netns = f"podspan-{os.getpid()}-{index}"
        suffix = f"{os.getpid() % 10000}x{index}"
        host_if, pod_if = f"psh{suffix}"[:15], f"psp{suffix}"[:15]
        # A /30 per pod in a range only these test namespaces use.
        base = 4 * index
        subnet = f"10.231.{base // 256}"
        pod.host_ip, pod.pod_ip = f"{subnet}.{base % 256 + 1}", f"{subnet}.{base % 256 + 2}"
        for cmd in (
            ["ip", "netns", "add", pod.netns],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if],
            ["ip", "link", "set", pod_if, "netns", pod.netns],
            ["ip", "addr", "add", f"{pod.host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", pod.netns, "addr", "add", f"{pod.pod_ip}/30", "dev", pod_if],
            ["ip", "-n", pod.netns, "link", "set", pod_if, "up"],
            ["ip", "-n", pod.netns, "link", "set", "lo", "up"],
            ["ip", "-n", pod.netns, "route", "add", "default", "via", pod.host_ip],
        ):
            subprocess.run(cmd, check=True, capture_output=True)

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
