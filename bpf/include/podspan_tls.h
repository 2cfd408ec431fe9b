/* SPDX-License-Identifier: Apache-2.0
 * TLS plaintext from OpenSSL (1.1 and 3.x; libssl, or an executable that links it statically): uprobes on
 * SSL_read, SSL_read_ex, SSL_write and SSL_write_ex (and SSL_do_handshake, which SSL_connect and SSL_accept
 * call) remember the call per thread; the syscalls the call makes tie its SSL object to a tracked
 * connection (podspan_tls_state.h) and are not captured; on return the plaintext goes through the data
 * path like a syscall's bytes on that connection, so runs, protocol detection and correlation see HTTP,
 * not ciphertext. The handshake matters for servers that read ahead (nginx): the records that end it may
 * bring the first request along, which SSL_read then returns without a syscall of its own. SSL_free
 * forgets the SSL object.
 */
#ifndef PODSPAN_TLS_H
#define PODSPAN_TLS_H

#include "podspan_capture.h"
#include "podspan_tls_state.h"

/* Entry of SSL_read/SSL_write (`direction` of their plaintext; NONE for SSL_do_handshake); `ex`: the _ex variant, whose fourth
 * argument points to the byte count it stores. Only selected processes with tracked connections pay
 * more than the selection check. */
static __always_inline int tls_call_enter(struct pt_regs *ctx, __u8 direction, int ex)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!may_have_conns(pid_tgid >> 32) || !is_traced(pid_tgid))
        return 0;
    struct tls_call call = {.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx), .start_ns = bpf_ktime_get_ns(),
                            .fd = -1, .direction = direction};
    if (ex)
        call.size_ptr = PT_REGS_PARM4(ctx);
    if (tls_calls.update(&pid_tgid, &call) == 0)
        mark_tls_thread((__u32)pid_tgid, 1);
    return 0;
}

/* The connection the call's plaintext belongs to: the one a syscall inside the call used (remembered for
 * the SSL object at the return), else the one the SSL object used before. NULL when neither is tracked
 * (counted, if `count_unmapped`). */
static __always_inline struct podspan_conn *tls_call_conn(const struct tls_call *call, __u32 tgid, __s32 *fd,
                                                          int count_unmapped)
{
    struct ssl_key key = {.ssl = call->ssl, .tgid = tgid};
    struct ssl_conn where = {.conn_id = call->conn_id, .fd = call->fd};
    if (!call->conn_id) {
        struct ssl_conn *known = ssl_conns.lookup(&key);
        if (!known) {
            if (count_unmapped)
                count(PODSPAN_STAT_TLS_UNMAPPED);
            return NULL;
        }
        where = *known;
    }
    struct podspan_conn_key conn_key = {.tgid = tgid, .fd = where.fd};
    struct podspan_conn *conn = conns.lookup(&conn_key);
    if (!conn || conn->conn_id != where.conn_id) { /* closed since, or its fd reused */
        if (count_unmapped)
            count(PODSPAN_STAT_TLS_UNMAPPED);
        return NULL;
    }
    *fd = where.fd;
    return conn;
}

/* A TLS call returned having moved `bytes` of plaintext (<= 0: none, or an error): a syscall inside
 * (successful or not) tied its SSL object to its connection; the plaintext goes out on that connection. */
static __always_inline int tls_call_done(struct pt_regs *ctx, __u64 pid_tgid, const struct tls_call *call,
                                         __s64 bytes)
{
    if (call->conn_id) {
        struct ssl_key key = {.ssl = call->ssl, .tgid = pid_tgid >> 32};
        struct ssl_conn where = {.conn_id = call->conn_id, .fd = call->fd};
        ssl_conns.update(&key, &where);
    }
    if (call->direction == PODSPAN_DIR_NONE || bytes <= 0 || call->sent)
        return 0;
    struct io_args io = {.ptr = call->buf, .shape = IO_BUF, .direction = call->direction};
    struct podspan_conn *conn = tls_call_conn(call, pid_tgid >> 32, &io.fd, 1);
    if (!conn)
        return 0;
    /* A write's bytes count from the call's entry (encrypting and sending them takes the call's time, and
     * the peer may read them before the return), a read's from its return, as a syscall's do. */
    __u64 now = call->direction == PODSPAN_DIR_EGRESS ? call->start_ns : bpf_ktime_get_ns();
    return on_io(ctx, pid_tgid, bytes, &io, conn, 1, now);
}

/* Return of SSL_read/SSL_write(_ex) or SSL_do_handshake. */
static __always_inline int tls_call_return(struct pt_regs *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct tls_call *found = current_tls_call(pid_tgid);
    if (!found)
        return 0;
    struct tls_call call = *found;
    tls_calls.delete(&pid_tgid);
    mark_tls_thread((__u32)pid_tgid, 0);
    int ret = (int)PT_REGS_RC(ctx); /* an int: the upper half of the register is not part of it */
    __s64 bytes = ret;
    if (call.direction == PODSPAN_DIR_NONE) {
        __u32 version = 0;
        if (ret == 1) /* the handshake is done: the version is negotiated */
            bpf_probe_read_user(&version, sizeof(version), (void *)call.ssl);
        tls_handshake_done(&call, pid_tgid >> 32, ret == 1, version);
    } else if (ret > 0 && call.size_ptr && bpf_probe_read_user(&bytes, sizeof(bytes), (void *)call.size_ptr) != 0) {
        bytes = 0;
    }
    return tls_call_done(ctx, pid_tgid, &call, bytes);
}

/* SSL_free(ssl): the pointer may come back for another connection. */
static __always_inline int tls_free(struct pt_regs *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!may_have_conns(pid_tgid >> 32))
        return 0;
    struct ssl_key key = {.ssl = PT_REGS_PARM1(ctx), .tgid = pid_tgid >> 32};
    ssl_conns.delete(&key);
    return 0;
}

#endif /* PODSPAN_TLS_H */
