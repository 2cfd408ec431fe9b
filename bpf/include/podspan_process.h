/* SPDX-License-Identifier: Apache-2.0
 * Processes: the EXIT event of a traced process that is gone, and accept-then-fork servers (the child
 * takes over the connection its parent accepted last; an exec closes it again).
 */
#ifndef PODSPAN_PROCESS_H
#define PODSPAN_PROCESS_H

#include "podspan_conns.h"
#include "podspan_tls_state.h"

#ifdef PODSPAN_HAVE_EXIT
/* A process that exits or is killed closes its sockets without close(): the EXIT event lets userspace
 * finish its connections (their last runs are still in `conns`) and delete their entries, which would
 * otherwise stay until the table is full. `last`: the exiting thread ends the process (the entry file
 * decides from the tracepoint's fields). */
static __always_inline int process_exit(__u64 pid_tgid, int last)
{
    tls_thread_exit(pid_tgid); /* every thread that exits */
    if (!last)
        return 0;
#ifdef PODSPAN_HAVE_EXIT_GROUP_DEAD
    unmark_tgid(pid_tgid >> 32); /* the last thread: without group_dead, siblings may still run */
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
static __always_inline int process_fork(__u32 child)
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

/* A child that execs (a spawned helper) usually had the socket close-on-exec: the fd is gone without
 * close(), and a file opened later under its number must not be captured as that connection. */
static __always_inline int process_exec(void)
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

#endif /* PODSPAN_PROCESS_H */
