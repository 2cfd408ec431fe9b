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
 * PODSPAN_MAX_CONTINUATIONS, PODSPAN_MAX_SKIP_SERIES, and the kernel features the loader detects: PODSPAN_HAVE_MMSG
 * (sendmmsg/recvmmsg tracepoints), PODSPAN_HAVE_EXIT (sched_process_exit),
 * PODSPAN_HAVE_EXIT_GROUP_DEAD (its group_dead field), PODSPAN_HAVE_FORK (sched_process_fork,
 * sched_process_exec, sys_exit_clone), PODSPAN_HAVE_CLONE3 and PODSPAN_HAVE_SYS_FORK (the
 * fork/vfork syscalls, absent on arm64), PODSPAN_HAVE_TASK_PT_REGS (kernel BTF and bpf_task_pt_regs:
 * the read/write families need no enter programs, see PODSPAN_ARGS_AT_EXIT).
 */
#include <linux/socket.h>
/* One header per concern, each including what it needs: podspan_events.h (the contract with
 * userspace), podspan_config.h (options), podspan_maps.h (structs, maps, stats, selection),
 * podspan_output.h (ring buffer), podspan_sampling.h (exchanges skipped at request start), podspan_conns.h,
 * podspan_udp.h, podspan_process.h, podspan_http2.h, podspan_tls_state.h and podspan_capture.h (the data path),
 * and podspan_tls.h and podspan_tls_go.h (the TLS library probes: OpenSSL, Go crypto/tls). bcc rewrites map calls
 * and tracepoint `args` only in the file
 * it compiles, so the loader inlines these headers into this file first. This file holds every
 * program the loader attaches or tail-calls. */
#include "podspan_events.h"
#include "podspan_config.h"
#include "podspan_maps.h"
#include "podspan_sampling.h"
#include "podspan_output.h"
#include "podspan_conns.h"
#include "podspan_udp.h"
#include "podspan_process.h"
#include "podspan_http2.h"
#include "podspan_capture.h"
#include "podspan_tls.h"
#include "podspan_tls_go.h"

/* ---- socket / bind: UDP candidates ---- */

TRACEPOINT_PROBE(syscalls, sys_enter_socket) { return socket_enter(args->family, args->type, args->protocol); }
TRACEPOINT_PROBE(syscalls, sys_exit_socket) { return socket_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_bind) { return bind_enter(args->fd, (__u64)args->umyaddr, args->addrlen); }

/* ---- accept / connect / close ---- */

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
TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return connect_enter(args->fd, (__u64)args->uservaddr, args->addrlen); }
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return connect_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_close) { return close_enter((__s32)args->fd); }

/* ---- processes: exit, fork, exec ---- */

#ifdef PODSPAN_HAVE_EXIT
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
#ifdef PODSPAN_HAVE_EXIT_GROUP_DEAD
    /* The process's last thread: no sibling can move bytes on its connections afterwards. */
    return process_exit(pid_tgid, args->group_dead);
#else
    /* The group leader stands for the process (a sibling finishing a syscall may still follow). */
    return process_exit(pid_tgid, (__u32)args->pid == pid_tgid >> 32);
#endif
}
#endif

#ifdef PODSPAN_HAVE_FORK
TRACEPOINT_PROBE(sched, sched_process_fork) { return process_fork(args->child_pid); }
TRACEPOINT_PROBE(syscalls, sys_exit_clone) { return child_starts(args->ret); }
#ifdef PODSPAN_HAVE_CLONE3
TRACEPOINT_PROBE(syscalls, sys_exit_clone3) { return child_starts(args->ret); }
#endif
#ifdef PODSPAN_HAVE_SYS_FORK
TRACEPOINT_PROBE(syscalls, sys_exit_fork) { return child_starts(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_vfork) { return child_starts(args->ret); }
#endif
TRACEPOINT_PROBE(sched, sched_process_exec) { return process_exec(); }
#endif

/* ---- data: read/write families ---- */

/* Tail-called through chunk_progs[0], which the loader fills: capturing runs in one program so the
 * verifier checks its loops once, not once per syscall exit tracepoint. */
int capture_chunk(void *ctx) { return capture_job(ctx, 0); }
/* The same for the TLS library probes, through tls_chunk_progs[0]: a uprobe can tail-call only a program
 * of its own type. */
int capture_chunk_tls(struct pt_regs *ctx) { return capture_job(ctx, 1); }

/* MAY_OPEN: whether the syscall can name a destination, so a UDP socket's first send opens a flow.
 * ARG(field, n): the syscall's argument n, named `field` in its tracepoint. */
#ifdef PODSPAN_ARGS_AT_EXIT
#define ARG(field, n) PODSPAN_SYSCALL_ARG##n(regs)
#define IO_TRACEPOINTS(name, SHAPE, DIRECTION, MAY_OPEN, ...)                                    \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name)                                                  \
    {                                                                                            \
        long ret = args->ret;                                                                    \
        if (ret <= 0)                                                                            \
            return 0;                                                                            \
        __u64 pid_tgid = bpf_get_current_pid_tgid();                                             \
        if (!may_have_conns(pid_tgid >> 32))                                                     \
            return 0;                                                                            \
        struct pt_regs *regs = syscall_regs();                                                   \
        struct io_args io = {.shape = SHAPE, .direction = DIRECTION, __VA_ARGS__};               \
        return io_exit(args, pid_tgid, ret, &io, MAY_OPEN);                                      \
    }
#else
#define ARG(field, n) ((__u64)args->field)
#define IO_TRACEPOINTS(name, SHAPE, DIRECTION, MAY_OPEN, ...)                                    \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name)                                                 \
    {                                                                                            \
        struct io_args io = {.shape = SHAPE, .direction = DIRECTION, __VA_ARGS__};               \
        return io_enter(&io, MAY_OPEN);                                                          \
    }                                                                                            \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return io_exit(args, args->ret); }
#endif

IO_TRACEPOINTS(read, IO_BUF, PODSPAN_DIR_INGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(buf, 2))
/* MSG_PEEK (nginx peeks at a connection's first byte to tell TLS from plain HTTP): the bytes are read again. */
IO_TRACEPOINTS(recvfrom, IO_BUF, PODSPAN_DIR_INGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(ubuf, 2),
               .peek = (ARG(flags, 4) & PODSPAN_MSG_PEEK) != 0)
IO_TRACEPOINTS(readv, IO_IOVEC, PODSPAN_DIR_INGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(vec, 2), .count = ARG(vlen, 3))
IO_TRACEPOINTS(recvmsg, IO_MSGHDR, PODSPAN_DIR_INGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(msg, 2),
               .peek = (ARG(flags, 3) & PODSPAN_MSG_PEEK) != 0)
IO_TRACEPOINTS(write, IO_BUF, PODSPAN_DIR_EGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(buf, 2))
IO_TRACEPOINTS(sendto, IO_BUF, PODSPAN_DIR_EGRESS, ARG(addr, 5) != 0, .fd = ARG(fd, 1), .ptr = ARG(buff, 2),
               .addr = ARG(addr, 5), .addr_len = ARG(addr_len, 6))
IO_TRACEPOINTS(writev, IO_IOVEC, PODSPAN_DIR_EGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(vec, 2), .count = ARG(vlen, 3))
IO_TRACEPOINTS(sendmsg, IO_MSGHDR, PODSPAN_DIR_EGRESS, 1, .fd = ARG(fd, 1), .ptr = ARG(msg, 2))
IO_TRACEPOINTS(sendfile64, IO_NODATA, PODSPAN_DIR_EGRESS, 0, .fd = ARG(out_fd, 1))
#ifdef PODSPAN_HAVE_MMSG
IO_TRACEPOINTS(recvmmsg, IO_MMSG, PODSPAN_DIR_INGRESS, 0, .fd = ARG(fd, 1), .ptr = ARG(mmsg, 2))
IO_TRACEPOINTS(sendmmsg, IO_MMSG, PODSPAN_DIR_EGRESS, 1, .fd = ARG(fd, 1), .ptr = ARG(mmsg, 2))
#endif

/* ---- TLS libraries (OpenSSL): uprobes the loader attaches per library found in traced processes ---- */

int tls_read_enter(struct pt_regs *ctx) { return tls_call_enter(ctx, PODSPAN_DIR_INGRESS, 0); }
int tls_read_ex_enter(struct pt_regs *ctx) { return tls_call_enter(ctx, PODSPAN_DIR_INGRESS, 1); }
int tls_write_enter(struct pt_regs *ctx) { return tls_call_enter(ctx, PODSPAN_DIR_EGRESS, 0); }
int tls_write_ex_enter(struct pt_regs *ctx) { return tls_call_enter(ctx, PODSPAN_DIR_EGRESS, 1); }
int tls_handshake_enter(struct pt_regs *ctx) { return tls_call_enter(ctx, PODSPAN_DIR_NONE, 0); }
int tls_return(struct pt_regs *ctx) { return tls_call_return(ctx); }
int tls_free_enter(struct pt_regs *ctx) { return tls_free(ctx); }

#ifdef PODSPAN_GO_TLS
/* ---- Go crypto/tls: uprobes the loader attaches per Go executable, the returns at RET instructions ---- */

int go_tls_read_enter(struct pt_regs *ctx) { return go_tls_enter(ctx, PODSPAN_DIR_INGRESS); }
int go_tls_write_enter(struct pt_regs *ctx) { return go_tls_enter(ctx, PODSPAN_DIR_EGRESS); }
int go_tls_handshake_enter(struct pt_regs *ctx) { return go_tls_enter(ctx, PODSPAN_DIR_NONE); }
int go_tls_read_return(struct pt_regs *ctx) { return go_tls_return(ctx, PODSPAN_DIR_INGRESS); }
int go_tls_write_return(struct pt_regs *ctx) { return go_tls_return(ctx, PODSPAN_DIR_EGRESS); }
int go_tls_handshake_return(struct pt_regs *ctx) { return go_tls_return(ctx, PODSPAN_DIR_NONE); }
#endif
