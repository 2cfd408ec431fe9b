/* SPDX-License-Identifier: Apache-2.0
 * TLS plaintext from Go's crypto/tls (Go 1.17+ on amd64, register ABI): uprobes at the entry of
 * (*Conn).Read, (*Conn).Write and (*Conn).serverHandshake/clientHandshake remember the call per goroutine; the loader
 * places the return probes on the functions' RET instructions (a uretprobe rewrites the return address on
 * the goroutine's stack, which Go copies elsewhere when it grows). The syscalls a goroutine makes inside
 * a call tie its tls.Conn to a tracked connection (podspan_tls_state.h) as for OpenSSL, and the plaintext
 * then goes through the same path (podspan_tls.h).
 */
#ifndef PODSPAN_TLS_GO_H
#define PODSPAN_TLS_GO_H

#include "podspan_tls.h"

#ifdef PODSPAN_GO_TLS
/* Entry: receiver (*tls.Conn) in RAX, the slice's pointer in RBX and its length in RCX; the goroutine in
 * R14. `direction` NONE: the handshake, which Read and Write run inside themselves: their call is kept then.
 * A Write on a connection the tls.Conn used before sends its plaintext here, before the syscalls that carry
 * it: another goroutine (net/http's background read) may return the reply before this one returns. */
static __always_inline int go_tls_enter(struct pt_regs *ctx, __u8 direction)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!may_have_conns(pid_tgid >> 32) || !is_traced(pid_tgid))
        return 0;
    struct go_call_key key = {.g = ctx->r14, .tgid = pid_tgid >> 32};
    if (direction == PODSPAN_DIR_NONE && go_tls_calls.lookup(&key))
        return 0;
    struct tls_call call = {.ssl = ctx->ax, .buf = ctx->bx, .start_ns = bpf_ktime_get_ns(), .fd = -1,
                            .direction = direction};
    struct io_args io = {.ptr = call.buf, .shape = IO_BUF, .direction = direction};
    struct podspan_conn *conn = NULL;
    __s64 bytes = (__s64)ctx->cx;
    if (direction == PODSPAN_DIR_EGRESS && bytes > 0)
        conn = tls_call_conn(&call, pid_tgid >> 32, &io.fd, 0); /* unknown: the return sends it */
    call.sent = conn != NULL;
    if (go_tls_calls.update(&key, &call) == 0)
        mark_go_tls_process(pid_tgid >> 32);
    if (conn)
        return on_io(ctx, pid_tgid, bytes, &io, conn, 1, call.start_ns); /* last: it may tail-call */
    return 0;
}

/* A RET of the function entered with `direction`: n (bytes moved) in RAX, or the handshake's error (its
 * interface's type word in RAX). The handshake's RETs leave the Read or Write call it runs inside alone. */
static __always_inline int go_tls_return(struct pt_regs *ctx, __u8 direction)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!go_tls_process(pid_tgid >> 32))
        return 0;
    struct go_call_key key = {.g = ctx->r14, .tgid = pid_tgid >> 32};
    struct tls_call *found = go_tls_calls.lookup(&key);
    if (!found || found->direction != direction)
        return 0;
    struct tls_call call = *found;
    go_tls_calls.delete(&key);
    if (direction == PODSPAN_DIR_NONE)
        tls_handshake_done(&call, pid_tgid >> 32, ctx->ax == 0, 0); /* it returns an error: nil (RAX 0) or not */
    return tls_call_done(ctx, pid_tgid, &call, (__s64)ctx->ax);
}
#endif

#endif /* PODSPAN_TLS_GO_H */
