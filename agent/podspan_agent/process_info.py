"""Resource attributes of the processes behind connections (pid, executable, container id), cached."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from podspan_agent import connections
from podspan_agent.protocols import base

_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_MAX_CACHED = 4096

Attributes = dict[str, base.AttributeValue]


def container_id(tgid: int) -> str | None:
    try:
        with open(f"/proc/{tgid}/cgroup") as lines:
            for line in lines:
                match = _CONTAINER_ID.search(line)
                if match:
                    return match.group(1)
    except OSError:
        return None
    return None


def declared_service_name(tgid: int) -> str | None:
    """OTEL_SERVICE_NAME from the process's own environment, as an SDK in it would use."""
    try:
        with open(f"/proc/{tgid}/environ", "rb") as environ:
            for entry in environ.read().split(b"\0"):
                if entry.startswith(b"OTEL_SERVICE_NAME="):
                    return entry[len(b"OTEL_SERVICE_NAME=") :].decode(errors="replace") or None
    except OSError:
        return None
    return None


def executable_name(tgid: int) -> str | None:
    try:
        with open(f"/proc/{tgid}/comm") as comm:
            return comm.read().strip() or None
    except OSError:
        return None


class ResourceResolver:
    """Per-process resource attributes plus whatever the mode knows about the cgroup
    (Kubernetes: the pod's k8s.* attributes and service.name, which win)."""

    def __init__(self, for_cgroup: Callable[[int], Attributes]) -> None:
        self._for_cgroup = for_cgroup
        self._cache: dict[tuple[int, int], Attributes] = {}
        self._host = socket.gethostname()

    def __call__(self, conn: connections.ConnectionInfo) -> Attributes:
        return self.of(conn.tgid, conn.cgroup_id)

    def of(self, tgid: int, cgroup_id: int) -> Attributes:
        """The attributes of process `tgid` in cgroup `cgroup_id`."""
        key = (tgid, cgroup_id)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            found = self._cache[key] = self._resolve(tgid, cgroup_id)
        return found

    def forget_cgroup(self, cgroup: int) -> None:
        for key in [k for k in self._cache if k[1] == cgroup]:
            del self._cache[key]

    def _resolve(self, tgid: int, cgroup: int) -> Attributes:
        attributes: Attributes = {"host.name": self._host, "process.pid": tgid}
        exe = executable_name(tgid)
        if exe:
            attributes["process.executable.name"] = exe
        service = declared_service_name(tgid) or exe
        if service:
            attributes["service.name"] = service
        cid = container_id(tgid)
        if cid:
            attributes["container.id"] = cid
        attributes.update(self._for_cgroup(cgroup))
        return attributes
