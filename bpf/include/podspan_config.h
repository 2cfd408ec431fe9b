/* SPDX-License-Identifier: Apache-2.0
 * Compile-time options of the capture program (each settable with -D) and the kernel ABI values it
 * needs without the headers that define them.
 */
#ifndef PODSPAN_CONFIG_H
#define PODSPAN_CONFIG_H

#ifndef PODSPAN_MAX_CONNS
#define PODSPAN_MAX_CONNS 65536
#endif
#ifndef PODSPAN_RINGBUF_PAGES
#define PODSPAN_RINGBUF_PAGES 2048 /* 8 MiB with 4 KiB pages */
#endif
#ifndef PODSPAN_WAKEUP_EVERY
#define PODSPAN_WAKEUP_EVERY 1024 /* per CPU: wake the consumer once per this many events */
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
#define PODSPAN_MSG_PEEK 2

/* Where the data path gets a syscall's arguments. With kernel BTF and bpf_task_pt_regs (5.15;
 * PODSPAN_HAVE_TASK_PT_REGS, set by the loader), the exit program reads them from the registers the task
 * entered the kernel with, which a syscall leaves as they were except the return value's (x86-64: rax;
 * arm64: x0, whose entry value stays in orig_x0): read/write-family syscalls then take one program run
 * and no map stash. Otherwise their enter programs stash the arguments in io_inflight. */
#if defined(PODSPAN_HAVE_TASK_PT_REGS) && (defined(bpf_target_x86) || defined(bpf_target_arm64))
#define PODSPAN_ARGS_AT_EXIT 1
/* Same kernels (atomic or/and on map values, 5.12): a bit per tgid says whether the process may have
 * entries in `conns` or `dgram_socks`; the data and close programs test it before any hash lookup. */
#define PODSPAN_TGID_FILTER 1
#endif

#endif /* PODSPAN_CONFIG_H */
