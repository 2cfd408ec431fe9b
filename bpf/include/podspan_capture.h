/* SPDX-License-Identifier: Apache-2.0
 * The data path: read/write-family syscalls on tracked connections. A chunk that continues a run is
 * folded into the connection's entry; one that starts a run (or continues one whose capture is short)
 * is copied, across iovecs, by capture_chunk, which the exit programs tail-call.
 */
#ifndef PODSPAN_CAPTURE_H
#define PODSPAN_CAPTURE_H

#include "podspan_udp.h"
#include "podspan_http2.h"
#include "podspan_tls_state.h"

#ifdef PODSPAN_ARGS_AT_EXIT
#include <asm/ptrace.h>
/* The syscall's arguments in the registers it was entered with (see PODSPAN_ARGS_AT_EXIT). */
#if defined(bpf_target_x86)
#define PODSPAN_SYSCALL_ARG1(regs) ((regs)->di)
#define PODSPAN_SYSCALL_ARG2(regs) ((regs)->si)
#define PODSPAN_SYSCALL_ARG3(regs) ((regs)->dx)
#define PODSPAN_SYSCALL_ARG4(regs) ((regs)->r10)
#define PODSPAN_SYSCALL_ARG5(regs) ((regs)->r8)
#define PODSPAN_SYSCALL_ARG6(regs) ((regs)->r9)
#else
#define PODSPAN_SYSCALL_ARG1(regs) ((regs)->orig_x0)
#define PODSPAN_SYSCALL_ARG2(regs) ((regs)->regs[1])
#define PODSPAN_SYSCALL_ARG3(regs) ((regs)->regs[2])
#define PODSPAN_SYSCALL_ARG4(regs) ((regs)->regs[3])
#define PODSPAN_SYSCALL_ARG5(regs) ((regs)->regs[4])
#define PODSPAN_SYSCALL_ARG6(regs) ((regs)->regs[5])
#endif

static __always_inline struct pt_regs *syscall_regs(void)
{
    return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}
#else
/* `may_open`: the syscall can carry a destination (sendto with an address, sendmsg, sendmmsg). */
static __always_inline int io_enter(struct io_args *io, int may_open)
{
    if (io->peek)
        return 0;
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
#endif

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

/* Bytes of the capture a chunk may fill, at most the `rest` it moved: a CONTINUATION gets what the run's
 * capture still misses, a new run the capture size (an HTTP/2 chunk the larger per-chunk one). */
static __always_inline __u32 chunk_limit(const struct podspan_conn *conn, int continuation, __u64 rest)
{
    __u32 limit;
    if (!continuation) {
        limit = (conn->flags & PODSPAN_CONN_HTTP2) ? PODSPAN_CHUNK_CAPTURE_SIZE : PODSPAN_CAPTURE_SIZE;
    } else {
        __u32 have = conn->captured;
        /* Another thread on the same socket may have filled the capture since the check. */
        limit = have < PODSPAN_CAPTURE_SIZE ? PODSPAN_CAPTURE_SIZE - have : 0;
    }
    return rest < limit ? rest : limit;
}

/* The header of the event a chunk that is not folded sends; `prev` is the run it ends, as the connection
 * holds it before end_chunk_event(). */
static __always_inline void begin_chunk_event(struct podspan_data_event *ev, const struct podspan_conn *conn,
                                              int continuation, const struct chunk_job *job)
{
    fill_header(&ev->hdr, continuation ? PODSPAN_EV_CONTINUATION : PODSPAN_EV_DATA, job->pid_tgid, job->io.fd, conn,
                job->now);
    ev->hdr.direction = job->io.direction;
    ev->captured = 0;
}

/* With ev->captured filled: the chunk extends the run (CONTINUATION) or starts one. Returns the bytes of
 * the chunk's `rest` the event covers: all, or on an HTTP/2 connection a piece of `limit` when more
 * follows. */
static __always_inline __u64 end_chunk_event(struct podspan_data_event *ev, struct podspan_conn *conn,
                                             int continuation, int every_chunk, struct chunk_job *job, __u64 bytes,
                                             __u64 rest, __u32 limit)
{
    __u64 piece = rest;
    if (continuation) {
        extend_run(conn, bytes, job->now);
        conn->captured += ev->captured;
        conn->continuations += 1;
        count(PODSPAN_STAT_CONTINUATIONS);
    } else if (!every_chunk && detect_tls(conn, ev)) {
        /* Ciphertext: the connection's plaintext run stays as it was. */
    } else {
        if (!every_chunk)
            detect_http2(conn, ev);
        piece = http2_piece(conn, job, rest, limit);
        job->done += piece;
        struct podspan_run run = {.start_ns = job->now, .end_ns = job->now, .bytes = piece, .chunks = 1,
                                  .direction = job->io.direction};
        conn->run = run;
        conn->captured = ev->captured;
        conn->continuations = 0;
    }
    ev->chunk_bytes = piece;
    return piece;
}

/* Tail-call capture_chunk: from the syscall tracepoints through chunk_progs, from the TLS library probes
 * (another program type, which one prog array cannot mix) through tls_chunk_progs, to capture_chunk_tls.
 * `from_uprobe` is a constant at every call site, so each program references one of the arrays. */
static __always_inline void call_capture(void *ctx, int from_uprobe)
{
    if (from_uprobe)
        tls_chunk_progs.call(ctx, 0);
    else
        chunk_progs.call(ctx, 0);
}

static __always_inline void emit_chunk_event(struct podspan_data_event *ev)
{
    __u64 size = ev->captured;
    if (size > PODSPAN_CHUNK_CAPTURE_SIZE)
        size = PODSPAN_CHUNK_CAPTURE_SIZE;
    emit(ev, offsetof(struct podspan_data_event, data) + size);
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
    __u32 limit = chunk_limit(conn, continuation, rest);
    struct podspan_data_event *ev = &s->ev;
    begin_chunk_event(ev, conn, continuation, job);
    /* One call site: the gathering loop is verified once. */
    if (job->io.shape != IO_NODATA)
        ev->captured = capture(s, src, limit, every_chunk ? limit : PODSPAN_GATHER_ENOUGH);
    __u64 piece = end_chunk_event(ev, conn, continuation, every_chunk, job, bytes, rest, limit);
    emit_chunk_event(ev);
    return piece < rest;
}

/* capture_chunk, tail-called by the exit programs with s->job filled. It handles one piece of one chunk and
 * tail-calls itself for the next piece (HTTP/2) or the next message of sendmmsg/recvmmsg (up to
 * PODSPAN_MAX_MMSG). The defaults stay within the kernel's 33 tail calls per syscall even for
 * PODSPAN_MAX_MMSG messages of PODSPAN_MAX_PIECES pieces each. */
static __always_inline int capture_job(void *ctx, int from_uprobe)
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
        call_capture(ctx, from_uprobe);
        return 0;
    }
    if (shape != IO_MMSG)
        return 0;
    job->message += 1;
    job->done = 0;
    job->piece = 0;
    if (job->message < job->result && job->message < PODSPAN_MAX_MMSG)
        call_capture(ctx, from_uprobe);
    else if (job->result > PODSPAN_MAX_MMSG)
        count_n(PODSPAN_STAT_MMSG_SKIPPED, job->result - PODSPAN_MAX_MMSG);
    return 0;
}

/* The common case in the exit program itself, without the tail call: a chunk that is not folded, on a
 * connection in run mode, from one flat buffer, or from an iovec array whose first iovec holds what the
 * chunk may capture or at least PODSPAN_GATHER_ENOUGH bytes (capture() would stop there too). Returns
 * -1, having done nothing, when capture_chunk must gather the chunk. */
static __always_inline int capture_inline(void *ctx, struct podspan_conn *conn, struct chunk_job *job,
                                          int from_uprobe)
{
    int continuation = continues_run(conn, &job->io);
    __u64 rest = job->result;
    __u32 limit = chunk_limit(conn, continuation, rest);
    __u64 src = job->io.ptr;
    __u64 len = limit;
    if (job->io.shape == IO_IOVEC) {
        struct user_iovec iov = {};
        if (job->io.count && bpf_probe_read_user(&iov, sizeof(iov), (void *)src) == 0) {
            if (iov.len == 0 || (iov.len < limit && iov.len < PODSPAN_GATHER_ENOUGH && job->io.count > 1))
                return -1;
            src = iov.base;
            if (len > iov.len)
                len = iov.len;
        } else {
            len = 0; /* capture() gathers nothing either */
        }
    }
    __u32 zero = 0;
    struct data_scratch *s = data_scratch.lookup(&zero);
    if (!s)
        return 0;
    struct podspan_data_event *ev = &s->ev;
    begin_chunk_event(ev, conn, continuation, job);
    ev->captured = copy_at(s, 0, src, len);
    __u64 piece = end_chunk_event(ev, conn, continuation, 0, job, rest, rest, limit);
    emit_chunk_event(ev);
    if (piece < rest) { /* the run began with the HTTP/2 preface: capture_chunk sends the other pieces */
        job->piece = 1;
        s->job = *job;
        call_capture(ctx, from_uprobe);
    }
    return 0;
}

/* A read/write-family syscall moved `ret` > 0 bytes on a tracked connection (`conn`), or (io->open, conn
 * NULL) sent on a UDP socket that may open a flow; or (`from_uprobe`) a TLS call moved `ret` bytes of
 * plaintext on `conn`. `now`: when the chunk moved. */
static __always_inline int on_io(void *ctx, __u64 pid_tgid, long ret, const struct io_args *io,
                                 struct podspan_conn *conn, int from_uprobe, __u64 now)
{
    if (conn && io->shape != IO_MMSG && sample_chunk(conn, io, pid_tgid, ret, now))
        return 0; /* an exchange the draw skipped */
    struct chunk_job job = {.io = *io, .pid_tgid = pid_tgid, .result = ret, .now = now};
    if (conn && io->shape != IO_MMSG) {
        /* Most chunks continue a run and need no capture. */
        if (fold_chunk(conn, io, ret, job.now))
            return 0;
        if ((io->shape == IO_BUF || io->shape == IO_IOVEC) &&
            !(conn->flags & (PODSPAN_CONN_DATAGRAM | PODSPAN_CONN_HTTP2)) &&
            capture_inline(ctx, conn, &job, from_uprobe) == 0)
            return 0;
    }
    __u32 zero = 0;
    struct data_scratch *s = data_scratch.lookup(&zero);
    if (!s)
        return 0;
    s->job = job;
    call_capture(ctx, from_uprobe);
    return 0; /* reached only if the tail call failed: before the loader filled the prog array */
}

#ifdef PODSPAN_ARGS_AT_EXIT
/* The exit program of a read/write-family syscall, `io` filled from its registers. `may_open`: the
 * syscall can carry a destination (sendto with an address, sendmsg, sendmmsg). The connection lookup
 * comes first: it also filters files, pipes and untraced processes, whose connections are never in
 * the table. */
static __always_inline int io_exit(void *ctx, __u64 pid_tgid, long ret, struct io_args *io, int may_open)
{
    if (io->peek)
        return 0;
    struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = io->fd};
    struct podspan_conn *conn = conns.lookup(&key);
    if (!conn) {
        if (!may_open || !dgram_socks.lookup(&key))
            return 0;
        io->open = 1;
    } else if (tls_ciphertext(pid_tgid, io->fd, conn)) {
        return 0;
    }
    return on_io(ctx, pid_tgid, ret, io, conn, 0, bpf_ktime_get_ns());
}
#else
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
    struct podspan_conn *conn = NULL;
    if (!io.open) {
        struct podspan_conn_key key = {.tgid = pid_tgid >> 32, .fd = io.fd};
        conn = conns.lookup(&key);
        if (!conn || tls_ciphertext(pid_tgid, io.fd, conn))
            return 0;
    }
    return on_io(ctx, pid_tgid, ret, &io, conn, 0, bpf_ktime_get_ns());
}
#endif

#endif /* PODSPAN_CAPTURE_H */
