/*
 * podspan_agent._conntable: the agent's connection table, native. It takes whole batches of decoded ring-buffer
 * records (podspan_agent._ringbuf), tracks connections, joins each run's chunks, feeds protocol parsers and
 * returns exchanges (a parser record with a frozen snapshot of its connection) for the span layer.
 *
 * Table(detect, forget, kernel_run, tls_version, max_connections=65536, *, tls_failure=None)
 *   detect(data, datagram) -> (protocol, parser) | None   registry.Detector: called once per detection attempt
 *   forget(tgid, fd, conn_id)       drop the kernel's entry if it still holds that connection
 *   kernel_run(tgid, fd, conn_id)   the kernel's live run of a connection (a _ringbuf.Run) or None
 *   tls_version(conn_id)            the TLS version the kernel recorded ("1.3") or None
 *   tls_failure(conn_id) -> records a TLS connection that closes with no plaintext: its failed handshake, if any
 *   on_detected (attribute)         None, or (tgid, fd, conn_id, protocol) once a stream connection is detected
 *   feed(records)          one batch, oldest first. Each record is handled on its own: a record whose handling
 *                          raises an Exception (a bug, a failing callback) is counted (event_errors, logged at
 *                          the 1st, 2nd, 4th, ... time) and the next one goes on.
 *   flush_idle(before_ns)  deliver server runs quiet since before_ns that the kernel says are complete
 *   finish_all()           end every connection where the kernel last saw its run (the agent stops)
 *   take_exchanges()       the exchanges completed since the last call, oldest first
 *   set_detector, connections(), busy_threads(), parser_drops_by_cgroup(), stats, tls_processes, len()
 *
 * Connections are bounded (least recently used evicted) and found by conn_id and by (tgid, fd); a slot opened
 * again ends the connection still in it (its CLOSE was lost). A connection ends exactly once: closed (CLOSE,
 * EXIT, replaced, finish_all), evicted or undetected (no parser after three runs: the kernel forgets it).
 * HTTP/1 parsers (podspan_agent._http1) are fed at C level through its capsule; every other parser is a
 * base.Parser object fed base.Message tuples. Exchange and TableStats are struct sequences; ConnectionInfo is
 * connections.ConnectionInfo, made once per connection at its first exchange.
 *
 * Ended connections are freed when the call that ended them returns, so no pointer held during a callback
 * dangles. Callbacks cannot call back into the table (RuntimeError). Single-phase init.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "_http1_api.h"
#include "_module_slots.h"
#include "podspan_events.h"

#define DETECT_ATTEMPTS 3      /* runs a connection may go unmatched by every parser */
#define FINGERPRINT_BYTES 128  /* of a request, hashed to link a client span with the server span */
#define MAX_OPEN_REQUESTS 64   /* fingerprints kept per connection while their exchange is open */
#define MAX_DROP_CGROUPS 4096  /* cgroups whose closed connections' drops are kept apart; beyond, cgroup 0 */
#define MAX_TLS_PROCESSES 4096 /* (cgroup, tgid) remembered as having started TLS, most recent kept */
#define MAX_LISTEN_CACHE 4096  /* listening sockets' local endpoints remembered */
#define MALFORMED 0

/* Field indices of the _ringbuf records. */
enum { F_KIND, F_ROLE, F_DIRECTION, F_FLAGS, F_TGID, F_TID, F_FD, F_CONN_ID, F_CGROUP_ID, F_TS_NS, F_PREV,
       F_CHUNK_BYTES, F_DATA };
enum { F_LISTEN_FD = F_PREV + 1, F_PEER, F_LISTEN_TGID };
enum { R_START_NS, R_END_NS, R_BYTES, R_CHUNKS, R_DIRECTION };

/* --------------------------------------------------------------------------- module state */

static PyTypeObject *event_type, *open_type, *malformed_type, *run_type; /* from _ringbuf */
static const PodspanHttp1Api *http1;
static PyObject *info_type, *message_type, *decode_peer_fn, *local_endpoint_fn, *logger; /* imported lazily */
static PyObject *v_zero;
static PyObject *s_feed, *s_flush, *s_dropped, *s_start_ns, *s_get, *s_move_to_end, *s_popitem, *s_error,
    *s_exc_info, *s_last;
static PyTypeObject ExchangeType, StatsType;

static PyStructSequence_Field exchange_fields[] = {
    {"record", "the parser's base.Record"},
    {"connection", "connections.ConnectionInfo: the connection as it was at its first exchange"},
    {"tid", "the thread that sent (client) or received (server) the request"},
    {"fingerprint", "CRC-32 of the request's first 128 bytes; 0 if unknown"},
    {NULL, NULL},
};
static PyStructSequence_Desc exchange_desc = {"podspan_agent._conntable.Exchange",
                                              "A parser record plus what only the connection knows.",
                                              exchange_fields, 4};

#define STATS(X)                                                                                                   \
    X(opened, "connections opened (OPEN events)")                                                                  \
    X(closed, "connections ended by CLOSE, EXIT, a reopened slot or finish_all")                                   \
    X(evicted, "least recently used connections dropped for room")                                                 \
    X(unknown_connections, "connections first seen by a later event (their OPEN lost, or evicted)")                \
    X(undetected, "connections no parser matched: the kernel stops capturing them")                                \
    X(records, "exchanges produced")                                                                               \
    X(parser_errors, "runs or flushes a Python parser raised on")                                                  \
    X(continuations_dropped, "CONTINUATION events with no run to extend")                                          \
    X(ended_by_exit, "connections their process left open when it exited or was killed")                          \
    X(replaced, "connections still tracked when their slot was opened again (their CLOSE was lost)")              \
    X(tls_handshakes, "connections the kernel saw start TLS (their ciphertext is not captured)")                  \
    X(tls_undecrypted, "TLS connections that ended with no plaintext from a TLS library probe")                   \
    X(events, "records fed")                                                                                       \
    X(malformed_events, "records too short for their kind, or of no known kind")                                  \
    X(event_errors, "records whose handling raised (a bug): skipped, the next ones go on")
#define AS_FIELD(name, doc) {#name, doc},
#define AS_MEMBER(name, doc) unsigned long long name;
#define COUNT_ONE(name, doc) +1
static PyStructSequence_Field stats_fields[] = {STATS(AS_FIELD){NULL, NULL}};
#define N_STATS (0 STATS(COUNT_ONE))
static PyStructSequence_Desc stats_desc = {"podspan_agent._conntable.TableStats", "The table's counters.",
                                           stats_fields, N_STATS};
typedef struct {
    STATS(AS_MEMBER)
} Stats;

/* --------------------------------------------------------------------------- CRC-32 (zlib.crc32's) */

/* Slicing by 8: crc_table[k][b] is the CRC of byte b followed by k zero bytes. */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int k = 1; k < 8; k++)
            crc_table[k][i] = crc_table[0][crc_table[k - 1][i] & 0xFF] ^ (crc_table[k - 1][i] >> 8);
}

static uint32_t crc32_of(const unsigned char *d, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; d += 8, n -= 8) {
        uint32_t lo = c ^ ((uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24);
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][d[4]] ^ crc_table[2][d[5]] ^ crc_table[1][d[6]] ^
            crc_table[0][d[7]];
    }
    for (; n > 0; d++, n--)
        c = crc_table[0][(c ^ *d) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* --------------------------------------------------------------------------- connections */

typedef struct {
    uint64_t start_ns; /* of the request run */
    uint32_t fingerprint, tid;
} Request;

typedef struct Conn {
    uint64_t conn_id, cgroup_id;
    uint32_t tgid, tid;
    int32_t fd;
    uint8_t role, flags; /* enum podspan_role; enum podspan_conn_flag bits: the kernel's capture mode */
    char tracked, decrypted, tls_version_read, is_http1, detect_attempts;
    PyObject *peer, *local;        /* sockaddr.Endpoint or None */
    PyObject *protocol, *parser;   /* NULL until detected; the parser NULL again once flushed */
    PyObject *tls_version;         /* NULL until looked up (before the first exchange of a decrypted one) */
    PyObject *info;                /* the ConnectionInfo its exchanges share, made at the first */
    /* The pending run: its first bytes arrived, its end is not yet known. */
    PyObject *data; /* NULL: none */
    uint64_t run_start_ns;
    uint32_t run_tid;
    char run_from_client, run_delivered;
    Request *requests; /* oldest first */
    int n_requests, cap_requests;
    struct Conn *lru_prev, *lru_next;   /* least recently used first */
    struct Conn *proc_prev, *proc_next; /* the process's connections, a ring in insertion order */
    struct Conn *dead_next;             /* ended, freed when the current call returns */
} Conn;

static void conn_free(Conn *c) {
    Py_XDECREF(c->peer);
    Py_XDECREF(c->local);
    Py_XDECREF(c->protocol);
    Py_XDECREF(c->parser);
    Py_XDECREF(c->tls_version);
    Py_XDECREF(c->info);
    Py_XDECREF(c->data);
    PyMem_Free(c->requests);
    PyMem_Free(c);
}

/* --------------------------------------------------------------------------- uint64 -> Conn* hash map */

typedef struct {
    uint64_t key;
    Conn *value; /* NULL: empty slot */
} Slot;

typedef struct {
    Slot *slots;
    size_t mask, used; /* capacity - 1 (a power of two); occupied slots */
} Map;

static inline size_t hash64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return (size_t)(x ^ (x >> 31));
}

static Conn *map_get(const Map *m, uint64_t key) {
    if (m->slots == NULL)
        return NULL;
    for (size_t i = hash64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->slots[i].value == NULL)
            return NULL;
        if (m->slots[i].key == key)
            return m->slots[i].value;
    }
}

/* Room for one more key (load at most 1/2); -1 with MemoryError. */
static int map_reserve(Map *m) {
    if (m->slots != NULL && (m->used + 1) * 2 <= m->mask + 1)
        return 0;
    size_t capacity = m->slots == NULL ? 64 : (m->mask + 1) * 2;
    Slot *slots = PyMem_Calloc(capacity, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = m->slots;
    size_t old_capacity = old == NULL ? 0 : m->mask + 1;
    m->slots = slots;
    m->mask = capacity - 1;
    for (size_t j = 0; j < old_capacity; j++) {
        if (old[j].value == NULL)
            continue;
        size_t i = hash64(old[j].key) & m->mask;
        while (slots[i].value != NULL)
            i = (i + 1) & m->mask;
        slots[i] = old[j];
    }
    PyMem_Free(old);
    return 0;
}

/* Set key to value; map_reserve must have made room. */
static void map_put(Map *m, uint64_t key, Conn *value) {
    size_t i = hash64(key) & m->mask;
    while (m->slots[i].value != NULL && m->slots[i].key != key)
        i = (i + 1) & m->mask;
    if (m->slots[i].value == NULL)
        m->used++;
    m->slots[i] = (Slot){key, value};
}

/* Linear probing's deletion by backward shift: no tombstones. */
static void map_del(Map *m, uint64_t key) {
    if (m->slots == NULL)
        return;
    size_t i = hash64(key) & m->mask;
    while (m->slots[i].key != key || m->slots[i].value == NULL) {
        if (m->slots[i].value == NULL)
            return;
        i = (i + 1) & m->mask;
    }
    m->used--;
    for (size_t j = (i + 1) & m->mask; m->slots[j].value != NULL; j = (j + 1) & m->mask) {
        size_t home = hash64(m->slots[j].key) & m->mask;
        /* Move j into the hole at i unless its home lies cyclically in (i, j]. */
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].value = NULL;
}

static inline uint64_t slot_key(uint32_t tgid, int32_t fd) { return (uint64_t)tgid << 32 | (uint32_t)fd; }

/* --------------------------------------------------------------------------- the Table type */

typedef struct {
    PyObject_HEAD
    PyObject *detect, *forget, *kernel_run, *tls_version;
    PyObject *tls_failure; /* None, or conn_id -> records of its failed TLS handshake (at close, no plaintext seen) */
    PyObject *on_detected; /* None, or (tgid, fd, conn_id, protocol) -> None: a stream connection's protocol found */
    PyObject *exchanges;     /* list: produced since the last take_exchanges() */
    PyObject *closed_drops;  /* dict: cgroup id -> parser drops of ended connections */
    PyObject *listen_cache;  /* dict: (tgid, listen fd) -> Endpoint or None */
    PyObject *tls_processes; /* OrderedDict: (cgroup id, tgid) -> TLS handshakes seen */
    Map by_id, by_slot, by_proc; /* conn_id, (tgid, fd), tgid (the first of its ring) -> Conn */
    Conn *lru_first, *lru_last, *dead;
    Py_ssize_t count, max;
    char busy;
    Stats stats;
} Table;

/* A Run's fields (a _ringbuf.Run). */
typedef struct {
    uint64_t start_ns, end_ns, bytes;
    long direction;
} RunView;

static void lru_unlink(Table *t, Conn *c) {
    if (c->lru_prev)
        c->lru_prev->lru_next = c->lru_next;
    else
        t->lru_first = c->lru_next;
    if (c->lru_next)
        c->lru_next->lru_prev = c->lru_prev;
    else
        t->lru_last = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
}

static void lru_append(Table *t, Conn *c) {
    c->lru_prev = t->lru_last;
    c->lru_next = NULL;
    if (t->lru_last)
        t->lru_last->lru_next = c;
    else
        t->lru_first = c;
    t->lru_last = c;
}

/* Out of the table (it stays readable until the current call returns); no-op if already out. */
static void conn_remove(Table *t, Conn *c) {
    if (!c->tracked)
        return;
    c->tracked = 0;
    map_del(&t->by_id, c->conn_id);
    map_del(&t->by_slot, slot_key(c->tgid, c->fd));
    if (c->proc_next == c) {
        map_del(&t->by_proc, c->tgid);
    } else {
        c->proc_prev->proc_next = c->proc_next;
        c->proc_next->proc_prev = c->proc_prev;
        if (map_get(&t->by_proc, c->tgid) == c)
            map_put(&t->by_proc, c->tgid, c->proc_next); /* an existing key: no room needed */
    }
    lru_unlink(t, c);
    t->count--;
    c->dead_next = t->dead;
    t->dead = c;
}

static void free_dead(Table *t) {
    while (t->dead != NULL) {
        Conn *c = t->dead;
        t->dead = c->dead_next;
        conn_free(c);
    }
}

/* ---- logging: what the Python table logged, with the exception that is set (which is cleared) */

static void log_exception(const char *format, PyObject *a, PyObject *b) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *msg = PyUnicode_FromString(format);
    PyObject *kwargs = msg ? Py_BuildValue("{OO}", s_exc_info, value ? value : Py_True) : NULL;
    PyObject *args = kwargs ? PyTuple_Pack(3, msg, a, b) : NULL;
    PyObject *method = args ? PyObject_GetAttr(logger, s_error) : NULL;
    PyObject *result = method ? PyObject_Call(method, args, kwargs) : NULL;
    if (result == NULL)
        PyErr_Clear(); /* logging must not fail the event path */
    Py_XDECREF(result);
    Py_XDECREF(method);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(msg);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* An error is set: -1 if it must go on (not an Exception: KeyboardInterrupt and the like), else 0 and it is
 * counted in `counter` and logged as `format` % (a, b). */
static int absorb(unsigned long long *counter, const char *format, PyObject *a, PyObject *b) {
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    (*counter)++;
    log_exception(format, a, b);
    return 0;
}

/* Steps that must all run even when one fails (ending a connection, making room) keep the first error and
 * clear later ones: Python cannot be called with an exception set. */
typedef struct {
    PyObject *type, *value, *tb;
    int failed;
} FirstError;

static void keep_error(FirstError *e, int rc) {
    if (rc >= 0)
        return;
    if (!e->failed)
        PyErr_Fetch(&e->type, &e->value, &e->tb);
    else
        PyErr_Clear();
    e->failed = 1;
}

static int first_error(FirstError *e) {
    if (!e->failed)
        return 0;
    PyErr_Restore(e->type, e->value, e->tb);
    return -1;
}

/* ---- exchanges */

static PyObject *conn_snapshot(Conn *c) {
    PyObject *args[] = {
        PyLong_FromUnsignedLongLong(c->conn_id), PyLong_FromUnsignedLong(c->tgid),
        PyLong_FromLong(c->fd),                  PyLong_FromLong(c->role),
        PyLong_FromUnsignedLongLong(c->cgroup_id), Py_NewRef(c->peer),
        Py_NewRef(c->local),                     PyBool_FromLong(c->flags & PODSPAN_CONN_DATAGRAM),
        PyBool_FromLong(c->flags & PODSPAN_CONN_TLS), Py_NewRef(c->tls_version ? c->tls_version : Py_None),
    };
    size_t n = sizeof args / sizeof args[0];
    PyObject *info = NULL;
    int failed = 0;
    for (size_t i = 0; i < n; i++)
        failed |= args[i] == NULL;
    if (!failed)
        info = PyObject_Vectorcall(info_type, args, n, NULL);
    for (size_t i = 0; i < n; i++)
        Py_XDECREF(args[i]);
    return info;
}

static int emit(Table *t, Conn *c, PyObject *records) {
    Py_ssize_t n = PyList_GET_SIZE(records);
    if (n == 0)
        return 0;
    if (c->decrypted && !c->tls_version_read) { /* before its snapshot is made */
        PyObject *conn_id = PyLong_FromUnsignedLongLong(c->conn_id);
        PyObject *version = conn_id ? PyObject_CallOneArg(t->tls_version, conn_id) : NULL;
        Py_XDECREF(conn_id);
        if (version == NULL)
            return -1;
        c->tls_version = version;
        c->tls_version_read = 1;
    }
    if (c->info == NULL && (c->info = conn_snapshot(c)) == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        uint32_t fingerprint = 0, tid = c->tid;
        PyObject *start = PyObject_GetAttr(record, s_start_ns);
        unsigned long long start_ns = start ? PyLong_AsUnsignedLongLong(start) : 0;
        Py_XDECREF(start);
        if (PyErr_Occurred())
            PyErr_Clear(); /* a record a Python parser made oddly: no fingerprint, the connection's thread */
        for (int r = c->n_requests - 1; r >= 0; r--) {
            if (c->requests[r].start_ns == start_ns) {
                fingerprint = c->requests[r].fingerprint;
                tid = c->requests[r].tid;
                break;
            }
        }
        PyObject *exchange = PyStructSequence_New(&ExchangeType);
        if (exchange == NULL)
            return -1;
        PyObject *tid_obj = PyLong_FromUnsignedLong(tid), *fp_obj = PyLong_FromUnsignedLong(fingerprint);
        PyStructSequence_SET_ITEM(exchange, 0, Py_NewRef(record));
        PyStructSequence_SET_ITEM(exchange, 1, Py_NewRef(c->info));
        PyStructSequence_SET_ITEM(exchange, 2, tid_obj);
        PyStructSequence_SET_ITEM(exchange, 3, fp_obj);
        /* Records and snapshots never refer back to an exchange: it cannot be part of a cycle. */
        PyObject_GC_UnTrack(exchange);
        int rc = tid_obj == NULL || fp_obj == NULL ? -1 : PyList_Append(t->exchanges, exchange);
        Py_DECREF(exchange);
        if (rc < 0)
            return -1;
        t->stats.records++;
    }
    return 0;
}

/* Records from a parser call: a list, or -1 (an error set). */
static PyObject *as_records(PyObject *result) {
    if (result == NULL || PyList_CheckExact(result))
        return result;
    PyObject *list = PySequence_List(result);
    Py_DECREF(result);
    return list;
}

/* ---- detection and delivery */

/* forget(tgid, fd, conn_id): the kernel's entry goes if it still holds that connection. */
static int call_forget(Table *t, const Conn *c) {
    PyObject *result = PyObject_CallFunction(t->forget, "kiK", (unsigned long)c->tgid, (int)c->fd,
                                             (unsigned long long)c->conn_id);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* 1: a parser was found; 0: none (the connection may have gone undetected for good); -1: an error. */
static int detect_protocol(Table *t, Conn *c) {
    PyObject *found = PyObject_CallFunctionObjArgs(t->detect, c->data, (c->flags & PODSPAN_CONN_DATAGRAM) ? Py_True
                                                                                                        : Py_False,
                                                   NULL);
    if (found == NULL)
        return -1;
    if (found != Py_None) {
        if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 2) {
            Py_DECREF(found);
            PyErr_SetString(PyExc_TypeError, "detect() must return (protocol, parser) or None");
            return -1;
        }
        Py_XSETREF(c->protocol, Py_NewRef(PyTuple_GET_ITEM(found, 0)));
        Py_XSETREF(c->parser, Py_NewRef(PyTuple_GET_ITEM(found, 1)));
        c->is_http1 = Py_IS_TYPE(c->parser, http1->parser_type);
        Py_DECREF(found);
        if (t->on_detected != Py_None && !(c->flags & PODSPAN_CONN_DATAGRAM)) {
            PyObject *told = PyObject_CallFunction(t->on_detected, "kiKO", (unsigned long)c->tgid, (int)c->fd,
                                                   (unsigned long long)c->conn_id, c->protocol);
            if (told == NULL)
                return -1;
            Py_DECREF(told);
        }
        return 1;
    }
    Py_DECREF(found);
    if (++c->detect_attempts >= DETECT_ATTEMPTS) {
        /* Nothing we parse: stop the kernel from capturing it at all. */
        if (call_forget(t, c) < 0)
            return -1;
        if (c->tracked) {
            conn_remove(t, c);
            t->stats.undetected++;
        }
    }
    return 0;
}

/* The pending run, `size` bytes in all and ended at end_ns, goes to the connection's parser. */
static int deliver(Table *t, Conn *c, uint64_t size, uint64_t end_ns) {
    if (c->parser == NULL) {
        int found = detect_protocol(t, c); /* either direction: some servers speak first (MySQL's greeting) */
        if (found <= 0)
            return found;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(c->data);
    if (size < (uint64_t)n)
        size = (uint64_t)n;
    PyObject *start = PyLong_FromUnsignedLongLong(c->run_start_ns), *end = PyLong_FromUnsignedLongLong(end_ns);
    PyObject *records = NULL;
    if (start != NULL && end != NULL) {
        if (c->is_http1) {
            Py_ssize_t length = size > (uint64_t)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)size;
            records = http1->feed_run(c->parser, (const unsigned char *)PyBytes_AS_STRING(c->data), n, length,
                                      c->run_from_client, start, end);
        } else {
            PyObject *size_obj = PyLong_FromUnsignedLongLong(size);
            PyObject *args[] = {c->run_from_client ? Py_True : Py_False, c->data, size_obj, start, end};
            PyObject *message = size_obj ? PyObject_Vectorcall(message_type, args, 5, NULL) : NULL;
            Py_XDECREF(size_obj);
            if (message != NULL) {
                PyObject *call[] = {c->parser, message};
                records = as_records(PyObject_VectorcallMethod(s_feed, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                               NULL));
                Py_DECREF(message);
                /* A parser bug must cost one message, never the agent. */
                if (records == NULL) {
                    PyObject *conn_id = PyLong_FromUnsignedLongLong(c->conn_id);
                    int rc = conn_id ? absorb(&t->stats.parser_errors, "%s parser failed on connection %d",
                                              c->protocol, conn_id)
                                     : -1;
                    Py_XDECREF(conn_id);
                    Py_DECREF(start);
                    Py_DECREF(end);
                    return rc;
                }
            }
        }
    }
    Py_XDECREF(start);
    Py_XDECREF(end);
    if (records == NULL)
        return -1;
    int rc = emit(t, c, records);
    Py_DECREF(records);
    return rc;
}

/* The pending run ends as `prev` says (NULL or direction NONE: unknown, so it is not delivered). */
static int finish_run(Table *t, Conn *c, const RunView *prev) {
    PyObject *data = c->data;
    if (data == NULL)
        return 0;
    int rc = 0;
    if (!c->run_delivered && prev != NULL && prev->direction != PODSPAN_DIR_NONE)
        rc = deliver(t, c, prev->bytes, prev->end_ns);
    c->data = NULL;
    Py_DECREF(data);
    return rc;
}

static int flush_parser(Table *t, Conn *c) {
    PyObject *parser = c->parser;
    if (parser == NULL)
        return 0;
    int rc = 0;
    PyObject *records = as_records(PyObject_CallMethodNoArgs(parser, s_flush));
    if (records == NULL) {
        PyObject *conn_id = PyLong_FromUnsignedLongLong(c->conn_id);
        rc = conn_id ? absorb(&t->stats.parser_errors, "%s parser failed to flush connection %d", c->protocol,
                              conn_id)
                     : -1;
        Py_XDECREF(conn_id);
    } else {
        rc = emit(t, c, records);
        Py_DECREF(records);
    }
    /* Its drops now live in closed_drops. */
    c->parser = NULL;
    PyObject *dropped = PyObject_GetAttr(parser, s_dropped);
    Py_DECREF(parser);
    if (dropped == NULL)
        return -1;
    int nonzero = PyObject_IsTrue(dropped);
    if (nonzero > 0) {
        PyObject *key = PyLong_FromUnsignedLongLong(c->cgroup_id);
        int known = key ? PyDict_Contains(t->closed_drops, key) : -1;
        if (known == 0 && PyDict_GET_SIZE(t->closed_drops) >= MAX_DROP_CGROUPS)
            Py_XSETREF(key, PyLong_FromLong(0));
        PyObject *before = key ? PyDict_GetItemWithError(t->closed_drops, key) : NULL;
        PyObject *sum = key == NULL || PyErr_Occurred() ? NULL
                        : before ? PyNumber_Add(before, dropped)
                                 : Py_NewRef(dropped);
        if (sum == NULL || PyDict_SetItem(t->closed_drops, key, sum) < 0)
            nonzero = -1;
        Py_XDECREF(sum);
        Py_XDECREF(key);
    }
    Py_DECREF(dropped);
    return nonzero < 0 ? -1 : rc;
}

/* End a connection: its pending run ends as `last` says (undelivered if unknown), its parser gives up what
 * it still holds. */
static int finish(Table *t, Conn *c, const RunView *last) {
    if ((c->flags & PODSPAN_CONN_TLS) && !c->decrypted)
        t->stats.tls_undecrypted++;
    conn_remove(t, c);
    t->stats.closed++;
    FirstError error = {0};
    keep_error(&error, finish_run(t, c, last));
    keep_error(&error, flush_parser(t, c));
    return first_error(&error);
}

/* ---- the table's structure */

/* Track `c` (-1: an error set; it is tracked unless the maps could not grow, then freed). */
static int insert(Table *t, Conn *c) {
    if (map_reserve(&t->by_id) < 0 || map_reserve(&t->by_slot) < 0 || map_reserve(&t->by_proc) < 0) {
        conn_free(c);
        return -1;
    }
    /* The kernel sends a CLOSE before reusing a slot (a second connect() on one fd, as hiredis does, or an fd
     * reused): one still here means that event was lost. So is one with the same id (only a hand-made stream). */
    FirstError error = {0};
    for (;;) {
        Conn *stale = map_get(&t->by_slot, slot_key(c->tgid, c->fd));
        if (stale == NULL && (stale = map_get(&t->by_id, c->conn_id)) == NULL)
            break;
        t->stats.replaced++;
        keep_error(&error, finish(t, stale, NULL));
    }
    c->tracked = 1;
    map_put(&t->by_id, c->conn_id, c);
    map_put(&t->by_slot, slot_key(c->tgid, c->fd), c);
    Conn *first = map_get(&t->by_proc, c->tgid);
    if (first == NULL) {
        c->proc_prev = c->proc_next = c;
        map_put(&t->by_proc, c->tgid, c);
    } else {
        c->proc_next = first;
        c->proc_prev = first->proc_prev;
        first->proc_prev->proc_next = c;
        first->proc_prev = c;
    }
    lru_append(t, c);
    t->count++;
    while (t->count > t->max) {
        Conn *old = t->lru_first;
        conn_remove(t, old);
        t->stats.evicted++;
        keep_error(&error, flush_parser(t, old));
        keep_error(&error, call_forget(t, old));
    }
    return first_error(&error);
}

static void note_request(Conn *c) {
    Py_ssize_t n = PyBytes_GET_SIZE(c->data);
    uint32_t fingerprint =
        crc32_of((const unsigned char *)PyBytes_AS_STRING(c->data), n < FINGERPRINT_BYTES ? (size_t)n : FINGERPRINT_BYTES);
    for (int r = 0; r < c->n_requests; r++) {
        if (c->requests[r].start_ns == c->run_start_ns) { /* as an OrderedDict: updated in place */
            c->requests[r].fingerprint = fingerprint;
            c->requests[r].tid = c->run_tid;
            return;
        }
    }
    if (c->n_requests == MAX_OPEN_REQUESTS) {
        memmove(c->requests, c->requests + 1, (MAX_OPEN_REQUESTS - 1) * sizeof(Request));
        c->n_requests--;
    } else if (c->n_requests == c->cap_requests) {
        int capacity = c->cap_requests ? c->cap_requests * 2 : 2;
        Request *grown = PyMem_Realloc(c->requests, (size_t)capacity * sizeof(Request));
        if (grown == NULL)
            return; /* no fingerprint: its spans are still made, unlinked */
        c->requests = grown;
        c->cap_requests = capacity;
    }
    c->requests[c->n_requests++] = (Request){c->run_start_ns, fingerprint, c->run_tid};
}

/* ---- reading records */

static int read_u64(PyObject *record, int index, uint64_t *out) {
    PyObject *obj = PyStructSequence_GET_ITEM(record, index);
#if PY_VERSION_HEX < 0x030C0000
    /* The ints the ring-buffer decoder makes, read from their (3.11) digits: PyLong_AsUnsignedLongLong goes
     * through a byte array for any of more than one digit (timestamps, ids). */
    if (PyLong_CheckExact(obj)) {
        const PyLongObject *v = (const PyLongObject *)obj;
        Py_ssize_t size = Py_SIZE(v);
        if (size >= 0 && size <= 2) {
            uint64_t value = 0;
            for (Py_ssize_t i = size - 1; i >= 0; i--)
                value = value << PyLong_SHIFT | v->ob_digit[i];
            *out = value;
            return 0;
        }
    }
#endif
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int read_u32(PyObject *record, int index, uint32_t *out) {
    uint64_t v;
    if (read_u64(record, index, &v) < 0)
        return -1;
    if (v > UINT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "field %d out of range", index);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int read_long(PyObject *record, int index, long lo, long hi, long *out) {
    long v = PyLong_AsLong(PyStructSequence_GET_ITEM(record, index));
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "field %d is %ld, outside %ld..%ld", index, v, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int read_run(PyObject *run, RunView *out) {
    if (!Py_IS_TYPE(run, run_type)) {
        PyErr_Format(PyExc_TypeError, "expected a _ringbuf.Run, got %.100s", Py_TYPE(run)->tp_name);
        return -1;
    }
    return read_u64(run, R_START_NS, &out->start_ns) < 0 || read_u64(run, R_END_NS, &out->end_ns) < 0 ||
                   read_u64(run, R_BYTES, &out->bytes) < 0 ||
                   read_long(run, R_DIRECTION, 0, 255, &out->direction) < 0
               ? -1
               : 0;
}

/* The header fields the table uses. */
typedef struct {
    long role, direction, flags;
    uint32_t tgid, tid;
    long fd;
    uint64_t conn_id, cgroup_id, ts_ns;
    RunView prev;
} Header;

static int read_header(PyObject *record, Header *h) {
    if (read_long(record, F_ROLE, PODSPAN_ROLE_UNKNOWN, PODSPAN_ROLE_CLIENT, &h->role) < 0 ||
        read_long(record, F_DIRECTION, 0, 255, &h->direction) < 0 || read_long(record, F_FLAGS, 0, 255, &h->flags) < 0 ||
        read_u32(record, F_TGID, &h->tgid) < 0 || read_u32(record, F_TID, &h->tid) < 0 ||
        read_long(record, F_FD, INT32_MIN, INT32_MAX, &h->fd) < 0 || read_u64(record, F_CONN_ID, &h->conn_id) < 0 ||
        read_u64(record, F_CGROUP_ID, &h->cgroup_id) < 0 || read_u64(record, F_TS_NS, &h->ts_ns) < 0)
        return -1;
    return read_run(PyStructSequence_GET_ITEM(record, F_PREV), &h->prev);
}

/* The kernel's live run of a connection, if it still holds that connection: 1 (in *out), 0 (none), -1. */
static int kernel_run(Table *t, Conn *c, RunView *out) {
    PyObject *run = PyObject_CallFunction(t->kernel_run, "kiK", (unsigned long)c->tgid, (int)c->fd,
                                          (unsigned long long)c->conn_id);
    if (run == NULL)
        return -1;
    int rc = run == Py_None ? 0 : read_run(run, out) < 0 ? -1 : 1;
    Py_DECREF(run);
    return rc;
}

static Conn *conn_new(const Header *h) {
    Conn *c = PyMem_Calloc(1, sizeof(Conn));
    if (c == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    c->conn_id = h->conn_id;
    c->cgroup_id = h->cgroup_id;
    c->tgid = h->tgid;
    c->fd = (int32_t)h->fd;
    c->role = (uint8_t)h->role;
    c->flags = (uint8_t)h->flags;
    c->peer = Py_NewRef(Py_None);
    c->local = Py_NewRef(Py_None);
    return c;
}

/* The event's connection, made from its header if its open event was lost or it was evicted. */
static Conn *tracked(Table *t, const Header *h) {
    Conn *c = map_get(&t->by_id, h->conn_id);
    if (c != NULL) {
        lru_unlink(t, c);
        lru_append(t, c);
        return c;
    }
    if ((c = conn_new(h)) == NULL)
        return NULL;
    t->stats.unknown_connections++;
    return insert(t, c) < 0 ? NULL : c;
}

/* ---- events */

static PyObject *listen_endpoint(Table *t, PyObject *record) {
    PyObject *key = PyTuple_Pack(2, PyStructSequence_GET_ITEM(record, F_LISTEN_TGID),
                                 PyStructSequence_GET_ITEM(record, F_LISTEN_FD));
    if (key == NULL)
        return NULL;
    PyObject *local = PyDict_GetItemWithError(t->listen_cache, key);
    if (local != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        return Py_XNewRef(local);
    }
    if (PyDict_GET_SIZE(t->listen_cache) > MAX_LISTEN_CACHE)
        PyDict_Clear(t->listen_cache);
    local = PyObject_Call(local_endpoint_fn, key, NULL);
    if (local != NULL && PyDict_SetItem(t->listen_cache, key, local) < 0)
        Py_CLEAR(local);
    Py_DECREF(key);
    return local;
}

static int on_open(Table *t, PyObject *record) {
    Header h;
    if (read_header(record, &h) < 0)
        return -1;
    PyObject *peer = PyObject_CallOneArg(decode_peer_fn, PyStructSequence_GET_ITEM(record, F_PEER));
    if (peer == NULL)
        return -1;
    /* The listener lives in the accepting process: for a socket a forked child inherited, its parent. */
    PyObject *local = h.role == PODSPAN_ROLE_SERVER ? listen_endpoint(t, record) : Py_NewRef(Py_None);
    Conn *c = local ? conn_new(&h) : NULL;
    if (c == NULL) {
        Py_DECREF(peer);
        Py_XDECREF(local);
        return -1;
    }
    Py_SETREF(c->peer, peer);
    Py_SETREF(c->local, local);
    c->tid = h.tid;
    t->stats.opened++;
    return insert(t, c);
}

static int on_data(Table *t, PyObject *record, const Header *h) {
    PyObject *data = PyStructSequence_GET_ITEM(record, F_DATA);
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "event data must be bytes");
        return -1;
    }
    Conn *c = tracked(t, h);
    if (c == NULL)
        return -1;
    /* The kernel switches capture mode when it sees the HTTP/2 preface; on a TLS connection only the TLS probes'
     * plaintext comes as data. */
    c->flags = (uint8_t)h->flags;
    if (h->flags & PODSPAN_CONN_TLS)
        c->decrypted = 1;
    if (finish_run(t, c, &h->prev) < 0)
        return -1;
    if (!c->tracked)
        return 0; /* undetected for good: the kernel forgets it */
    /* A client connection sends requests; a server connection receives them. */
    c->run_from_client = h->direction == (c->role == PODSPAN_ROLE_CLIENT ? PODSPAN_DIR_EGRESS : PODSPAN_DIR_INGRESS);
    c->data = Py_NewRef(data);
    c->run_start_ns = h->ts_ns;
    c->run_tid = h->tid;
    c->run_delivered = 0;
    c->tid = h->tid;
    if (c->run_from_client)
        note_request(c);
    return 0;
}

/* More bytes of the pending run: a later chunk the kernel copied because the run's first chunks were short (a
 * length header read on its own, a second message in a second write). */
static int on_continuation(Table *t, PyObject *record, const Header *h) {
    PyObject *data = PyStructSequence_GET_ITEM(record, F_DATA);
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "event data must be bytes");
        return -1;
    }
    Conn *c = map_get(&t->by_id, h->conn_id);
    /* No run to extend: its DATA event was lost, or the run went out already as idle. */
    if (c == NULL || c->data == NULL || c->run_delivered) {
        t->stats.continuations_dropped++;
        return 0;
    }
    Py_ssize_t had = PyBytes_GET_SIZE(c->data);
    PyBytes_Concat(&c->data, data);
    if (c->data == NULL)
        return -1; /* the run is lost */
    if (c->run_from_client && had < FINGERPRINT_BYTES)
        note_request(c); /* the fingerprint covers the request's first bytes, wherever they came from */
    return 0;
}

/* The connection started TLS (a handshake record): from here on only plaintext from the TLS library probes
 * comes as data; the run in progress is unaffected. */
static int on_tls(Table *t, const Header *h) {
    Conn *c = tracked(t, h);
    if (c == NULL)
        return -1;
    c->flags = (uint8_t)h->flags;
    t->stats.tls_handshakes++;
    PyObject *key = Py_BuildValue("(KK)", (unsigned long long)h->cgroup_id, (unsigned long long)h->tgid);
    PyObject *seen = key ? PyObject_CallMethodObjArgs(t->tls_processes, s_get, key, v_zero, NULL) : NULL;
    PyObject *one = PyLong_FromLong(1);
    PyObject *sum = seen && one ? PyNumber_Add(seen, one) : NULL;
    int rc = sum ? PyObject_SetItem(t->tls_processes, key, sum) : -1;
    PyObject *moved = rc == 0 ? PyObject_CallMethodOneArg(t->tls_processes, s_move_to_end, key) : NULL;
    rc = moved ? 0 : -1;
    Py_XDECREF(moved);
    Py_XDECREF(sum);
    Py_XDECREF(one);
    Py_XDECREF(seen);
    Py_XDECREF(key);
    while (rc == 0 && PyObject_Length(t->tls_processes) > MAX_TLS_PROCESSES) {
        PyObject *kwargs = Py_BuildValue("{OO}", s_last, Py_False);
        PyObject *noargs = PyTuple_New(0);
        PyObject *method = PyObject_GetAttr(t->tls_processes, s_popitem);
        PyObject *popped = kwargs && noargs && method ? PyObject_Call(method, noargs, kwargs) : NULL;
        rc = popped ? 0 : -1;
        Py_XDECREF(popped);
        Py_XDECREF(method);
        Py_XDECREF(noargs);
        Py_XDECREF(kwargs);
    }
    return rc;
}

/* Process `tgid` is gone (exit, kill) with connections it never closed: each ends where the kernel last saw
 * its run, and its kernel entry goes. */
static int on_process_exit(Table *t, uint32_t tgid) {
    Conn *first = map_get(&t->by_proc, tgid);
    if (first == NULL)
        return 0;
    Py_ssize_t n = 1;
    for (Conn *c = first->proc_next; c != first; c = c->proc_next)
        n++;
    Conn **ended = PyMem_Malloc((size_t)n * sizeof(Conn *));
    if (ended == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Conn *c = first;
    for (Py_ssize_t i = 0; i < n; i++, c = c->proc_next)
        ended[i] = c;
    int rc = 0;
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        c = ended[i];
        if (!c->tracked)
            continue;
        RunView live;
        int found = kernel_run(t, c, &live);
        if (found < 0 || finish(t, c, found ? &live : NULL) < 0) {
            rc = -1;
            break;
        }
        t->stats.ended_by_exit++;
        rc = call_forget(t, c);
    }
    PyMem_Free(ended);
    return rc;
}

static int on_close(Table *t, const Header *h) {
    Conn *c = map_get(&t->by_id, h->conn_id);
    if (c == NULL)
        return 0;
    if ((h->flags & PODSPAN_CONN_TLS) && !c->decrypted && t->tls_failure != Py_None) {
        /* No plaintext: did its handshake fail? That is the connection's one exchange then. */
        PyObject *records = as_records(PyObject_CallFunction(t->tls_failure, "K", (unsigned long long)c->conn_id));
        int rc = records == NULL ? -1 : emit(t, c, records);
        Py_XDECREF(records);
        if (rc < 0)
            return -1;
    }
    return finish(t, c, &h->prev);
}

static int handle(Table *t, PyObject *record) {
    if (Py_IS_TYPE(record, malformed_type)) {
        t->stats.malformed_events++;
        return 0;
    }
    if (Py_IS_TYPE(record, open_type))
        return on_open(t, record);
    if (!Py_IS_TYPE(record, event_type)) {
        PyErr_Format(PyExc_TypeError, "not a ring-buffer record: %.100s", Py_TYPE(record)->tp_name);
        return -1;
    }
    long kind;
    Header h;
    if (read_long(record, F_KIND, 0, 255, &kind) < 0 || read_header(record, &h) < 0)
        return -1;
    switch (kind) {
    case PODSPAN_EV_DATA:
        return on_data(t, record, &h);
    case PODSPAN_EV_CLOSE:
        return on_close(t, &h);
    case PODSPAN_EV_CONTINUATION:
        return on_continuation(t, record, &h);
    case PODSPAN_EV_EXIT:
        return on_process_exit(t, h.tgid);
    case PODSPAN_EV_TLS:
        return on_tls(t, &h);
    default: /* an Event of no known kind: only a hand-made one */
        t->stats.malformed_events++;
        return 0;
    }
}

/* ---- methods */

static int enter(Table *t) {
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError, "connection table re-entered from a callback");
        return -1;
    }
    t->busy = 1;
    return 0;
}

static void leave(Table *t) {
    free_dead(t);
    t->busy = 0;
}

static PyObject *table_feed(Table *t, PyObject *records) {
    if (!PyList_Check(records))
        return PyErr_Format(PyExc_TypeError, "feed() takes a list, not %.100s", Py_TYPE(records)->tp_name);
    if (enter(t) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = Py_NewRef(PyList_GET_ITEM(records, i));
        t->stats.events++;
        int rc = handle(t, record);
        if (rc < 0) {
            /* A bug must cost one event, never the batch or the agent; logged at the 1st, 2nd, 4th, ... (no
             * flood), without the record itself: its data may hold private bytes. */
            unsigned long long n = t->stats.event_errors + 1;
            PyObject *kind = PyTuple_Check(record) && PyTuple_GET_SIZE(record) > 0 ? PyTuple_GET_ITEM(record, 0)
                                                                                   : Py_None;
            Py_INCREF(kind);
            PyObject *count = PyLong_FromUnsignedLongLong(n);
            if (!PyErr_ExceptionMatches(PyExc_Exception) || count == NULL) {
                Py_DECREF(kind);
                Py_XDECREF(count);
                Py_DECREF(record);
                leave(t);
                return NULL;
            }
            if ((n & (n - 1)) == 0)
                absorb(&t->stats.event_errors, "handling a kind %s event failed (%d so far)", kind, count);
            else {
                PyErr_Clear();
                t->stats.event_errors++;
            }
            Py_DECREF(kind);
            Py_DECREF(count);
        }
        Py_DECREF(record);
        free_dead(t);
    }
    leave(t);
    Py_RETURN_NONE;
}

static PyObject *table_flush_idle(Table *t, PyObject *arg) {
    unsigned long long before = PyLong_AsUnsignedLongLong(arg);
    if (before == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (enter(t) < 0)
        return NULL;
    int rc = 0;
    for (Conn *c = t->lru_first, *next; c != NULL && rc == 0; c = next) {
        next = c->lru_next;
        if (c->data == NULL || c->run_from_client || c->run_delivered || c->parser == NULL || c->run_start_ns > before)
            continue;
        RunView live;
        int found = kernel_run(t, c, &live);
        if (found < 0) {
            rc = -1;
            break;
        }
        /* A kernel run that started later is a chunk whose event is still in the ring buffer. */
        if (!found || live.start_ns != c->run_start_ns || live.end_ns > before)
            continue;
        rc = deliver(t, c, live.bytes, live.end_ns);
        c->run_delivered = 1;
    }
    leave(t);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *table_finish_all(Table *t, PyObject *unused) {
    (void)unused;
    if (enter(t) < 0)
        return NULL;
    int rc = 0;
    while (t->lru_first != NULL && rc == 0) {
        Conn *c = t->lru_first;
        RunView live;
        int found = kernel_run(t, c, &live);
        if (found < 0) {
            rc = -1;
            break;
        }
        rc = finish(t, c, found ? &live : NULL);
    }
    leave(t);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *table_take_exchanges(Table *t, PyObject *unused) {
    (void)unused;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *taken = t->exchanges;
    t->exchanges = fresh;
    return taken;
}

static PyObject *table_set_detector(Table *t, PyObject *detect) {
    Py_SETREF(t->detect, Py_NewRef(detect));
    Py_RETURN_NONE;
}

static PyObject *table_connections(Table *t, PyObject *unused) {
    (void)unused;
    PyObject *list = PyList_New(0);
    for (Conn *c = t->lru_first; list != NULL && c != NULL; c = c->lru_next) {
        PyObject *info = conn_snapshot(c); /* not kept: the first exchange's snapshot is made later */
        if (info == NULL || PyList_Append(list, info) < 0)
            Py_CLEAR(list);
        Py_XDECREF(info);
    }
    return list;
}

static PyObject *table_busy_threads(Table *t, PyObject *unused) {
    (void)unused;
    PyObject *busy = PySet_New(NULL);
    for (Conn *c = t->lru_first; busy != NULL && c != NULL; c = c->lru_next) {
        if (c->role != PODSPAN_ROLE_SERVER || c->data == NULL || !c->run_from_client)
            continue;
        PyObject *key = Py_BuildValue("(kk)", (unsigned long)c->tgid, (unsigned long)c->tid);
        if (key == NULL || PySet_Add(busy, key) < 0)
            Py_CLEAR(busy);
        Py_XDECREF(key);
    }
    return busy;
}

static PyObject *table_parser_drops(Table *t, PyObject *unused) {
    (void)unused;
    PyObject *drops = PyDict_Copy(t->closed_drops);
    for (Conn *c = t->lru_first; drops != NULL && c != NULL; c = c->lru_next) {
        if (c->parser == NULL)
            continue;
        PyObject *key = PyLong_FromUnsignedLongLong(c->cgroup_id);
        PyObject *dropped = key ? PyObject_GetAttr(c->parser, s_dropped) : NULL;
        PyObject *before = dropped ? PyDict_GetItemWithError(drops, key) : NULL;
        PyObject *sum = dropped && !PyErr_Occurred() ? PyNumber_Add(dropped, before ? before : v_zero)
                                                     : NULL;
        if (sum == NULL || PyDict_SetItem(drops, key, sum) < 0)
            Py_CLEAR(drops);
        Py_XDECREF(sum);
        Py_XDECREF(dropped);
        Py_XDECREF(key);
    }
    if (drops == NULL)
        return NULL;
    /* Only cgroups with drops. */
    PyObject *result = PyDict_New();
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (result != NULL && PyDict_Next(drops, &pos, &key, &value)) {
        int nonzero = PyObject_IsTrue(value);
        if (nonzero < 0 || (nonzero && PyDict_SetItem(result, key, value) < 0))
            Py_CLEAR(result);
    }
    Py_DECREF(drops);
    return result;
}

static PyObject *table_stats(Table *t, void *closure) {
    (void)closure;
    PyObject *stats = PyStructSequence_New(&StatsType);
    if (stats == NULL)
        return NULL;
    const unsigned long long *values = (const unsigned long long *)&t->stats;
    for (int i = 0; i < N_STATS; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(values[i]);
        if (value == NULL) {
            Py_DECREF(stats);
            return NULL;
        }
        PyStructSequence_SET_ITEM(stats, i, value);
    }
    return stats;
}

static PyObject *table_tls_processes(Table *t, void *closure) {
    (void)closure;
    return Py_NewRef(t->tls_processes);
}

static Py_ssize_t table_len(Table *t) { return t->count; }

/* ---- lifetime */

/* What the table takes from Python modules that import this one (connections), so at the first Table(). */
static int import_lazily(void) {
    if (logger != NULL)
        return 0;
    PyObject *get_logger = NULL;
    if (import_attr(&info_type, "podspan_agent.connections", "ConnectionInfo") < 0 ||
        import_attr(&message_type, "podspan_agent.protocols.base", "Message") < 0 ||
        import_attr(&decode_peer_fn, "podspan_agent.sockaddr", "decode") < 0 ||
        import_attr(&local_endpoint_fn, "podspan_agent.sockaddr", "local_endpoint") < 0 ||
        import_attr(&get_logger, "logging", "getLogger") < 0)
        return -1;
    logger = PyObject_CallFunction(get_logger, "s", "podspan_agent.connections");
    Py_DECREF(get_logger);
    return logger == NULL ? -1 : 0;
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"detect", "forget", "kernel_run", "tls_version", "max_connections", "tls_failure", NULL};
    PyObject *detect, *forget, *kernel_run_fn, *tls_version, *tls_failure = Py_None;
    Py_ssize_t max = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|n$O:Table", keywords, &detect, &forget, &kernel_run_fn,
                                     &tls_version, &max, &tls_failure))
        return NULL;
    if (max < 1)
        return PyErr_Format(PyExc_ValueError, "max_connections must be >= 1, got %zd", max);
    if (import_lazily() < 0)
        return NULL;
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->detect = Py_NewRef(detect);
    t->forget = Py_NewRef(forget);
    t->kernel_run = Py_NewRef(kernel_run_fn);
    t->tls_version = Py_NewRef(tls_version);
    t->tls_failure = Py_NewRef(tls_failure);
    t->on_detected = Py_NewRef(Py_None);
    t->max = max;
    PyObject *collections = PyImport_ImportModule("collections");
    t->tls_processes = collections ? PyObject_CallMethod(collections, "OrderedDict", NULL) : NULL;
    Py_XDECREF(collections);
    if (t->tls_processes == NULL || (t->exchanges = PyList_New(0)) == NULL ||
        (t->closed_drops = PyDict_New()) == NULL || (t->listen_cache = PyDict_New()) == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static int table_traverse(Table *t, visitproc visit, void *arg) {
    Py_VISIT(t->detect);
    Py_VISIT(t->forget);
    Py_VISIT(t->kernel_run);
    Py_VISIT(t->tls_version);
    Py_VISIT(t->tls_failure);
    Py_VISIT(t->on_detected);
    Py_VISIT(t->exchanges);
    Py_VISIT(t->closed_drops);
    Py_VISIT(t->listen_cache);
    Py_VISIT(t->tls_processes);
    for (Conn *c = t->lru_first; c != NULL; c = c->lru_next) {
        Py_VISIT(c->parser);
        Py_VISIT(c->peer);
        Py_VISIT(c->local);
        Py_VISIT(c->info);
    }
    return 0;
}

static void drop_connections(Table *t) {
    while (t->lru_first != NULL)
        conn_remove(t, t->lru_first);
    free_dead(t);
    PyMem_Free(t->by_id.slots);
    PyMem_Free(t->by_slot.slots);
    PyMem_Free(t->by_proc.slots);
    memset(&t->by_id, 0, sizeof t->by_id);
    memset(&t->by_slot, 0, sizeof t->by_slot);
    memset(&t->by_proc, 0, sizeof t->by_proc);
}

static int table_clear(Table *t) {
    if (!t->busy)
        drop_connections(t);
    Py_CLEAR(t->detect);
    Py_CLEAR(t->forget);
    Py_CLEAR(t->kernel_run);
    Py_CLEAR(t->tls_version);
    Py_CLEAR(t->tls_failure);
    Py_CLEAR(t->on_detected);
    Py_CLEAR(t->exchanges);
    Py_CLEAR(t->closed_drops);
    Py_CLEAR(t->listen_cache);
    Py_CLEAR(t->tls_processes);
    return 0;
}

static void table_dealloc(Table *t) {
    PyObject_GC_UnTrack(t);
    table_clear(t);
    drop_connections(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef table_methods[] = {
    {"feed", (PyCFunction)table_feed, METH_O, "feed(records, /)\n--\n\nHandle one batch of ring-buffer records."},
    {"flush_idle", (PyCFunction)table_flush_idle, METH_O,
     "flush_idle(before_ns, /)\n--\n\nDeliver server runs quiet since before_ns that the kernel says are complete "
     "(the last response on a keep-alive connection has no following event to end it)."},
    {"finish_all", (PyCFunction)table_finish_all, METH_NOARGS,
     "finish_all()\n--\n\nEnd every connection where the kernel last saw its run."},
    {"take_exchanges", (PyCFunction)table_take_exchanges, METH_NOARGS,
     "take_exchanges()\n--\n\nThe exchanges completed so far, oldest first; each is returned once."},
    {"set_detector", (PyCFunction)table_set_detector, METH_O,
     "set_detector(detect, /)\n--\n\nNew connections are detected by `detect`; existing ones keep their parser."},
    {"connections", (PyCFunction)table_connections, METH_NOARGS,
     "connections()\n--\n\nSnapshots of the tracked connections, least recently used first."},
    {"busy_threads", (PyCFunction)table_busy_threads, METH_NOARGS,
     "busy_threads()\n--\n\n(tgid, tid) of every thread that has received a request it has not yet answered."},
    {"parser_drops_by_cgroup", (PyCFunction)table_parser_drops, METH_NOARGS,
     "parser_drops_by_cgroup()\n--\n\nPer cgroup id, the exchanges its connections' parsers could not report since "
     "the table started (open connections included; cumulative)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *table_get_on_detected(Table *t, void *closure) { return Py_NewRef(t->on_detected); }

static int table_set_on_detected(Table *t, PyObject *value, void *closure) {
    if (value == NULL || (value != Py_None && !PyCallable_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "on_detected must be a callable or None");
        return -1;
    }
    Py_SETREF(t->on_detected, Py_NewRef(value));
    return 0;
}

static PyGetSetDef table_getset[] = {
    {"on_detected", (getter)table_get_on_detected, (setter)table_set_on_detected,
     "None, or called as on_detected(tgid, fd, conn_id, protocol) when a stream connection's protocol is found.",
     NULL},
    {"stats", (getter)table_stats, NULL, "The counters (a new TableStats on each access).", NULL},
    {"tls_processes", (getter)table_tls_processes, NULL,
     "OrderedDict (cgroup id, tgid) -> TLS handshakes seen, most recent last (the TLS library report).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods table_as_sequence = {.sq_length = (lenfunc)table_len};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "podspan_agent._conntable.Table",
    .tp_basicsize = sizeof(Table),
    .tp_dealloc = (destructor)table_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Table(detect, forget, kernel_run, tls_version, max_connections=65536, *, tls_failure=None): all "
              "tracked connections of one agent, bounded; least recently used are evicted.",
    .tp_traverse = (traverseproc)table_traverse,
    .tp_clear = (inquiry)table_clear,
    .tp_methods = table_methods,
    .tp_getset = table_getset,
    .tp_as_sequence = &table_as_sequence,
    .tp_new = table_new,
};

/* --------------------------------------------------------------------------- module */

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "podspan_agent._conntable",
    "The connection table: ring-buffer records into exchanges for the span layer.", -1, NULL, NULL, NULL, NULL, NULL,
};

static int init_state(void) {
    crc_init();
    PyObject *ringbuf = PyImport_ImportModule("podspan_agent._ringbuf");
    if (ringbuf == NULL)
        return -1;
    PyObject *types[4] = {PyObject_GetAttrString(ringbuf, "Event"), PyObject_GetAttrString(ringbuf, "OpenEvent"),
                          PyObject_GetAttrString(ringbuf, "Malformed"), PyObject_GetAttrString(ringbuf, "Run")};
    Py_DECREF(ringbuf);
    for (int i = 0; i < 4; i++) {
        if (types[i] == NULL || !PyType_Check(types[i])) {
            for (int j = 0; j < 4; j++)
                Py_XDECREF(types[j]);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ImportError, "podspan_agent._ringbuf has no record types");
            return -1;
        }
    }
    /* Kept for the process's life, as the module state is. */
    event_type = (PyTypeObject *)types[0];
    open_type = (PyTypeObject *)types[1];
    malformed_type = (PyTypeObject *)types[2];
    run_type = (PyTypeObject *)types[3];
    PyObject *http1_module = PyImport_ImportModule("podspan_agent._http1"); /* PyCapsule_Import only reads attributes */
    if (http1_module == NULL)
        return -1;
    Py_DECREF(http1_module);
    http1 = PyCapsule_Import(PODSPAN_HTTP1_CAPSULE, 0);
    if (http1 == NULL)
        return -1;
    if (intern(&s_feed, "feed") < 0 || intern(&s_flush, "flush") < 0 || intern(&s_dropped, "dropped") < 0 ||
        intern(&s_start_ns, "start_ns") < 0 || intern(&s_get, "get") < 0 || intern(&s_move_to_end, "move_to_end") < 0 ||
        intern(&s_popitem, "popitem") < 0 || intern(&s_error, "error") < 0 || intern(&s_exc_info, "exc_info") < 0 ||
        intern(&s_last, "last") < 0)
        return -1;
    if ((v_zero = PyLong_FromLong(0)) == NULL)
        return -1;
    if (PyStructSequence_InitType2(&ExchangeType, &exchange_desc) < 0 ||
        PyStructSequence_InitType2(&StatsType, &stats_desc) < 0)
        return -1;
    return 0;
}

PyMODINIT_FUNC PyInit__conntable(void) {
    if (http1 == NULL && init_state() < 0)
        return NULL;
    if (PyType_Ready(&TableType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Table", (PyObject *)&TableType) < 0 ||
        PyModule_AddObjectRef(module, "Exchange", (PyObject *)&ExchangeType) < 0 ||
        PyModule_AddObjectRef(module, "TableStats", (PyObject *)&StatsType) < 0 ||
        PyModule_AddIntConstant(module, "MAX_OPEN_REQUESTS", MAX_OPEN_REQUESTS) < 0 ||
        PyModule_AddIntConstant(module, "FINGERPRINT_BYTES", FINGERPRINT_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "DETECT_ATTEMPTS", DETECT_ATTEMPTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
