/* SPDX-License-Identifier: Apache-2.0
 * Exchange sampling at request start (the overhead budget): on a connection userspace marked safe to skip
 * (sampled_conns), a request run starting in a cgroup with a skip threshold draws bpf_get_prandom_u32(); an
 * exchange drawn out is neither copied nor sent (no event for its request or its response run) but counted,
 * with its duration and status, in skipped_exchanges, so the RED metrics stay exact.
 */
#ifndef PODSPAN_SAMPLING_H
#define PODSPAN_SAMPLING_H

#include "podspan_maps.h"

#ifndef PODSPAN_MAX_SKIP_SERIES
#define PODSPAN_MAX_SKIP_SERIES 16384
#endif

/* cgroup id -> an exchange is skipped when bpf_get_prandom_u32() is below this; written by userspace. */
BPF_HASH(skip_thresholds, __u64, __u32, 4096);
/* LRU: userspace marks connections and never unmarks them; the conn_id tells a reused slot. */
BPF_TABLE("lru_hash", struct podspan_conn_key, struct podspan_sampled_conn, sampled_conns, PODSPAN_MAX_CONNS);
/* Shared, with atomic adds (as lost_by_cgroup): userspace reads it once a second. */
BPF_HASH(skipped_exchanges, struct podspan_skip_key, struct podspan_skip_counts, PODSPAN_MAX_SKIP_SERIES);

#define PODSPAN_WORD(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)
#define PODSPAN_ABOVE(bound) +(duration > (bound))

static __always_inline __u8 request_direction(const struct podspan_conn *conn)
{
    return conn->role == PODSPAN_ROLE_CLIENT ? PODSPAN_DIR_EGRESS : PODSPAN_DIR_INGRESS;
}

/* The histogram bucket of a duration: how many bounds lie below it (buckets are upper-inclusive). */
static __always_inline __u32 skip_bucket(__u64 duration, __u8 protocol)
{
    if (protocol == PODSPAN_SAMPLE_REDIS)
        return 0 PODSPAN_DB_BOUNDS_NS(PODSPAN_ABOVE);
    return 0 PODSPAN_HTTP_BOUNDS_NS(PODSPAN_ABOVE);
}

/* The skipped exchange of `conn` is over (the next request starts, or the connection ends): count it. */
static __always_inline void count_skipped(const struct podspan_conn *conn, __u32 tgid)
{
    const struct podspan_skip *skip = &conn->skip;
    struct podspan_skip_key key;
    __builtin_memset(&key, 0, sizeof(key)); /* every byte is part of the hash key */
    key.cgroup_id = bpf_get_current_cgroup_id();
    key.tgid = tgid;
    key.status = skip->status;
    key.role = conn->role;
    key.protocol = skip->protocol;
    key.method = skip->method;
    key.version = skip->version;
    key.error = skip->error || skip->direction == request_direction(conn); /* or no response before the close */
    count(PODSPAN_STAT_SKIPPED);
    struct podspan_skip_counts *counts = skipped_exchanges.lookup(&key);
    if (!counts) {
        struct podspan_skip_counts zero = {};
        skipped_exchanges.insert(&key, &zero); /* fails when another CPU made it first: then it is there */
        counts = skipped_exchanges.lookup(&key);
        if (!counts) {
            count(PODSPAN_STAT_SKIPPED_UNCOUNTED);
            return;
        }
    }
    __u64 duration = skip->end_ns - skip->start_ns;
    __u32 bucket = skip_bucket(duration, skip->protocol);
    /* The bucket first: userspace takes the buckets as the count and reads while this runs. */
    if (bucket < PODSPAN_SKIP_BUCKETS)
        __sync_fetch_and_add(&counts->buckets[bucket], 1);
    __sync_fetch_and_add(&counts->sum_ns, duration);
    __sync_fetch_and_add(&counts->count, 1);
}

/* The first `len` bytes a chunk moved (flat buffer, first iovec, or first iovec of a msghdr). 0 on success. */
static __always_inline int chunk_head(const struct io_args *io, __u64 moved, void *out, __u32 len)
{
    __u64 src = io->ptr;
    if (moved < len || io->shape == IO_NODATA || io->shape == IO_MMSG)
        return -1;
    if (io->shape == IO_MSGHDR) {
        struct user_msghdr_abi msg = {};
        if (bpf_probe_read_user(&msg, sizeof(msg), (void *)src) != 0 || !msg.iovlen)
            return -1;
        src = msg.iov;
    } else if (io->shape == IO_IOVEC && !io->count) {
        return -1;
    }
    if (io->shape != IO_BUF) {
        struct user_iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)src) != 0 || iov.len < len)
            return -1;
        src = iov.base;
    }
    return bpf_probe_read_user(out, len, (void *)src);
}

static __always_inline __u8 method_of(__u32 word)
{
    switch (word) {
    case PODSPAN_WORD('G', 'E', 'T', ' '): return PODSPAN_METHOD_GET;
    case PODSPAN_WORD('H', 'E', 'A', 'D'): return PODSPAN_METHOD_HEAD;
    case PODSPAN_WORD('P', 'O', 'S', 'T'): return PODSPAN_METHOD_POST;
    case PODSPAN_WORD('P', 'U', 'T', ' '): return PODSPAN_METHOD_PUT;
    case PODSPAN_WORD('D', 'E', 'L', 'E'): return PODSPAN_METHOD_DELETE;
    case PODSPAN_WORD('C', 'O', 'N', 'N'): return PODSPAN_METHOD_CONNECT;
    case PODSPAN_WORD('O', 'P', 'T', 'I'): return PODSPAN_METHOD_OPTIONS;
    case PODSPAN_WORD('T', 'R', 'A', 'C'): return PODSPAN_METHOD_TRACE;
    case PODSPAN_WORD('P', 'A', 'T', 'C'): return PODSPAN_METHOD_PATCH;
    default: return PODSPAN_METHOD_OTHER;
    }
}

/* A skipped exchange's response starts: its status (HTTP: "HTTP/1.x NNN"; Redis: an error reply). */
static __always_inline void read_status(struct podspan_skip *skip, const struct io_args *io, __u64 moved)
{
    __u8 head[12] = {};
    if (skip->protocol == PODSPAN_SAMPLE_REDIS) {
        if (chunk_head(io, moved, head, 1) == 0)
            skip->error = head[0] == '-' || head[0] == '!';
        return;
    }
    if (chunk_head(io, moved, head, sizeof(head)) != 0 || head[0] != 'H' || head[4] != '/' || head[5] != '1' ||
        head[6] != '.' || head[8] != ' ')
        return;
    if (head[7] == '0' || head[7] == '1')
        skip->version = head[7] == '0' ? PODSPAN_VERSION_10 : PODSPAN_VERSION_11;
    __u8 d0 = head[9] - '0', d1 = head[10] - '0', d2 = head[11] - '0';
    if (d0 <= 9 && d1 <= 9 && d2 <= 9)
        skip->status = d0 * 100 + d1 * 10 + d2;
}

/* At a request start: the protocol of a connection whose exchange the draw skips, else 0. The cgroup's
 * threshold comes first: without a budget the cost is this one lookup. */
static __always_inline __u8 draw_skip(const struct podspan_conn *conn, __u64 pid_tgid, __s32 fd)
{
    __u64 cgroup_id = bpf_get_current_cgroup_id();
    __u32 *threshold = skip_thresholds.lookup(&cgroup_id);
    if (!threshold || bpf_get_prandom_u32() >= *threshold)
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    struct podspan_sampled_conn *marked = sampled_conns.lookup(&key);
    if (!marked || marked->conn_id != conn->conn_id)
        return 0;
    return marked->protocol;
}

/* A chunk of `moved` bytes on `conn`: returns whether it belongs to a skipped exchange (so nothing else is done with
 * it). A chunk that starts a request ends the exchange skipped before it and draws for its own. */
static __always_inline int sample_chunk(struct podspan_conn *conn, const struct io_args *io, __u64 pid_tgid,
                                        __u64 moved, __u64 now)
{
    struct podspan_skip *skip = &conn->skip;
    if (skip->direction == io->direction) {
        skip->end_ns = now;
        return 1;
    }
    __u8 request = request_direction(conn);
    if (skip->direction != PODSPAN_DIR_NONE) {
        if (io->direction != request) { /* the skipped request's response starts */
            skip->direction = io->direction;
            skip->end_ns = now;
            read_status(skip, io, moved);
            return 1;
        }
        count_skipped(conn, pid_tgid >> 32);
        skip->direction = PODSPAN_DIR_NONE;
    } else if (io->direction != request || conn->run.direction == io->direction ||
               conn->run.direction == PODSPAN_DIR_NONE) {
        return 0; /* a response, a chunk that continues the run, or the connection's first run */
    }
    if (conn->flags & (PODSPAN_CONN_DATAGRAM | PODSPAN_CONN_HTTP2))
        return 0;
    __u8 protocol = draw_skip(conn, pid_tgid, io->fd);
    if (!protocol)
        return 0;
    struct podspan_skip next = {.start_ns = now, .end_ns = now, .direction = io->direction, .protocol = protocol};
    if (protocol == PODSPAN_SAMPLE_HTTP1) {
        __u32 word = 0;
        if (chunk_head(io, moved, &word, sizeof(word)) == 0) {
            if (word == PODSPAN_WORD('P', 'R', 'I', ' '))
                return 0; /* the HTTP/2 preface after an h2c upgrade: the kernel must see it */
            next.method = method_of(word);
        }
    }
    *skip = next;
    return 1;
}

#endif /* PODSPAN_SAMPLING_H */
