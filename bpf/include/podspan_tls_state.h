/* SPDX-License-Identifier: Apache-2.0
 * TLS state the data path consults: the SSL_read/SSL_write call each thread is inside (set by the TLS
 * library probes, podspan_tls.h), the crypto/tls call each goroutine is inside (podspan_tls_go.h), which
 * SSL object (or Go tls.Conn) moves its bytes on which connection, and the two checks of the syscall side:
 * ciphertext is never captured, and a run that starts with a TLS handshake record marks its connection TLS.
 */
#ifndef PODSPAN_TLS_STATE_H
#define PODSPAN_TLS_STATE_H

#include "podspan_maps.h"

/* An SSL_read/SSL_write(_ex) call in progress on one thread (or a Go crypto/tls call on one goroutine),
 * from its entry to its return. */
struct tls_call {
    __u64 ssl; /* the SSL object; for Go the *tls.Conn */
    __u64 buf;
    __u64 size_ptr; /* the _ex variants: where the library stores the bytes it moved; 0 for the others */
    __u64 conn_id;  /* the connection a syscall inside the call moved ciphertext on; 0 if none did */
    __u64 start_ns; /* entry time: when a write's plaintext starts to leave */
    __s32 fd;
    __u8 direction; /* enum podspan_direction of the plaintext */
    __u8 sent;      /* the plaintext went out at the entry already (Go's Write on a known connection) */
    __u8 _pad[2];
};

/* SSL objects (and Go tls.Conns) are per process: the pointer alone may repeat in another one. */
struct ssl_key {
    __u64 ssl;
    __u32 tgid;
    __u32 _pad;
};

/* The connection an SSL object was last seen moving ciphertext on: an SSL_read served from the
 * library's buffer makes no syscall, and finds its connection here. */
struct ssl_conn {
    __u64 conn_id;
    __s32 fd;
    __u32 _pad;
};

/* LRU: a thread killed inside a call, an SSL object freed without SSL_free (a process that exits). */
BPF_TABLE("lru_hash", __u64, struct tls_call, tls_calls, 16384);
BPF_TABLE("lru_hash", struct ssl_key, struct ssl_conn, ssl_conns, PODSPAN_MAX_CONNS);
/* A connection's TLS handshake as the handshake calls on it saw it (SSL_do_handshake, which SSL_connect and
 * SSL_accept run, or Go's serverHandshake/clientHandshake; a non-blocking one takes several calls): from the
 * first call's entry to the last call's return, and whether one succeeded. */
struct tls_handshake {
    __u64 start_ns;
    __u64 end_ns;
    /* OpenSSL: the first 4 bytes of its SSL object after a successful handshake. In OpenSSL 1.1 and 3.0-3.1
     * that is `int version` (0x0301-0x0304 for TLS 1.0-1.3); 3.2+ starts the object with a type tag that is
     * never one of those, so userspace takes only those values. 0 for Go. */
    __u32 version;
    __u8 established;
    __u8 _pad[3];
};
/* conn_id -> its handshake. Read by userspace once per connection (its first exchange, or its close when
 * it never had one); LRU: never deleted. */
BPF_TABLE("lru_hash", __u64, struct tls_handshake, tls_handshakes, PODSPAN_MAX_CONNS);

/* A handshake call of process `tgid` returned; `established`: it succeeded. Its connection: the one a
 * syscall inside it used, else (the peer's last records came with an earlier call's read) the one its SSL
 * object used before; neither: nothing to record. */
static __always_inline void tls_handshake_done(const struct tls_call *call, __u32 tgid, int established,
                                               __u32 version)
{
    __u64 conn_id = call->conn_id;
    if (!conn_id) {
        struct ssl_key key = {.ssl = call->ssl, .tgid = tgid};
        struct ssl_conn *used = ssl_conns.lookup(&key);
        if (!used)
            return;
        conn_id = used->conn_id;
    }
    struct tls_handshake *known = tls_handshakes.lookup(&conn_id);
    struct tls_handshake now = {.start_ns = call->start_ns, .end_ns = bpf_ktime_get_ns()};
    if (known) {
        if (known->established)
            return; /* a renegotiation, or a handshake call after the handshake: the first one counts */
        now.start_ns = known->start_ns;
    }
    now.established = established;
    now.version = version;
    tls_handshakes.update(&conn_id, &now);
}
#ifdef PODSPAN_TGID_FILTER
/* Bit (tid & 63) of word (tid >> 6): the thread is inside a TLS call, so the data path looks the call up
 * only then (one array read otherwise). Thread ids are below the same PID_MAX_LIMIT as tgids. */
BPF_ARRAY(tls_tids, __u64, PODSPAN_TGID_LIMIT / 64);
#endif

#if defined(bpf_target_x86) && defined(PODSPAN_ARGS_AT_EXIT)
/* Go crypto/tls probes: amd64's register ABI, and the goroutine of a syscall read from the registers it
 * was entered with (bpf_task_pt_regs). The loader attaches none without them. */
#define PODSPAN_GO_TLS 1
/* A goroutine: Go keeps its g pointer in R14 (ABIInternal), in the TLS functions and at the raw syscall
 * (runtime/internal/syscall.Syscall6 leaves R14 alone). A goroutine parked inside a call resumes on any
 * thread, so its call is keyed by goroutine, not thread. */
struct go_call_key {
    __u64 g;
    __u32 tgid;
    __u32 _pad;
};
/* LRU: a goroutine that never returns (a panic unwinding through the call), a process that exits. */
BPF_TABLE("lru_hash", struct go_call_key, struct tls_call, go_tls_calls, 16384);
#ifdef PODSPAN_TGID_FILTER
/* Bit (tgid & 63) of word (tgid >> 6): the process entered a probed Go TLS function, so its syscalls look
 * for a goroutine's call (one array read for every other process). Never cleared: a reused tgid only pays
 * the hash lookup again. */
BPF_ARRAY(go_tls_tgids, __u64, PODSPAN_TGID_LIMIT / 64);
#endif

static __always_inline int go_tls_process(__u32 tgid)
{
#ifdef PODSPAN_TGID_FILTER
    __u32 word = tgid >> 6;
    __u64 *bits = go_tls_tgids.lookup(&word);
    return tgid >= PODSPAN_TGID_LIMIT || (bits && (*bits & (1ULL << (tgid & 63))));
#else
    return 1;
#endif
}

static __always_inline void mark_go_tls_process(__u32 tgid)
{
#ifdef PODSPAN_TGID_FILTER
    __u32 word = tgid >> 6;
    __u64 bit = 1ULL << (tgid & 63);
    __u64 *bits = go_tls_tgids.lookup(&word);
    if (bits && !(*bits & bit))
        __sync_fetch_and_or(bits, bit);
#endif
}

/* The Go TLS call the goroutine making the current syscall is inside, or NULL. */
static __always_inline struct tls_call *current_go_tls_call(__u64 pid_tgid)
{
    if (!go_tls_process(pid_tgid >> 32))
        return NULL;
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    struct go_call_key key = {.g = regs->r14, .tgid = pid_tgid >> 32};
    return go_tls_calls.lookup(&key);
}
#endif

/* Set (`inside`) or clear thread `tid`'s bit in tls_tids. */
static __always_inline void mark_tls_thread(__u32 tid, int inside)
{
#ifdef PODSPAN_TGID_FILTER
    __u32 word = tid >> 6;
    __u64 bit = 1ULL << (tid & 63);
    __u64 *bits = tls_tids.lookup(&word);
    if (!bits)
        return;
    if (inside && !(*bits & bit))
        __sync_fetch_and_or(bits, bit);
    else if (!inside && (*bits & bit))
        __sync_fetch_and_and(bits, ~bit);
#endif
}

/* The TLS call thread `pid_tgid` is inside, or NULL. */
static __always_inline struct tls_call *current_tls_call(__u64 pid_tgid)
{
#ifdef PODSPAN_TGID_FILTER
    __u32 tid = (__u32)pid_tgid;
    if (tid < PODSPAN_TGID_LIMIT) {
        __u32 word = tid >> 6;
        __u64 *bits = tls_tids.lookup(&word);
        if (bits && !(*bits & (1ULL << (tid & 63))))
            return NULL;
    }
#endif
    return tls_calls.lookup(&pid_tgid);
}

/* A thread is gone: a call it was inside never returns, and its id may come back for another thread. */
static __always_inline void tls_thread_exit(__u64 pid_tgid)
{
    if (current_tls_call(pid_tgid)) {
        tls_calls.delete(&pid_tgid);
        mark_tls_thread((__u32)pid_tgid, 0);
    }
}

/* A read/write-family syscall moved bytes on tracked connection `conn`. Returns whether they are
 * ciphertext, which is not captured: the connection is TLS. Inside a TLS call the syscall also tells
 * which connection the call's SSL object uses (and so marks it TLS). */
static __always_inline int tls_ciphertext(__u64 pid_tgid, __s32 fd, struct podspan_conn *conn)
{
    struct tls_call *call = current_tls_call(pid_tgid);
#ifdef PODSPAN_GO_TLS
    if (!call)
        call = current_go_tls_call(pid_tgid);
#endif
    if (call) {
        call->fd = fd;
        call->conn_id = conn->conn_id;
        conn->flags |= PODSPAN_CONN_TLS;
    }
    if (!(conn->flags & PODSPAN_CONN_TLS))
        return 0;
    count(PODSPAN_STAT_TLS_CIPHERTEXT);
    return 1;
}

#define PODSPAN_TLS_HANDSHAKE 0x16
#define PODSPAN_TLS_MAX_RECORD (16384 + 2048) /* TLSCiphertext.length limit */

/* A new run whose captured bytes start with a TLS handshake record (record version TLS 1.0-1.3, a legal
 * length; when the capture has it, a ClientHello or ServerHello message) marks its connection TLS and
 * turns its event into a TLS event that carries no bytes. Returns whether it did. OpenSSL reads the
 * 5-byte record header on its own, so that much is enough. */
static __always_inline int detect_tls(struct podspan_conn *conn, struct podspan_data_event *ev)
{
    if (ev->captured < 5)
        return 0;
    const __u8 *d = ev->data;
    __u32 length = ((__u32)d[3] << 8) | d[4];
    if (d[0] != PODSPAN_TLS_HANDSHAKE || d[1] != 3 || d[2] < 1 || d[2] > 4 || length < 4 ||
        length > PODSPAN_TLS_MAX_RECORD)
        return 0;
    if (ev->captured > 5 && d[5] != 1 && d[5] != 2)
        return 0;
    conn->flags |= PODSPAN_CONN_TLS;
    ev->hdr.kind = PODSPAN_EV_TLS;
    ev->hdr.flags = conn->flags;
    ev->captured = 0;
    count(PODSPAN_STAT_TLS_CIPHERTEXT);
    return 1;
}

#endif /* PODSPAN_TLS_STATE_H */
