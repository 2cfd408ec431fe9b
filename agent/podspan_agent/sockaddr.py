"""Socket addresses: decode raw sockaddr bytes from the kernel and look sockets up in /proc."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import struct


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    family: int  # socket.AF_INET or socket.AF_INET6

    @property
    def network_type(self) -> str:
        return "ipv6" if self.family == socket.AF_INET6 else "ipv4"


def decode(raw: bytes) -> Endpoint | None:
    """Decode a struct sockaddr_in / sockaddr_in6; None for anything else or short input."""
    if len(raw) < 8:
        return None
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return Endpoint(socket.inet_ntop(socket.AF_INET, raw[4:8]), port, family)
    if family == socket.AF_INET6 and len(raw) >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        mapped = address.ipv4_mapped
        if mapped is not None:
            return Endpoint(str(mapped), port, socket.AF_INET)
        return Endpoint(str(address), port, family)
    return None


def socket_inode(tgid: int, fd: int) -> int | None:
    try:
        target = os.readlink(f"/proc/{tgid}/fd/{fd}")
    except OSError:
        return None
    if not target.startswith("socket:["):
        return None
    return int(target[8:-1])


def _hex_endpoint(text: str, family: int) -> Endpoint:
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    # /proc prints the address as host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return Endpoint(str(address.ipv4_mapped), int(port_hex, 16), socket.AF_INET)
    return Endpoint(str(address), int(port_hex, 16), family)


def local_endpoint(tgid: int, fd: int) -> Endpoint | None:
    """The local address of a TCP socket, read from the process's own network namespace."""
    inode = socket_inode(tgid, fd)
    if inode is None:
        return None
    wanted = str(inode)
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{tgid}/net/{name}") as table:
                next(table, None)
                for line in table:
                    fields = line.split()
                    if len(fields) > 9 and fields[9] == wanted:
                        return _hex_endpoint(fields[1], family)
        except OSError:
            continue
    return None
