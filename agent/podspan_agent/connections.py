"""Connection tracking's types: what the span layer sees of a connection and of an exchange.

The table itself is native (`_conntable.Table`, agent/podspan_agent/_conntable.c): it takes batches of
ring-buffer records, feeds protocol parsers and returns exchanges (parser records with a frozen snapshot of
their connection). Data moves forward only: the tracer takes the exchanges after each batch and hands them on."""

from __future__ import annotations

import dataclasses

from podspan_agent import _conntable, sockaddr

Exchange = _conntable.Exchange


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the span layer sees of a connection: what it was at its first exchange, never changed after."""

    conn_id: int
    tgid: int
    fd: int
    role: int  # bpf_events.Role
    cgroup_id: int
    peer: sockaddr.Endpoint | None
    local: sockaddr.Endpoint | None
    datagram: bool  # UDP: every message is one datagram
    tls: bool  # its bytes came decrypted from a TLS library's probes
    tls_version: str | None  # "1.3", when the kernel could read it after the handshake
