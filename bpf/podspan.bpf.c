/* SPDX-License-Identifier: Apache-2.0
 * Podspan capture: syscall tracepoints for the selected cgroups/processes.
 * Tracks TCP connections from accept/connect to close and turns their
 * read/write traffic into one event per run (bytes in one direction between
 * direction changes), so userspace sees messages, not syscall chunks.
 *
 * Compile-time options (-D): PODSPAN_CAPTURE_SIZE, PODSPAN_MAX_CONNS,
 * PODSPAN_RINGBUF_PAGES, PODSPAN_WAKEUP_EVERY, PODSPAN_SELF_TGID.
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

#define PODSPAN_EINPROGRESS 115

enum io_shape {
    IO_BUF = 0,    /* read/write/recvfrom/sendto: one flat buffer */
    IO_IOVEC = 1,  /* readv/writev: an iovec array */
    IO_MSGHDR = 2, /* recvmsg/sendmsg: a user_msghdr holding an iovec array */
    IO_NODATA = 3, /* sendfile: bytes counted, nothing to copy */
};

struct io_args {
    __u64 ptr; /* buffer, iovec array or msghdr, by shape */
    __s32 fd;
    __u8 shape;
    __u8 direction;
    __u8 _pad[2];
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
};

BPF_HASH(traced_cgroups, __u64, __u8, 4096);
BPF_HASH(traced_pids, __u32, __u8, 4096);
BPF_HASH(conns, struct podspan_conn_key, struct podspan_conn, PODSPAN_MAX_CONNS);
BPF_HASH(io_inflight, __u64, struct io_args, 16384);
BPF_HASH(accept_inflight, __u64, struct accept_args, 4096);
BPF_HASH(connect_inflight, __u64, struct connect_args, 4096);
BPF_ARRAY(conn_id_counter, __u64, 1);
BPF_PERCPU_ARRAY(stats, __u64, PODSPAN_STAT_MAX);
BPF_PERCPU_ARRAY(wakeup_counter, __u64, 1);
BPF_PERCPU_ARRAY(data_scratch, struct podspan_data_event, 1);
BPF_RINGBUF_OUTPUT(events, PODSPAN_RINGBUF_PAGES);

static __always_inline void count(__u32 stat)
{
    __u64 *value = stats.lookup(&stat);
    if (value)
        *value += 1;
}

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
    hdr->tgid = pid_tgid >> 32;
    hdr->tid = (__u32)pid_tgid;
    hdr->fd = fd;
    hdr->conn_id = conn->conn_id;
    hdr->cgroup_id = bpf_get_current_cgroup_id();
    hdr->ts_ns = now;
    hdr->prev = conn->run;
}

/* A new connection replaces whatever the (tgid, fd) slot held: fd reuse
 * without a seen close() must not merge two connections. */
static __always_inline void open_conn(__u64 pid_tgid, __s32 fd, __u8 role, __s32 listen_fd,
                                      const void *addr, __u32 addr_len, int addr_is_user)
{
    __u32 zero = 0;
    __u64 *counter = conn_id_counter.lookup(&zero);
    if (!counter)
        return;
    struct podspan_conn conn = {};
    conn.conn_id = __sync_fetch_and_add(counter, 1) + 1;
    conn.role = role;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    if (conns.update(&key, &conn) != 0) {
        count(PODSPAN_STAT_CONN_FULL);
        return;
    }
    struct podspan_open_event ev = {};
    fill_header(&ev.hdr, PODSPAN_EV_OPEN, pid_tgid, fd, &conn, bpf_ktime_get_ns());
    ev.listen_fd = listen_fd;
    addr_len &= 0xff;
    if (addr_len > PODSPAN_SOCKADDR_SIZE)
        addr_len = PODSPAN_SOCKADDR_SIZE;
    if (addr && addr_len) {
        if (addr_is_user)
            bpf_probe_read_user(ev.peer, addr_len, addr);
        else
            bpf_probe_read_kernel(ev.peer, addr_len, addr);
        ev.addr_len = addr_len;
    }
    emit(&ev, sizeof(ev));
}

/* ---- accept / connect / close ---- */

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
    open_conn(pid_tgid, (__s32)ret, PODSPAN_ROLE_SERVER, args.listen_fd, (void *)args.addr, addr_len, 1);
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
    /* The mask keeps the verifier sure the length is non-negative. */
    __u32 len = args->addrlen & 0xff;
    if (len > PODSPAN_SOCKADDR_SIZE)
        len = PODSPAN_SOCKADDR_SIZE;
    if (len < sizeof(__u16) || bpf_probe_read_user(ca.addr, len, args->uservaddr) != 0)
        return 0;
    __u16 family = *(__u16 *)ca.addr;
    /* Unix sockets and other families carry no traffic we parse. */
    if (family != AF_INET && family != AF_INET6)
        return 0;
    ca.addr_len = len;
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
    if (args->ret == 0 || args->ret == -PODSPAN_EINPROGRESS)
        open_conn(pid_tgid, ca->fd, PODSPAN_ROLE_CLIENT, -1, ca->addr, ca->addr_len, 0);
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
    struct podspan_event_header ev = {};
    fill_header(&ev, PODSPAN_EV_CLOSE, pid_tgid, key.fd, conn, bpf_ktime_get_ns());
    conns.delete(&key);
    emit(&ev, sizeof(ev));
    return 0;
}

/* ---- data: read/write families ---- */

static __always_inline int io_enter(__s32 fd, __u64 ptr, __u8 shape, __u8 direction)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    /* The connection lookup comes first: it also filters files, pipes and
     * untraced processes, whose connections are never in the table. */
    if (!conns.lookup(&key))
        return 0;
    struct io_args io = {.ptr = ptr, .fd = fd, .shape = shape, .direction = direction};
    io_inflight.update(&pid_tgid, &io);
    return 0;
}

/* Resolve where the first chunk's bytes are in user memory. */
static __always_inline __u64 first_buffer(const struct io_args *io, __u64 *len)
{
    struct user_iovec iov = {};
    __u64 iov_ptr = io->ptr;
    if (io->shape == IO_BUF)
        return io->ptr;
    if (io->shape == IO_MSGHDR) {
        struct user_msghdr_abi msg = {};
        if (bpf_probe_read_user(&msg, sizeof(msg), (void *)io->ptr) != 0 || msg.iovlen == 0)
            return 0;
        iov_ptr = msg.iov;
    }
    if (bpf_probe_read_user(&iov, sizeof(iov), (void *)iov_ptr) != 0)
        return 0;
    if (iov.len < *len)
        *len = iov.len;
    return iov.base;
}

static __always_inline int io_exit(long ret)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct io_args *found = io_inflight.lookup(&pid_tgid);
    if (!found)
        return 0;
    struct io_args io = *found;
    io_inflight.delete(&pid_tgid);
    if (ret <= 0)
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = io.fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (!conn)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    if (conn->run.direction == io.direction) {
        conn->run.end_ns = now;
        conn->run.bytes += ret;
        conn->run.chunks += 1;
        count(io.shape == IO_NODATA ? PODSPAN_STAT_SENDFILE : PODSPAN_STAT_CHUNKS);
        return 0;
    }

    __u32 zero = 0;
    struct podspan_data_event *ev = data_scratch.lookup(&zero);
    if (!ev)
        return 0;
    fill_header(&ev->hdr, PODSPAN_EV_DATA, pid_tgid, io.fd, conn, now);
    ev->hdr.direction = io.direction;
    ev->chunk_bytes = ret;
    ev->captured = 0;
    if (io.shape != IO_NODATA) {
        __u64 len = ret;
        __u64 src = first_buffer(&io, &len);
        if (len > PODSPAN_CAPTURE_SIZE)
            len = PODSPAN_CAPTURE_SIZE;
        if (src && len && bpf_probe_read_user(ev->data, len, (void *)src) == 0)
            ev->captured = len;
    }
    struct podspan_run run = {.start_ns = now, .end_ns = now, .bytes = ret, .chunks = 1,
                              .direction = io.direction};
    conn->run = run;
    __u64 size = ev->captured;
    if (size > PODSPAN_CAPTURE_SIZE)
        size = PODSPAN_CAPTURE_SIZE;
    emit(ev, offsetof(struct podspan_data_event, data) + size);
    return 0;
}

#define IO_TRACEPOINTS(name, fd_field, ptr_field, shape, direction)                              \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name)                                                 \
    {                                                                                            \
        return io_enter((__s32)args->fd_field, (__u64)args->ptr_field, shape, direction);         \
    }                                                                                            \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return io_exit(args->ret); }

IO_TRACEPOINTS(read, fd, buf, IO_BUF, PODSPAN_DIR_INGRESS)
IO_TRACEPOINTS(recvfrom, fd, ubuf, IO_BUF, PODSPAN_DIR_INGRESS)
IO_TRACEPOINTS(readv, fd, vec, IO_IOVEC, PODSPAN_DIR_INGRESS)
IO_TRACEPOINTS(recvmsg, fd, msg, IO_MSGHDR, PODSPAN_DIR_INGRESS)
IO_TRACEPOINTS(write, fd, buf, IO_BUF, PODSPAN_DIR_EGRESS)
IO_TRACEPOINTS(sendto, fd, buff, IO_BUF, PODSPAN_DIR_EGRESS)
IO_TRACEPOINTS(writev, fd, vec, IO_IOVEC, PODSPAN_DIR_EGRESS)
IO_TRACEPOINTS(sendmsg, fd, msg, IO_MSGHDR, PODSPAN_DIR_EGRESS)
IO_TRACEPOINTS(sendfile64, out_fd, offset, IO_NODATA, PODSPAN_DIR_EGRESS)
