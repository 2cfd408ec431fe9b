/* SPDX-License-Identifier: Apache-2.0
 * Writing events to the ring buffer: batched wake-ups, the common header, the CLOSE event (which also ends a
 * skipped exchange).
 */
#ifndef PODSPAN_OUTPUT_H
#define PODSPAN_OUTPUT_H

#include "podspan_maps.h"
#include "podspan_sampling.h"

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

static __always_inline void count_lost(void)
{
    count(PODSPAN_STAT_EVENTS_LOST);
    __u64 cgroup_id = bpf_get_current_cgroup_id();
    __u64 *lost = lost_by_cgroup.lookup(&cgroup_id);
    if (lost) {
        __sync_fetch_and_add(lost, 1);
        return;
    }
    __u64 one = 1;
    /* Two CPUs may race to create the entry: the loser adds to the winner's. */
    if (lost_by_cgroup.insert(&cgroup_id, &one) != 0) {
        lost = lost_by_cgroup.lookup(&cgroup_id);
        if (lost)
            __sync_fetch_and_add(lost, 1);
    }
}

static __always_inline void emit(void *event, __u64 size)
{
    if (events.ringbuf_output(event, size, wakeup_flags()) == 0)
        count(PODSPAN_STAT_EVENTS);
    else
        count_lost();
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
    if (conn->skip.direction != PODSPAN_DIR_NONE)
        count_skipped(conn, pid_tgid >> 32);
    struct podspan_event_header ev = {};
    fill_header(&ev, PODSPAN_EV_CLOSE, pid_tgid, fd, conn, bpf_ktime_get_ns());
    emit(&ev, sizeof(ev));
}

#endif /* PODSPAN_OUTPUT_H */
