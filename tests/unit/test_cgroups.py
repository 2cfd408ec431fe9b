"""Where the kubelet puts a container's cgroup, under both drivers and non-default cgroup roots."""

from __future__ import annotations

import pathlib

import pytest

from podspan_agent import cgroups, node_agent
from podspan_api import models

UID = "8d5f3c2a-1b2c-4d5e-9f00-0123456789ab"
CID = "f" * 64


@pytest.mark.parametrize(
    ("qos", "root", "expected"),
    [
        ("burstable", "", "kubepods.slice/kubepods-burstable.slice/"
                          f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope"),
        ("guaranteed", "", f"kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope"),
        # kind runs its kubelet with --cgroup-root=/kubelet.
        ("besteffort", "kubelet", "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
                                  f"kubelet-kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
                                  f"cri-containerd-{CID}.scope"),
    ],
)
def test_systemd_driver_paths(qos: str, root: str, expected: str) -> None:
    assert cgroups.kubelet_systemd_path(UID, CID, qos, "containerd", root) == pathlib.Path(expected)


def test_cgroupfs_driver_paths() -> None:
    assert cgroups.kubelet_cgroupfs_path(UID, CID, "burstable") == pathlib.Path(f"kubepods/burstable/pod{UID}/{CID}")
    assert cgroups.kubelet_cgroupfs_path(UID, CID, "guaranteed", "kubelet") == pathlib.Path(
        f"kubelet/kubepods/pod{UID}/{CID}")


def test_roots_are_discovered_and_plan_finds_the_container(tmp_path: pathlib.Path) -> None:
    (tmp_path / "system.slice").mkdir()
    (tmp_path / "kubelet" / "kubepods").mkdir(parents=True)
    container = tmp_path / cgroups.kubelet_systemd_path(UID, CID, "burstable", "containerd", "kubelet")
    container.mkdir(parents=True)
    assert cgroups.kubelet_roots(tmp_path) == ["", "kubelet"]

    pod = models.PodTarget(uid=UID, namespace="shop", name="web-1", qos_class=models.QOSClass.BURSTABLE,
                           service_name="web",
                           containers=[models.ContainerTarget(name="app", container_id=f"containerd://{CID}",
                                                              profiles=["TraceProfile/shop/web"])])
    [plan] = node_agent.plan(models.NodeTraceConfigSpec(targets=[pod]), "node-1", tmp_path)
    assert plan.status.state == models.TargetState.ATTACHED
    assert plan.cgroup_id == cgroups.cgroup_id(container)
