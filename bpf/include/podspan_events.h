/* SPDX-License-Identifier: Apache-2.0
 * Event and map-value structs shared by the kernel programs and the agent.
 * This header is the C side of the contract; agent/podspan_agent/bpf_events.py
 * mirrors it and tests/unit/test_bpf_events_layout.py checks sizes and offsets.
 * Only fixed-width types: the layout must not depend on the compiler.
 */
#ifndef PODSPAN_EVENTS_H
#define PODSPAN_EVENTS_H

#ifndef PODSPAN_CAPTURE_SIZE
#define PODSPAN_CAPTURE_SIZE 512 /* bytes copied from the start of a run, across its chunks; power of two */
#endif

/* Bytes copied from every chunk of an HTTP/2 connection; a power of two from PODSPAN_CAPTURE_SIZE
 * to PODSPAN_MAX_CHUNK_CAPTURE_SIZE (the per-CPU scratch holds twice this, within the 32 KiB limit
 * of a per-CPU map value). */
#define PODSPAN_MAX_CHUNK_CAPTURE_SIZE 8192
#ifndef PODSPAN_CHUNK_CAPTURE_SIZE
#define PODSPAN_CHUNK_CAPTURE_SIZE PODSPAN_MAX_CHUNK_CAPTURE_SIZE
#endif
#if PODSPAN_CHUNK_CAPTURE_SIZE > PODSPAN_MAX_CHUNK_CAPTURE_SIZE || PODSPAN_CHUNK_CAPTURE_SIZE < PODSPAN_CAPTURE_SIZE
#error "PODSPAN_CHUNK_CAPTURE_SIZE must be from PODSPAN_CAPTURE_SIZE to PODSPAN_MAX_CHUNK_CAPTURE_SIZE"
#endif

#define PODSPAN_SOCKADDR_SIZE 28 /* sizeof(struct sockaddr_in6), the largest we keep */

enum podspan_event_kind {
    PODSPAN_EV_OPEN = 1,  /* accept/connect (or a UDP socket's first send, or a fork handing an accepted
                             connection to the child) succeeded: a tracked connection starts */
    PODSPAN_EV_DATA = 2,  /* a new run starts; carries its first bytes and closes the previous run */
    PODSPAN_EV_CLOSE = 3, /* close(): carries the connection's last run */
    PODSPAN_EV_CONTINUATION = 4, /* a later chunk of the run in progress, while the run's capture is short: its
                                    bytes (struct podspan_data_event) follow the run's captured bytes */
    PODSPAN_EV_EXIT = 5, /* a traced process is gone (exit, kill): its sockets closed without close(); the header
                            only (tgid; conn_id 0, fd -1) */
    PODSPAN_EV_TLS = 6,  /* a run began with a TLS handshake record: the connection is TLS from here on and its
                            ciphertext is not captured (only plaintext from the TLS library probes is); the layout
                            of a DATA event with nothing captured, `prev` unchanged */
};

enum podspan_direction {
    PODSPAN_DIR_NONE = 0,
    PODSPAN_DIR_INGRESS = 1, /* bytes the traced process received */
    PODSPAN_DIR_EGRESS = 2,  /* bytes the traced process sent */
};

enum podspan_role {
    PODSPAN_ROLE_UNKNOWN = 0,
    PODSPAN_ROLE_SERVER = 1, /* the socket came from accept() (here or, before a fork, in the parent) */
    PODSPAN_ROLE_CLIENT = 2, /* the socket came from connect(), or is a UDP socket that sent first */
};

enum podspan_stat {
    PODSPAN_STAT_EVENTS = 0,       /* events written to the ring buffer */
    PODSPAN_STAT_EVENTS_LOST = 1,  /* ring buffer full: event dropped */
    PODSPAN_STAT_CHUNKS = 2,       /* continuation chunks folded into a run (no event) */
    PODSPAN_STAT_CONN_FULL = 3,    /* connection table full: connection not tracked */
    PODSPAN_STAT_SENDFILE = 4,     /* sendfile chunks accounted without data */
    PODSPAN_STAT_MMSG_SKIPPED = 5, /* sendmmsg/recvmmsg messages beyond the per-call limit: no event */
    PODSPAN_STAT_CONTINUATIONS = 6, /* later chunks of a run captured with a CONTINUATION event */
    PODSPAN_STAT_TLS_CIPHERTEXT = 7, /* syscall chunks on TLS connections, not captured (their plaintext may be) */
    PODSPAN_STAT_TLS_UNMAPPED = 8, /* TLS library calls that moved plaintext on no connection we know (e.g. a memory
                                      BIO, or an SSL object never seen doing I/O on a tracked socket): not captured */
    PODSPAN_STAT_SKIPPED = 9,      /* exchanges the capture-fraction draw left uncaptured (counted in skipped_exchanges) */
    PODSPAN_STAT_SKIPPED_UNCOUNTED = 10, /* of those, exchanges skipped_exchanges had no room for */
    PODSPAN_STAT_MAX = 11,
};

/* Per-connection capture mode, in the conns value and in every event header. */
enum podspan_conn_flag {
    PODSPAN_CONN_DATAGRAM = 1,    /* UDP: each syscall moves one datagram, so every chunk is its own run */
    PODSPAN_CONN_UNCONNECTED = 2, /* UDP without connect(): opened by its first send, whose destination is the peer */
    PODSPAN_CONN_HTTP2 = 4,       /* a run began with the HTTP/2 client preface: every chunk is its own run (a long
                                     one several, of PODSPAN_CHUNK_CAPTURE_SIZE), so no HEADERS frame goes unseen */
    PODSPAN_CONN_TLS = 8,         /* TLS (a handshake record seen, or ciphertext moved inside an SSL_read/SSL_write
                                     call): syscall bytes are not captured, the TLS probes' plaintext is */
};

/* Protocols of connections userspace marked as safe to skip exchanges on (its parser keeps no state from one
 * exchange to the next), in `sampled_conns`, the skipped exchange and its counters. */
enum podspan_sample_protocol {
    PODSPAN_SAMPLE_NONE = 0,
    PODSPAN_SAMPLE_HTTP1 = 1,
    PODSPAN_SAMPLE_REDIS = 2,
};

/* The request method of a skipped HTTP/1 exchange, from its first 4 bytes (OTHER: none of these). */
enum podspan_method {
    PODSPAN_METHOD_OTHER = 0,
    PODSPAN_METHOD_GET = 1,
    PODSPAN_METHOD_HEAD = 2,
    PODSPAN_METHOD_POST = 3,
    PODSPAN_METHOD_PUT = 4,
    PODSPAN_METHOD_DELETE = 5,
    PODSPAN_METHOD_CONNECT = 6,
    PODSPAN_METHOD_OPTIONS = 7,
    PODSPAN_METHOD_TRACE = 8,
    PODSPAN_METHOD_PATCH = 9,
};

/* The HTTP version of a skipped exchange's status line. */
enum podspan_version {
    PODSPAN_VERSION_UNKNOWN = 0,
    PODSPAN_VERSION_10 = 1,
    PODSPAN_VERSION_11 = 2,
};

/* Histogram bucket bounds of skipped exchanges' durations, in ns: those metrics/red.py uses for the protocol's
 * instrument (HTTP: DURATION_BUCKETS_S; Redis: DB_BUCKETS_S). X(bound) per bound, ascending. */
#define PODSPAN_HTTP_BOUNDS_NS(X) X(5000000ULL) X(10000000ULL) X(25000000ULL) X(50000000ULL) X(75000000ULL) \
    X(100000000ULL) X(250000000ULL) X(500000000ULL) X(750000000ULL) X(1000000000ULL) X(2500000000ULL)          \
    X(5000000000ULL) X(7500000000ULL) X(10000000000ULL)
#define PODSPAN_DB_BOUNDS_NS(X) X(1000000ULL) X(5000000ULL) X(10000000ULL) X(50000000ULL) X(100000000ULL) \
    X(500000000ULL) X(1000000000ULL) X(5000000000ULL) X(10000000000ULL)
#define PODSPAN_SKIP_BUCKETS 15 /* the most bounds of either list, plus one above them all */

/* A run: bytes moved in one direction between two direction changes. */
struct podspan_run {
    __u64 start_ns; /* exit time of the run's first chunk (CLOCK_MONOTONIC) */
    __u64 end_ns;   /* exit time of the run's last chunk */
    __u64 bytes;
    __u32 chunks;
    __u8 direction; /* enum podspan_direction; NONE when there was no run yet */
    __u8 _pad[3];
};

/* An exchange the draw left uncaptured, while it lasts: its request run, then its response run. */
struct podspan_skip {
    __u64 start_ns;  /* the request run's first chunk */
    __u64 end_ns;    /* the exchange's last chunk so far */
    __u16 status;    /* see struct podspan_skip_key */
    __u8 direction;  /* of the skipped run in progress; NONE: no exchange is skipped */
    __u8 protocol;   /* enum podspan_sample_protocol */
    __u8 method;
    __u8 version;
    __u8 error;
    __u8 _pad;
};

struct podspan_event_header {
    __u8 kind;      /* enum podspan_event_kind */
    __u8 role;      /* enum podspan_role */
    __u8 direction; /* DATA: direction of the run that starts */
    __u8 flags;     /* enum podspan_conn_flag bits of the connection */
    __u32 tgid;
    __u32 tid;
    __s32 fd;
    __u64 conn_id;   /* unique per tracked connection; fd reuse gets a new id */
    __u64 cgroup_id;
    __u64 ts_ns;     /* CLOCK_MONOTONIC */
    struct podspan_run prev; /* DATA/CLOSE: the run that just ended (direction NONE if none) */
};

struct podspan_open_event {
    struct podspan_event_header hdr;
    __s32 listen_fd; /* accept: the listening socket (in process listen_tgid), -1 for connect */
    __u32 addr_len;  /* bytes valid in peer (0 when the caller passed no address) */
    __u8 peer[PODSPAN_SOCKADDR_SIZE]; /* raw struct sockaddr_in / sockaddr_in6 of the peer */
    __u32 listen_tgid; /* the process that accepted: this one, or the parent of a child that inherited the socket */
};

struct podspan_data_event {
    struct podspan_event_header hdr;
    __u32 chunk_bytes; /* bytes moved by the syscall (or the one message of sendmmsg/recvmmsg) that started the run,
                          or (CONTINUATION) that continued it */
    __u32 captured;    /* bytes valid in data, gathered across iovecs; only these are sent */
    __u8 data[PODSPAN_CHUNK_CAPTURE_SIZE];
};

/* Connection table: key and value. Userspace reads values to flush idle runs. */
struct podspan_conn_key {
    __u32 tgid;
    __s32 fd;
};

struct podspan_conn {
    __u64 conn_id;
    struct podspan_run run; /* the run in progress */
    __u8 role;
    __u8 flags;         /* enum podspan_conn_flag */
    __u16 captured;     /* bytes of the run in progress sent to userspace, from its start without a gap */
    __u8 continuations; /* CONTINUATION events sent for the run in progress */
    __u8 _pad[3];
    struct podspan_skip skip; /* the exchange in progress when the draw skipped it; `run` stays the last captured */
};

/* sampled_conns value: userspace marked this connection (still `conn_id` in the slot) safe to skip exchanges on. */
struct podspan_sampled_conn {
    __u64 conn_id;
    __u8 protocol; /* enum podspan_sample_protocol */
    __u8 _pad[7];
};

/* skipped_exchanges key: one series of skipped exchanges of a process. */
struct podspan_skip_key {
    __u64 cgroup_id;
    __u32 tgid;
    __u16 status;   /* HTTP: the status code (0: unread); Redis: 0 */
    __u8 role;      /* enum podspan_role */
    __u8 protocol;  /* enum podspan_sample_protocol */
    __u8 method;    /* enum podspan_method (HTTP) */
    __u8 version;   /* enum podspan_version (HTTP) */
    __u8 error;     /* Redis: an error reply; any protocol: closed before a response */
    __u8 _pad[5];   /* explicit: hash keys compare every byte, implicit padding may hold stack garbage */
};

/* skipped_exchanges value: exchanges, their summed duration (request start to response end) and
 * their histogram over the protocol's bounds. */
struct podspan_skip_counts {
    __u64 count;
    __u64 sum_ns;
    __u64 buckets[PODSPAN_SKIP_BUCKETS];
};

#endif /* PODSPAN_EVENTS_H */
