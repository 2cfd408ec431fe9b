/* SPDX-License-Identifier: Apache-2.0
 * The capture program's own structs (syscall state stashed between enter and exit, the data path's
 * per-CPU scratch, userspace ABI layouts), every map, and the lookups all parts share: the stats
 * counters and the selection check.
 */
#ifndef PODSPAN_MAPS_H
#define PODSPAN_MAPS_H

#include "podspan_events.h"
#include "podspan_config.h"

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
    __u8 peek; /* recvfrom/recvmsg with MSG_PEEK: the bytes stay queued for the next read, which captures them */
    __u8 _pad[4];
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
#ifndef PODSPAN_ARGS_AT_EXIT
BPF_HASH(io_inflight, __u64, struct io_args, 16384);
#endif
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
#ifdef PODSPAN_TGID_FILTER
/* Bit (tgid & 63) of word (tgid >> 6): the process got an entry in `conns` or `dgram_socks` (set before
 * the entry); cleared when its last thread exits. Entries userspace deletes leave the bit set, which only
 * costs that process the hash lookup again. Tgids are below PID_MAX_LIMIT, 2^22 on 64-bit. */
#define PODSPAN_TGID_LIMIT (1U << 22)
BPF_ARRAY(conn_tgids, __u64, PODSPAN_TGID_LIMIT / 64);
#endif
BPF_PERCPU_ARRAY(stats, __u64, PODSPAN_STAT_MAX);
/* Ring-buffer reservations that failed, per cgroup of the process that lost them: a profile's status
 * reports only its own pods' losses. Written by the kernel, read by userspace. */
BPF_HASH(lost_by_cgroup, __u64, __u64, 4096);
BPF_PERCPU_ARRAY(wakeup_counter, __u64, 1);
BPF_PERCPU_ARRAY(data_scratch, struct data_scratch, 1);
/* [0] = capture_chunk, filled by the loader. Capturing runs in one tail-called program so the
 * verifier checks its loops once, not once per syscall exit tracepoint. */
BPF_PROG_ARRAY(chunk_progs, 1);
/* [0] = capture_chunk_tls: the same for the TLS library probes, whose program type differs. */
BPF_PROG_ARRAY(tls_chunk_progs, 1);
BPF_RINGBUF_OUTPUT(events, PODSPAN_RINGBUF_PAGES);

static __always_inline void count_n(__u32 stat, __u64 n)
{
    __u64 *value = stats.lookup(&stat);
    if (value)
        *value += n;
}

static __always_inline void count(__u32 stat) { count_n(stat, 1); }

/* Whether process `tgid` may have entries in `conns` or `dgram_socks`: unselected processes (no bit)
 * return from the data and close programs after one array read instead of a hash lookup. */
static __always_inline int may_have_conns(__u32 tgid)
{
#ifdef PODSPAN_TGID_FILTER
    if (tgid >= PODSPAN_TGID_LIMIT)
        return 1;
    __u32 word = tgid >> 6;
    __u64 *bits = conn_tgids.lookup(&word);
    return !bits || (*bits & (1ULL << (tgid & 63)));
#else
    return 1;
#endif
}

/* Before process `tgid` gets an entry in `conns` or `dgram_socks`. */
static __always_inline void mark_tgid(__u32 tgid)
{
#ifdef PODSPAN_TGID_FILTER
    __u32 word = tgid >> 6;
    __u64 bit = 1ULL << (tgid & 63);
    __u64 *bits = conn_tgids.lookup(&word);
    if (bits && !(*bits & bit))
        __sync_fetch_and_or(bits, bit);
#endif
}

/* Process `tgid` is gone (its last thread exits): no syscall of it can follow. */
static __always_inline void unmark_tgid(__u32 tgid)
{
#ifdef PODSPAN_TGID_FILTER
    __u32 word = tgid >> 6;
    __u64 bit = 1ULL << (tgid & 63);
    __u64 *bits = conn_tgids.lookup(&word);
    if (bits && (*bits & bit))
        __sync_fetch_and_and(bits, ~bit);
#endif
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

#endif /* PODSPAN_MAPS_H */
