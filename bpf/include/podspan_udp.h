/* SPDX-License-Identifier: Apache-2.0
 * UDP (DNS): which sockets of traced processes are UDP (`dgram_socks`, from socket()), the ones a
 * bind() to a fixed port makes servers (not traced), and the client flow an unconnected socket's first
 * send opens. A connected UDP socket is opened by connect() (podspan_conns.h).
 */
#ifndef PODSPAN_UDP_H
#define PODSPAN_UDP_H

#include "podspan_conns.h"

/* socket(2) ABI values; <linux/net.h> and <linux/in.h> would add ~1 s to every compile. */
#define PODSPAN_SOCK_DGRAM 2
#define PODSPAN_SOCK_TYPE_MASK 0xf
#define PODSPAN_IPPROTO_UDP 17

static __always_inline int socket_enter(int family, int type, int protocol)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_traced(pid_tgid))
        return 0;
    int inet = family == AF_INET || family == AF_INET6;
    int udp = protocol == 0 || protocol == PODSPAN_IPPROTO_UDP; /* not ICMP "ping" sockets */
    __u8 dgram = inet && udp && (type & PODSPAN_SOCK_TYPE_MASK) == PODSPAN_SOCK_DGRAM;
    socket_inflight.update(&pid_tgid, &dgram);
    return 0;
}

static __always_inline int socket_exit(long ret)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u8 *dgram = socket_inflight.lookup(&pid_tgid);
    if (!dgram)
        return 0;
    __u8 is_dgram = *dgram;
    socket_inflight.delete(&pid_tgid);
    if (ret < 0)
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = (__s32)ret};
    /* Any new socket resets its fd's entry, so a stale one never marks a TCP socket. */
    if (is_dgram) {
        mark_tgid(key.tgid);
        dgram_socks.update(&key, &is_dgram);
    } else {
        dgram_socks.delete(&key);
    }
    return 0;
}

/* A UDP socket bound to a fixed port serves (a DNS server, say): the replies it sends must not open
 * a client flow whose "peer" is whichever client asked first, so it stops being a candidate. */
static __always_inline int bind_enter(__s32 fd, __u64 addr, __u32 addr_len)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!may_have_conns(pid_tgid >> 32))
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    if (!dgram_socks.lookup(&key))
        return 0;
    __u8 buf[PODSPAN_SOCKADDR_SIZE] = {};
    /* sin_port and sin6_port both follow the 2-byte family. */
    if (read_inet_addr(buf, addr, addr_len) && *(__u16 *)(buf + 2) != 0)
        dgram_socks.delete(&key);
    return 0;
}

/* A UDP socket without connect() becomes a client flow at its first successful send with an
 * IPv4/IPv6 destination, which is its peer. Returns whether the flow now exists. */
static __always_inline int open_unconnected(__u64 pid_tgid, const struct io_args *io)
{
    __u64 addr = io->addr;
    __u32 addr_len = io->addr_len;
    if (io->shape == IO_MSGHDR || io->shape == IO_MMSG) {
        /* An mmsghdr array starts with the first message's msghdr. */
        struct user_msghdr_abi msg = {};
        if (bpf_probe_read_user(&msg, sizeof(msg), (void *)io->ptr) != 0)
            return 0;
        addr = msg.name;
        addr_len = msg.namelen;
    }
    __u8 peer[PODSPAN_SOCKADDR_SIZE] = {};
    addr_len = read_inet_addr(peer, addr, addr_len);
    /* The selection may have changed since socket(): check it once, here. */
    if (!addr_len || !is_traced(pid_tgid))
        return 0;
    open_conn(pid_tgid, io->fd, PODSPAN_ROLE_CLIENT, PODSPAN_CONN_DATAGRAM | PODSPAN_CONN_UNCONNECTED, NULL, peer,
              addr_len);
    return 1;
}

#endif /* PODSPAN_UDP_H */
