/* SPDX-License-Identifier: Apache-2.0
 * Connections: the `conns` table keyed by (tgid, fd), opened at accept()/connect() (and, see
 * podspan_udp.h and podspan_process.h, at a UDP socket's first send or a fork), closed at close().
 */
#ifndef PODSPAN_CONNS_H
#define PODSPAN_CONNS_H

#include "podspan_output.h"

/* Copy an IPv4/IPv6 socket address from user memory; its length, or 0 for anything else. */
static __always_inline __u32 read_inet_addr(__u8 *out, __u64 addr, __u32 addr_len)
{
    /* The mask keeps the verifier sure the length is non-negative. */
    __u32 len = addr_len & 0xff;
    if (len > PODSPAN_SOCKADDR_SIZE)
        len = PODSPAN_SOCKADDR_SIZE;
    if (!addr || len < sizeof(__u16) || bpf_probe_read_user(out, len, (void *)addr) != 0)
        return 0;
    __u16 family = *(__u16 *)out;
    /* Unix sockets and other families carry no traffic we parse. */
    if (family != AF_INET && family != AF_INET6)
        return 0;
    return len;
}

/* A new connection replaces whatever the (tgid, fd) slot held: fd reuse without a seen
 * close(), or a UDP socket connected again, must not merge two connections. `listener`: the
 * process and listening socket that accepted it (NULL for clients); `peer` is a kernel-side copy
 * of the peer's address. Returns the new conn_id, 0 if it is not tracked. */
static __always_inline __u64 open_conn(__u64 pid_tgid, __s32 fd, __u8 role, __u8 flags,
                                       const struct podspan_conn_key *listener, const __u8 *peer, __u32 addr_len)
{
    __u32 zero = 0;
    __u64 *counter = conn_id_counter.lookup(&zero);
    if (!counter)
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    struct podspan_conn *old = conns.lookup(&key);
    if (old)
        close_event(pid_tgid, fd, old);
    struct podspan_conn conn = {};
    conn.conn_id = __sync_fetch_and_add(counter, 1) + 1;
    conn.role = role;
    conn.flags = flags;
    mark_tgid(key.tgid);
    if (conns.update(&key, &conn) != 0) {
        count(PODSPAN_STAT_CONN_FULL);
        return 0;
    }
    struct podspan_open_event ev = {};
    fill_header(&ev.hdr, PODSPAN_EV_OPEN, pid_tgid, fd, &conn, bpf_ktime_get_ns());
    ev.listen_fd = listener ? listener->fd : -1;
    ev.listen_tgid = listener ? listener->tgid : 0;
    if (addr_len > PODSPAN_SOCKADDR_SIZE)
        addr_len = PODSPAN_SOCKADDR_SIZE;
    if (addr_len) {
        bpf_probe_read_kernel(ev.peer, addr_len, peer);
        ev.addr_len = addr_len;
    }
    emit(&ev, sizeof(ev));
    return conn.conn_id;
}

static __always_inline int accept_enter(__s32 listen_fd, __u64 addr, __u64 addr_len)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_traced(pid_tgid))
        return 0;
    struct accept_args args = {.addr = addr, .addr_len = addr_len, .listen_fd = listen_fd};
    accept_inflight.update(&pid_tgid, &args);
    return 0;
}

static __always_inline int accept_exit(long ret)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct accept_args *found = accept_inflight.lookup(&pid_tgid);
    if (!found)
        return 0;
    struct accept_args args = *found;
    accept_inflight.delete(&pid_tgid);
    if (ret < 0)
        return 0;
    __u32 addr_len = 0;
    if (args.addr && args.addr_len)
        bpf_probe_read_user(&addr_len, sizeof(addr_len), (void *)args.addr_len);
    __u32 tgid = pid_tgid >> 32;
    struct inheritable last = {.fd = (__s32)ret, .listener = {.tgid = tgid, .fd = args.listen_fd}};
    last.addr_len = read_inet_addr(last.peer, args.addr, addr_len);
    last.conn_id = open_conn(pid_tgid, last.fd, PODSPAN_ROLE_SERVER, 0, &last.listener, last.peer, last.addr_len);
#ifdef PODSPAN_HAVE_FORK
    if (last.conn_id) /* a child forked from here may serve it */
        last_accepted.update(&tgid, &last);
#endif
    return 0;
}

static __always_inline int connect_enter(__s32 fd, __u64 addr, __u32 addr_len)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_traced(pid_tgid))
        return 0;
    struct connect_args ca = {.fd = fd};
    ca.addr_len = read_inet_addr(ca.addr, addr, addr_len);
    if (ca.addr_len)
        connect_inflight.update(&pid_tgid, &ca);
    return 0;
}

static __always_inline int connect_exit(long ret)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct connect_args *ca = connect_inflight.lookup(&pid_tgid);
    if (!ca)
        return 0;
    /* Non-blocking connect reports EINPROGRESS and completes later. */
    if (ret == 0 || ret == -PODSPAN_EINPROGRESS) {
        struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = ca->fd};
        __u8 flags = dgram_socks.lookup(&key) ? PODSPAN_CONN_DATAGRAM : 0;
        open_conn(pid_tgid, ca->fd, PODSPAN_ROLE_CLIENT, flags, NULL, ca->addr, ca->addr_len);
    }
    connect_inflight.delete(&pid_tgid);
    return 0;
}

static __always_inline int close_enter(__s32 fd)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!may_have_conns(pid_tgid >> 32))
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (!conn)
        return 0;
    close_event(pid_tgid, key.fd, conn);
    if (conn->flags & PODSPAN_CONN_DATAGRAM)
        dgram_socks.delete(&key);
    conns.delete(&key);
    return 0;
}

#endif /* PODSPAN_CONNS_H */
