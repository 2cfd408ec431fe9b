/* SPDX-License-Identifier: Apache-2.0
 * Podspan capture: syscall tracepoints for the selected cgroups/processes.
 * Tracks TCP connections from accept/connect to close, and UDP flows from
 * connect() or the first send with a destination, and turns their traffic into
 * one event per run (bytes in one direction between direction changes), so
 * userspace sees messages, not syscall chunks; a run whose first chunk was short
 * gets CONTINUATION events for its next chunks until its capture is full.
 * Datagram flows and HTTP/2 connections get one event per chunk instead (see
 * enum podspan_conn_flag).
 *
 * Compile-time options (-D): PODSPAN_CAPTURE_SIZE, PODSPAN_CHUNK_CAPTURE_SIZE,
 * PODSPAN_MAX_CONNS, PODSPAN_RINGBUF_PAGES, PODSPAN_WAKEUP_EVERY, PODSPAN_SELF_TGID,
 * PODSPAN_MAX_IOV, PODSPAN_GATHER_ENOUGH, PODSPAN_MAX_MMSG, PODSPAN_MAX_PIECES,
 * PODSPAN_MAX_CONTINUATIONS, and the kernel features the loader detects: PODSPAN_HAVE_MMSG
 * (sendmmsg/recvmmsg tracepoints), PODSPAN_HAVE_EXIT (sched_process_exit),
 * PODSPAN_HAVE_EXIT_GROUP_DEAD (its group_dead field), PODSPAN_HAVE_FORK (sched_process_fork,
 * sched_process_exec, sys_exit_clone), PODSPAN_HAVE_CLONE3 and PODSPAN_HAVE_SYS_FORK (the
 * fork/vfork syscalls, absent on arm64).
 */
#include <linux/socket.h>
#include "podspan_events.h"

#ifndef PODSPAN_MAX_CONNS
#define PODSPAN_MAX_CONNS 65536
#endif
#ifndef PODSPAN_RINGBUF_PAGES
#define PODSPAN_RINGBUF_PAGES 2048 /* 8 MiB with 4 KiB pages */
#endif
#ifndef PODSPAN_WAKEUP_EVERY
#define PODSPAN_WAKEUP_EVERY 64 /* per CPU: wake the consumer once per this many events */
#endif
#ifndef PODSPAN_SELF_TGID
#define PODSPAN_SELF_TGID 0
#endif
#ifndef PODSPAN_MAX_IOV
#define PODSPAN_MAX_IOV 64 /* iovecs gathered per chunk; gRPC writes one per HPACK string */
#endif
#ifndef PODSPAN_MAX_MMSG
#define PODSPAN_MAX_MMSG 4 /* messages of one sendmmsg/recvmmsg turned into events; glibc sends 2 */
#endif
#ifndef PODSPAN_GATHER_ENOUGH
/* Run mode: later iovecs are gathered only while fewer bytes than this are in, i.e. when the first
 * iovec held just a length prefix or frame header; headers that fill it need no more (and each
 * further iovec costs two user-memory reads). */
#define PODSPAN_GATHER_ENOUGH 64
#endif
#ifndef PODSPAN_MAX_PIECES
#define PODSPAN_MAX_PIECES 8 /* HTTP/2: events per syscall, each PODSPAN_CHUNK_CAPTURE_SIZE bytes */
#endif
#ifndef PODSPAN_MAX_CONTINUATIONS
/* CONTINUATION events per run: a length-prefixed message read as header then payload takes one; a
 * reader taking a run in many small pieces costs at most this many events more. */
#define PODSPAN_MAX_CONTINUATIONS 4
#endif

#define PODSPAN_EINPROGRESS 115
/* socket(2) ABI values; <linux/net.h> and <linux/in.h> would add ~1 s to every compile. */
#define PODSPAN_SOCK_DGRAM 2
#define PODSPAN_SOCK_TYPE_MASK 0xf
#define PODSPAN_IPPROTO_UDP 17
#define PODSPAN_H2_PREFACE_HEAD 0x5448202a20495250ULL /* "PRI * HT" read as a little-endian u64 */

enum io_shape {
    IO_BUF = 0,    /* read/write/recvfrom/sendto: one flat buffer */
    IO_IOVEC = 1,  /* readv/writev: an iovec array */
    IO_MSGHDR = 2, /* recvmsg/sendmsg: a user_msghdr holding an iovec array */
    IO_MMSG = 3,   /* recvmmsg/sendmmsg: an array of mmsghdr, the result counts messages */
    IO_NODATA = 4, /* sendfile: bytes counted, nothing to copy */
};

struct io_args {
    __u64 ptr;   /* buffer, iovec array, msghdr or mmsghdr array, by shape */
    __u64 count; /* readv/writev: iovecs in the array */
    __u64 addr;  /* sendto: destination, or 0 */
    __u32 addr_len;
    __s32 fd;
    __u8 shape;
    __u8 direction;
    __u8 open; /* no connection yet: a send on a UDP socket opens an unconnected flow on success */
    __u8 _pad[5];
};

struct accept_args {
    __u64 addr;     /* struct sockaddr __user * */
    __u64 addr_len; /* int __user * */
    __s32 listen_fd;
    __u32 _pad;
};

struct connect_args {
    __u8 addr[PODSPAN_SOCKADDR_SIZE];
    __u32 addr_len;
    __s32 fd;
};

/* A server connection a forked child may inherit: the one its parent accepted last. */
struct inheritable {
    __u64 conn_id; /* the parent's connection (still open at the fork: same conn_id in `conns`) */
    __s32 fd;
    __u32 addr_len;
    __u8 peer[PODSPAN_SOCKADDR_SIZE];
    struct podspan_conn_key listener; /* the parent and its listening socket */
    __u8 flags; /* the connection's enum podspan_conn_flag bits at the fork */
    __u8 _pad[3];
};

/* The connection a child process got from its parent at fork: closed when the child execs. */
struct inherited {
    __u64 conn_id;
    __s32 fd;
    __u32 _pad;
};

/* Userspace ABI layouts (stable, unlike kernel-internal structs). */
struct user_iovec {
    __u64 base;
    __u64 len;
};

struct user_msghdr_abi {
    __u64 name;
    __s32 namelen;
    __u32 _pad;
    __u64 iov;
    __u64 iovlen;
    __u64 control;
    __u64 controllen;
    __u32 flags;
    __u32 _pad2;
};

struct user_mmsghdr_abi {
    struct user_msghdr_abi hdr;
    __u32 len; /* bytes the kernel moved for this message */
    __u32 _pad;
};

/* Where a chunk's bytes are in user memory: one flat buffer, or an iovec array. */
struct chunk_src {
    __u64 buf;
    __u64 iov;
    __u64 iovlen;
};

/* A syscall's data handed from its exit program to capture_chunk (a tail call, same CPU). */
struct chunk_job {
    struct io_args io;
    __u64 pid_tgid;
    __u64 result;  /* the syscall's return: bytes moved, or messages for IO_MMSG */
    __u64 now;
    __u64 done;     /* bytes of the current chunk already sent as pieces (HTTP/2) */
    __u64 skip;     /* capture(): bytes still to pass over before gathering */
    __u32 message;  /* IO_MMSG: the message capture_chunk handles */
    __u32 piece;    /* HTTP/2: the piece of the current chunk capture_chunk handles */
    __u32 gathered; /* capture(): bytes gathered so far */
    __u32 _pad;
};

/* Per-CPU working memory of the data path. The slack lets the verifier prove that a copy of at
 * most PODSPAN_CHUNK_CAPTURE_SIZE bytes at any offset below that size stays inside the value. */
struct data_scratch {
    struct chunk_job job;
    struct podspan_data_event ev;
    __u8 slack[PODSPAN_CHUNK_CAPTURE_SIZE];
};

BPF_HASH(traced_cgroups, __u64, __u8, 4096);
BPF_HASH(traced_pids, __u32, __u8, 4096);
BPF_HASH(conns, struct podspan_conn_key, struct podspan_conn, PODSPAN_MAX_CONNS);
/* UDP sockets of traced processes, from socket(): only they may become flows at a send.
 * LRU because a socket closed before any traffic leaves its entry behind. */
BPF_TABLE("lru_hash", struct podspan_conn_key, __u8, dgram_socks, PODSPAN_MAX_CONNS);
BPF_HASH(io_inflight, __u64, struct io_args, 16384);
BPF_HASH(accept_inflight, __u64, struct accept_args, 4096);
BPF_HASH(connect_inflight, __u64, struct connect_args, 4096);
BPF_HASH(socket_inflight, __u64, __u8, 4096);
/* Accept-then-fork servers (PostgreSQL): per tgid, the connection accepted last; per child pid, what
 * its fork handed over until the child first runs; per tgid, the connection a child inherited. LRU:
 * their owners exit without telling. */
BPF_TABLE("lru_hash", __u32, struct inheritable, last_accepted, 16384);
BPF_TABLE("lru_hash", __u32, struct inheritable, forks_inflight, 4096);
BPF_TABLE("lru_hash", __u32, struct inherited, inherited, 16384);
BPF_ARRAY(conn_id_counter, __u64, 1);
BPF_PERCPU_ARRAY(stats, __u64, PODSPAN_STAT_MAX);
BPF_PERCPU_ARRAY(wakeup_counter, __u64, 1);
BPF_PERCPU_ARRAY(data_scratch, struct data_scratch, 1);
/* [0] = capture_chunk, filled by the loader. Capturing runs in one tail-called program so the
 * verifier checks its loops once, not once per syscall exit tracepoint. */
BPF_PROG_ARRAY(chunk_progs, 1);
BPF_RINGBUF_OUTPUT(events, PODSPAN_RINGBUF_PAGES);

static __always_inline void count_n(__u32 stat, __u64 n)
{
    __u64 *value = stats.lookup(&stat);
    if (value)
        *value += n;
}

static __always_inline void count(__u32 stat) { count_n(stat, 1); }

static __always_inline int is_traced(__u64 pid_tgid)
{
    __u32 tgid = pid_tgid >> 32;
    if (PODSPAN_SELF_TGID && tgid == PODSPAN_SELF_TGID)
        return 0;
    __u64 cgroup_id = bpf_get_current_cgroup_id();
    if (traced_cgroups.lookup(&cgroup_id))
        return 1;
    return traced_pids.lookup(&tgid) != 0;
}

static __always_inline __u64 wakeup_flags(void)
{
    /* Batch wake-ups: the consumer polls on a short timeout anyway, so only
     * every Nth event per CPU wakes it (bcc 0.26 has no ringbuf_query). */
    __u32 key = 0;
    __u64 *seen = wakeup_counter.lookup(&key);
    if (seen && (++*seen % PODSPAN_WAKEUP_EVERY) == 0)
        return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(void *event, __u64 size)
{
    if (events.ringbuf_output(event, size, wakeup_flags()) == 0)
        count(PODSPAN_STAT_EVENTS);
    else
        count(PODSPAN_STAT_EVENTS_LOST);
}

static __always_inline void fill_header(struct podspan_event_header *hdr, __u8 kind, __u64 pid_tgid,
                                        __s32 fd, const struct podspan_conn *conn, __u64 now)
{
    hdr->kind = kind;
    hdr->role = conn->role;
    hdr->direction = PODSPAN_DIR_NONE;
    hdr->flags = conn->flags;
    hdr->tgid = pid_tgid >> 32;
    hdr->tid = (__u32)pid_tgid;
    hdr->fd = fd;
    hdr->conn_id = conn->conn_id;
    hdr->cgroup_id = bpf_get_current_cgroup_id();
    hdr->ts_ns = now;
    hdr->prev = conn->run;
}

static __always_inline void close_event(__u64 pid_tgid, __s32 fd, const struct podspan_conn *conn)
{
    struct podspan_event_header ev = {};
    fill_header(&ev, PODSPAN_EV_CLOSE, pid_tgid, fd, conn, bpf_ktime_get_ns());
    emit(&ev, sizeof(ev));
}

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

/* ---- socket / accept / connect / close ---- */

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_traced(pid_tgid))
        return 0;
    int inet = args->family == AF_INET || args->family == AF_INET6;
    int udp = args->protocol == 0 || args->protocol == PODSPAN_IPPROTO_UDP; /* not ICMP "ping" sockets */
    __u8 dgram = inet && udp && (args->type & PODSPAN_SOCK_TYPE_MASK) == PODSPAN_SOCK_DGRAM;
    socket_inflight.update(&pid_tgid, &dgram);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u8 *dgram = socket_inflight.lookup(&pid_tgid);
    if (!dgram)
        return 0;
    __u8 is_dgram = *dgram;
    socket_inflight.delete(&pid_tgid);
    if (args->ret < 0)
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = (__s32)args->ret};
    /* Any new socket resets its fd's entry, so a stale one never marks a TCP socket. */
    if (is_dgram)
        dgram_socks.update(&key, &is_dgram);
    else
        dgram_socks.delete(&key);
    return 0;
}

/* A UDP socket bound to a fixed port serves (a DNS server, say): the replies it sends must not open
 * a client flow whose "peer" is whichever client asked first, so it stops being a candidate. */
TRACEPOINT_PROBE(syscalls, sys_enter_bind)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = args->fd};
    if (!dgram_socks.lookup(&key))
        return 0;
    __u8 addr[PODSPAN_SOCKADDR_SIZE] = {};
    /* sin_port and sin6_port both follow the 2-byte family. */
    if (read_inet_addr(addr, (__u64)args->umyaddr, args->addrlen) && *(__u16 *)(addr + 2) != 0)
        dgram_socks.delete(&key);
    return 0;
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

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
    return accept_enter(args->fd, (__u64)args->upeer_sockaddr, (__u64)args->upeer_addrlen);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
    return accept_enter(args->fd, (__u64)args->upeer_sockaddr, (__u64)args->upeer_addrlen);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_traced(pid_tgid))
        return 0;
    struct connect_args ca = {.fd = args->fd};
    ca.addr_len = read_inet_addr(ca.addr, (__u64)args->uservaddr, args->addrlen);
    if (ca.addr_len)
        connect_inflight.update(&pid_tgid, &ca);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct connect_args *ca = connect_inflight.lookup(&pid_tgid);
    if (!ca)
        return 0;
    /* Non-blocking connect reports EINPROGRESS and completes later. */
    if (args->ret == 0 || args->ret == -PODSPAN_EINPROGRESS) {
        struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = ca->fd};
        __u8 flags = dgram_socks.lookup(&key) ? PODSPAN_CONN_DATAGRAM : 0;
        open_conn(pid_tgid, ca->fd, PODSPAN_ROLE_CLIENT, flags, NULL, ca->addr, ca->addr_len);
    }
    connect_inflight.delete(&pid_tgid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = (__s32)args->fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (!conn)
        return 0;
    close_event(pid_tgid, key.fd, conn);
    if (conn->flags & PODSPAN_CONN_DATAGRAM)
        dgram_socks.delete(&key);
    conns.delete(&key);
    return 0;
}

#ifdef PODSPAN_HAVE_EXIT
/* A process that exits or is killed closes its sockets without close(): the EXIT event lets userspace
 * finish its connections (their last runs are still in `conns`) and delete their entries, which would
 * otherwise stay until the table is full. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
#ifdef PODSPAN_HAVE_EXIT_GROUP_DEAD
    /* The process's last thread: no sibling can move bytes on its connections afterwards. */
    if (!args->group_dead)
        return 0;
#else
    /* The group leader stands for the process (a sibling finishing a syscall may still follow). */
    if ((__u32)args->pid != pid_tgid >> 32)
        return 0;
#endif
    if (!is_traced(pid_tgid))
        return 0;
    struct podspan_conn none = {};
    struct podspan_event_header ev = {};
    fill_header(&ev, PODSPAN_EV_EXIT, pid_tgid, -1, &none, bpf_ktime_get_ns());
    emit(&ev, sizeof(ev));
    return 0;
}
#endif

#ifdef PODSPAN_HAVE_FORK
/* Accept-then-fork servers: the parent accepts, forks a child that serves the socket, and closes its
 * copy. Connections are keyed by (tgid, fd), so the child gets a connection of its own on the same
 * fd: the connection its parent accepted last, if the parent still holds it at the fork. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct inheritable *last = last_accepted.lookup(&tgid);
    if (!last)
        return 0;
    struct podspan_conn_key key = {.tgid = tgid, .fd = last->fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (!conn || conn->conn_id != last->conn_id)
        return 0; /* closed or replaced since */
    struct inheritable handed = *last;
    handed.flags = conn->flags;
    __u32 child = args->child_pid;
    forks_inflight.update(&child, &handed);
    return 0;
}

/* The child's first return to user space (clone/fork returning 0), before any syscall of its own. The
 * fork tracepoint cannot tell a thread from a process; here pid == tgid can: a thread shares its
 * process's connections already. */
static __always_inline int child_starts(long ret)
{
    if (ret != 0)
        return 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 pid = (__u32)pid_tgid;
    struct inheritable *found = forks_inflight.lookup(&pid);
    if (!found)
        return 0;
    struct inheritable handed = *found;
    forks_inflight.delete(&pid);
    if (pid != pid_tgid >> 32 || !is_traced(pid_tgid))
        return 0;
    struct inherited child = {.fd = handed.fd};
    child.conn_id = open_conn(pid_tgid, handed.fd, PODSPAN_ROLE_SERVER, handed.flags, &handed.listener, handed.peer,
                              handed.addr_len);
    if (child.conn_id)
        inherited.update(&pid, &child);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone) { return child_starts(args->ret); }
#ifdef PODSPAN_HAVE_CLONE3
TRACEPOINT_PROBE(syscalls, sys_exit_clone3) { return child_starts(args->ret); }
#endif
#ifdef PODSPAN_HAVE_SYS_FORK
TRACEPOINT_PROBE(syscalls, sys_exit_fork) { return child_starts(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_vfork) { return child_starts(args->ret); }
#endif

/* A child that execs (a spawned helper) usually had the socket close-on-exec: the fd is gone without
 * close(), and a file opened later under its number must not be captured as that connection. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tgid = pid_tgid >> 32;
    struct inherited *child = inherited.lookup(&tgid);
    if (!child)
        return 0;
    struct podspan_conn_key key = {.tgid = tgid, .fd = child->fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (conn && conn->conn_id == child->conn_id) {
        close_event(pid_tgid, key.fd, conn);
        conns.delete(&key);
    }
    inherited.delete(&tgid);
    return 0;
}
#endif

/* ---- data: read/write families ---- */

/* `may_open`: the syscall can carry a destination (sendto with an address, sendmsg, sendmmsg). */
static __always_inline int io_enter(struct io_args *io, int may_open)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = io->fd};
    /* The connection lookup comes first: it also filters files, pipes and
     * untraced processes, whose connections are never in the table. */
    if (!conns.lookup(&key)) {
        if (!may_open || !dgram_socks.lookup(&key))
            return 0;
        io->open = 1;
    }
    io_inflight.update(&pid_tgid, io);
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

/* Whether a chunk belongs to the run in progress: same direction, on a connection whose chunks are
 * not each a run of their own. */
static __always_inline int continues_run(const struct podspan_conn *conn, const struct io_args *io)
{
    return conn->run.direction == io->direction && !(conn->flags & (PODSPAN_CONN_DATAGRAM | PODSPAN_CONN_HTTP2));
}

/* Whether a chunk continuing the run is copied too: everything the run moved so far was captured
 * and the capture is not full. Readers that take a length header and then the payload, and writers
 * that send two messages in two syscalls, need it; a message moved by one syscall (HTTP/1's common
 * case) either fills the capture or is followed by the other direction, and never gets here. */
static __always_inline int wants_continuation(const struct podspan_conn *conn, const struct io_args *io)
{
    return io->shape != IO_NODATA && conn->captured < PODSPAN_CAPTURE_SIZE && conn->captured == conn->run.bytes &&
           conn->continuations < PODSPAN_MAX_CONTINUATIONS;
}

static __always_inline void extend_run(struct podspan_conn *conn, __u64 bytes, __u64 now)
{
    conn->run.end_ns = now;
    conn->run.bytes += bytes;
    conn->run.chunks += 1;
}

/* A chunk that continues the current run and needs no copy is only counted. Returns whether it was
 * folded. */
static __always_inline int fold_chunk(struct podspan_conn *conn, const struct io_args *io, __u64 bytes, __u64 now)
{
    if (!continues_run(conn, io) || wants_continuation(conn, io))
        return 0;
    extend_run(conn, bytes, now);
    count(io->shape == IO_NODATA ? PODSPAN_STAT_SENDFILE : PODSPAN_STAT_CHUNKS);
    return 1;
}

/* Copy up to `len` bytes from user memory to data[off]; returns the bytes copied.
 * Callers keep off < PODSPAN_CHUNK_CAPTURE_SIZE; the masks make that visible to the verifier. */
static __always_inline __u32 copy_at(struct data_scratch *s, __u32 off, __u64 src, __u64 len)
{
    off &= PODSPAN_CHUNK_CAPTURE_SIZE - 1;
    if (len > PODSPAN_CHUNK_CAPTURE_SIZE)
        len = PODSPAN_CHUNK_CAPTURE_SIZE;
    if (!len || bpf_probe_read_user(s->ev.data + off, len, (void *)src) != 0)
        return 0;
    return len;
}

/* Gather up to `limit` bytes of a chunk into the scratch event, starting `job.done` bytes in;
 * stop at an iovec boundary once `enough` bytes are in. */
static __always_inline __u32 capture(struct data_scratch *s, const struct chunk_src *src, __u32 limit,
                                     __u32 enough)
{
    if (src->buf)
        return copy_at(s, 0, src->buf + s->job.done, limit);
    /* The running offsets live in the map value, where the verifier does not track them: every
     * iteration then starts from the same state and checking the loop stays linear in its length
     * (kept in registers, each iteration's branches multiply the states to check). */
    volatile __u32 *gathered = &s->job.gathered;
    volatile __u64 *skip = &s->job.skip;
    *gathered = 0;
    *skip = s->job.done;
    for (int i = 0; i < PODSPAN_MAX_IOV; i++) {
        __u32 off = *gathered;
        if (i >= src->iovlen || off >= limit || off >= enough)
            break;
        struct user_iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(src->iov + i * sizeof(iov))) != 0)
            break;
        __u64 pass = *skip;
        if (pass >= iov.len) {
            *skip = pass - iov.len;
            continue;
        }
        *skip = 0;
        __u64 len = iov.len - pass;
        if (len > limit - off)
            len = limit - off; /* also cuts receive buffers to the bytes actually received */
        __u32 copied = copy_at(s, off, iov.base + pass, len);
        *gathered = off + copied;
        if (copied != len)
            break;
    }
    return *gathered;
}

/* Bytes of the capture a chunk may fill: a CONTINUATION gets what the run's capture still misses, a
 * new run the capture size (an HTTP/2 chunk the larger per-chunk one). */
static __always_inline __u32 capture_limit(const struct podspan_conn *conn, int continuation)
{
    if (!continuation)
        return (conn->flags & PODSPAN_CONN_HTTP2) ? PODSPAN_CHUNK_CAPTURE_SIZE : PODSPAN_CAPTURE_SIZE;
    __u32 have = conn->captured;
    /* Another thread on the same socket may have filled the capture since the check. */
    return have < PODSPAN_CAPTURE_SIZE ? PODSPAN_CAPTURE_SIZE - have : 0;
}

/* One chunk (a syscall, or one message of sendmmsg/recvmmsg) moved `bytes` bytes: fold it into the
 * current run, send it as a CONTINUATION of the run (whose capture is short), or start a run with an
 * event. On an HTTP/2 connection a chunk longer than the capture size is sent as several pieces
 * (runs), so frames past the first PODSPAN_CHUNK_CAPTURE_SIZE bytes are not lost; returns whether
 * another piece of this chunk follows. */
static __always_inline int on_chunk(struct data_scratch *s, struct podspan_conn *conn, const struct chunk_src *src,
                                    __u64 bytes)
{
    struct chunk_job *job = &s->job;
    if (fold_chunk(conn, &job->io, bytes, job->now))
        return 0;
    int continuation = continues_run(conn, &job->io); /* not folded: wants_continuation() held */
    __u64 rest = bytes - job->done;
    int every_chunk = conn->flags & (PODSPAN_CONN_DATAGRAM | PODSPAN_CONN_HTTP2);
    __u32 limit = capture_limit(conn, continuation);
    if (rest < limit)
        limit = rest;
    struct podspan_data_event *ev = &s->ev;
    fill_header(&ev->hdr, continuation ? PODSPAN_EV_CONTINUATION : PODSPAN_EV_DATA, job->pid_tgid, job->io.fd, conn,
                job->now);
    ev->hdr.direction = job->io.direction;
    ev->captured = 0;
    /* One call site: the gathering loop is verified once. */
    if (job->io.shape != IO_NODATA)
        ev->captured = capture(s, src, limit, every_chunk ? limit : PODSPAN_GATHER_ENOUGH);
    __u64 piece = rest;
    if (continuation) {
        extend_run(conn, bytes, job->now);
        conn->captured += ev->captured;
        conn->continuations += 1;
        count(PODSPAN_STAT_CONTINUATIONS);
    } else {
        /* HTTP/2 multiplexes streams within a run and HPACK needs every HEADERS frame, so from the
         * client preface on (prior knowledge, or after an h2c upgrade) every chunk is captured. */
        if (!every_chunk && ev->captured >= sizeof(__u64) && *(__u64 *)ev->data == PODSPAN_H2_PREFACE_HEAD) {
            conn->flags |= PODSPAN_CONN_HTTP2;
            ev->hdr.flags = conn->flags;
        }
        if ((conn->flags & PODSPAN_CONN_HTTP2) && rest > limit && job->piece + 1 < PODSPAN_MAX_PIECES)
            piece = limit;
        job->done += piece;
        struct podspan_run run = {.start_ns = job->now, .end_ns = job->now, .bytes = piece, .chunks = 1,
                                  .direction = job->io.direction};
        conn->run = run;
        conn->captured = ev->captured;
        conn->continuations = 0;
    }
    ev->chunk_bytes = piece;
    __u64 size = ev->captured;
    if (size > PODSPAN_CHUNK_CAPTURE_SIZE)
        size = PODSPAN_CHUNK_CAPTURE_SIZE;
    emit(ev, offsetof(struct podspan_data_event, data) + size);
    return piece < rest;
}

/* Tail-called by the exit programs with s->job filled. It handles one piece of one chunk and
 * tail-calls itself for the next piece (HTTP/2) or the next message of sendmmsg/recvmmsg (up to
 * PODSPAN_MAX_MMSG). The defaults stay within the kernel's 33 tail calls per syscall even for
 * PODSPAN_MAX_MMSG messages of PODSPAN_MAX_PIECES pieces each. */
int capture_chunk(void *ctx)
{
    __u32 zero = 0;
    struct data_scratch *s = data_scratch.lookup(&zero);
    if (!s)
        return 0;
    struct chunk_job *job = &s->job;
    if (job->io.open) {
        if (!open_unconnected(job->pid_tgid, &job->io))
            return 0;
        job->io.open = 0;
    }
    struct podspan_conn_key key = {.tgid = job->pid_tgid >> 32, .fd = job->io.fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (!conn)
        return 0;
    struct chunk_src src = {};
    __u64 bytes = job->result;
    __u8 shape = job->io.shape;
    if (shape == IO_BUF) {
        src.buf = job->io.ptr;
    } else if (shape == IO_IOVEC) {
        src.iov = job->io.ptr;
        src.iovlen = job->io.count;
    } else if (shape == IO_MSGHDR || shape == IO_MMSG) {
        struct user_mmsghdr_abi msg = {};
        __u64 at = job->io.ptr + (shape == IO_MMSG ? job->message * sizeof(msg) : 0);
        if (bpf_probe_read_user(&msg, shape == IO_MMSG ? sizeof(msg) : sizeof(msg.hdr), (void *)at) != 0)
            return 0;
        src.iov = msg.hdr.iov;
        src.iovlen = msg.hdr.iovlen;
        if (shape == IO_MMSG)
            bytes = msg.len;
    }
    if (on_chunk(s, conn, &src, bytes)) {
        job->piece += 1;
        chunk_progs.call(ctx, 0);
        return 0;
    }
    if (shape != IO_MMSG)
        return 0;
    job->message += 1;
    job->done = 0;
    job->piece = 0;
    if (job->message < job->result && job->message < PODSPAN_MAX_MMSG)
        chunk_progs.call(ctx, 0);
    else if (job->result > PODSPAN_MAX_MMSG)
        count_n(PODSPAN_STAT_MMSG_SKIPPED, job->result - PODSPAN_MAX_MMSG);
    return 0;
}

static __always_inline int io_exit(void *ctx, long ret)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct io_args *found = io_inflight.lookup(&pid_tgid);
    if (!found)
        return 0;
    struct io_args io = *found;
    io_inflight.delete(&pid_tgid);
    if (ret <= 0)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    /* Fast path: most chunks continue a run and need no capture. */
    if (!io.open && io.shape != IO_MMSG) {
        struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = io.fd};
        struct podspan_conn *conn = conns.lookup(&key);
        if (!conn || fold_chunk(conn, &io, ret, now))
            return 0;
    }
    __u32 zero = 0;
    struct data_scratch *s = data_scratch.lookup(&zero);
    if (!s)
        return 0;
    struct chunk_job job = {.io = io, .pid_tgid = pid_tgid, .result = ret, .now = now};
    s->job = job;
    chunk_progs.call(ctx, 0);
    return 0; /* reached only if the tail call failed: before the loader filled chunk_progs */
}

/* MAY_OPEN: whether the syscall can name a destination, so a UDP socket's first send opens a flow. */
#define IO_TRACEPOINTS(name, SHAPE, DIRECTION, MAY_OPEN, ...)                                    \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name)                                                 \
    {                                                                                            \
        struct io_args io = {.shape = SHAPE, .direction = DIRECTION, __VA_ARGS__};               \
        return io_enter(&io, MAY_OPEN);                                                          \
    }                                                                                            \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return io_exit(args, args->ret); }

IO_TRACEPOINTS(read, IO_BUF, PODSPAN_DIR_INGRESS, 0, .fd = args->fd, .ptr = (__u64)args->buf)
IO_TRACEPOINTS(recvfrom, IO_BUF, PODSPAN_DIR_INGRESS, 0, .fd = args->fd, .ptr = (__u64)args->ubuf)
IO_TRACEPOINTS(readv, IO_IOVEC, PODSPAN_DIR_INGRESS, 0, .fd = args->fd, .ptr = (__u64)args->vec,
               .count = args->vlen)
IO_TRACEPOINTS(recvmsg, IO_MSGHDR, PODSPAN_DIR_INGRESS, 0, .fd = args->fd, .ptr = (__u64)args->msg)
IO_TRACEPOINTS(write, IO_BUF, PODSPAN_DIR_EGRESS, 0, .fd = args->fd, .ptr = (__u64)args->buf)
IO_TRACEPOINTS(sendto, IO_BUF, PODSPAN_DIR_EGRESS, args->addr != 0, .fd = args->fd, .ptr = (__u64)args->buff,
               .addr = (__u64)args->addr, .addr_len = args->addr_len)
IO_TRACEPOINTS(writev, IO_IOVEC, PODSPAN_DIR_EGRESS, 0, .fd = args->fd, .ptr = (__u64)args->vec,
               .count = args->vlen)
IO_TRACEPOINTS(sendmsg, IO_MSGHDR, PODSPAN_DIR_EGRESS, 1, .fd = args->fd, .ptr = (__u64)args->msg)
IO_TRACEPOINTS(sendfile64, IO_NODATA, PODSPAN_DIR_EGRESS, 0, .fd = args->out_fd, .ptr = (__u64)args->offset)
#ifdef PODSPAN_HAVE_MMSG
IO_TRACEPOINTS(recvmmsg, IO_MMSG, PODSPAN_DIR_INGRESS, 0, .fd = args->fd, .ptr = (__u64)args->mmsg)
IO_TRACEPOINTS(sendmmsg, IO_MMSG, PODSPAN_DIR_EGRESS, 1, .fd = args->fd, .ptr = (__u64)args->mmsg)
#endif
