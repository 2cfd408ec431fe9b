"""cgroup v2: find the mount (never assume it), resolve paths to the ids BPF sees, and
compute where the kubelet puts a container's cgroup."""

from __future__ import annotations

import os
import pathlib


class CgroupError(ValueError):
    """A cgroup path that cannot be traced (missing, not cgroup v2)."""


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> pathlib.Path:
    with open(mountinfo) as lines:
        for line in lines:
            # mountinfo: ... mount_point ... - fstype source options
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return pathlib.Path(left.split()[4])
    raise CgroupError("no cgroup v2 filesystem is mounted")


def resolve(path: str, mount: pathlib.Path | None = None) -> pathlib.Path:
    """An existing cgroup v2 directory: absolute, or relative to the cgroup2 mount."""
    mount = mount or cgroup2_mount()
    candidate = pathlib.Path(path)
    if not candidate.is_absolute():
        candidate = mount / candidate
    if not candidate.is_dir():
        raise CgroupError(f"cgroup {path!r} does not exist (cgroup v2 is mounted at {mount})")
    if not (candidate / "cgroup.procs").exists() or mount not in (candidate, *candidate.parents):
        raise CgroupError(f"{candidate} is not a cgroup v2 directory under {mount}")
    return candidate


def cgroup_id(path: pathlib.Path) -> int:
    """The id bpf_get_current_cgroup_id() returns for tasks in this cgroup: its inode."""
    return os.stat(path).st_ino


# CRI runtime (container id prefix) -> the systemd scope prefix the runtime uses.
_SCOPE_PREFIX = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}


def kubelet_systemd_path(pod_uid: str, container_id: str, qos: str, runtime: str) -> pathlib.Path:
    """Relative cgroup path of a container under the kubelet's systemd cgroup driver."""
    slice_uid = pod_uid.replace("-", "_")
    parts = ["kubepods.slice"]
    # Guaranteed pods sit directly under kubepods.slice, without a QoS slice.
    prefix = "kubepods" if qos == "guaranteed" else f"kubepods-{qos}"
    if qos != "guaranteed":
        parts.append(f"{prefix}.slice")
    parts += [f"{prefix}-pod{slice_uid}.slice", f"{_SCOPE_PREFIX.get(runtime, runtime)}-{container_id}.scope"]
    return pathlib.Path(*parts)


def kubelet_cgroupfs_path(pod_uid: str, container_id: str, qos: str) -> pathlib.Path:
    """Relative cgroup path of a container under the kubelet's cgroupfs driver."""
    parts = ["kubepods"] + ([] if qos == "guaranteed" else [qos]) + [f"pod{pod_uid}", container_id]
    return pathlib.Path(*parts)
