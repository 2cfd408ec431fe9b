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


def of_process(pid: int, mount: pathlib.Path | None = None) -> pathlib.Path | None:
    """The cgroup v2 directory process `pid` is in (None if it is gone or not in the v2 hierarchy)."""
    try:
        with open(f"/proc/{pid}/cgroup") as lines:
            for line in lines:
                if line.startswith("0::"):
                    return (mount or cgroup2_mount()) / line[3:].strip().lstrip("/")
    except OSError:
        return None
    return None


def processes(path: pathlib.Path) -> list[int]:
    """The processes (tgids) in cgroup `path` itself, not its descendants: what the cgroup filter traces.
    Empty when the cgroup is gone."""
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


# CRI runtime (container id prefix) -> the systemd scope prefix the runtime uses.
_SCOPE_PREFIX = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}


def kubelet_systemd_path(pod_uid: str, container_id: str, qos: str, runtime: str, root: str = "") -> pathlib.Path:
    """Relative cgroup path of a container under the kubelet's systemd cgroup driver; `root` is the
    kubelet's --cgroup-root without slashes ("" by default, "kubelet" on kind): systemd nests
    slices by name, so every slice below it carries the root as a prefix."""
    slice_uid = pod_uid.replace("-", "_")
    kubepods = f"{root}-kubepods" if root else "kubepods"
    parts = [f"{root}.slice"] if root else []
    parts.append(f"{kubepods}.slice")
    # Guaranteed pods sit directly under the kubepods slice, without a QoS slice.
    prefix = kubepods if qos == "guaranteed" else f"{kubepods}-{qos}"
    if qos != "guaranteed":
        parts.append(f"{prefix}.slice")
    parts += [f"{prefix}-pod{slice_uid}.slice", f"{_SCOPE_PREFIX.get(runtime, runtime)}-{container_id}.scope"]
    return pathlib.Path(*parts)


def kubelet_cgroupfs_path(pod_uid: str, container_id: str, qos: str, root: str = "") -> pathlib.Path:
    """Relative cgroup path of a container under the kubelet's cgroupfs driver (`root` as above)."""
    parts = ([root] if root else []) + ["kubepods"] + ([] if qos == "guaranteed" else [qos])
    return pathlib.Path(*parts, f"pod{pod_uid}", container_id)


def kubelet_roots(mount: pathlib.Path) -> list[str]:
    """The kubelet cgroup roots present on this host: "" (the default) and any top-level
    `<root>.slice/<root>-kubepods.slice` or `<root>/kubepods` (a kubelet run with --cgroup-root)."""
    roots = [""]
    try:
        entries = sorted(entry.name for entry in os.scandir(mount) if entry.is_dir())
    except OSError:
        return roots
    for name in entries:
        root = name.removesuffix(".slice")
        if (name.endswith(".slice") and (mount / name / f"{root}-kubepods.slice").is_dir()) or (
            not name.endswith(".slice") and (mount / name / "kubepods").is_dir()
        ):
            roots.append(root)
    return list(dict.fromkeys(roots))  # both drivers' layouts may exist for one root
