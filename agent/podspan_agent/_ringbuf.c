/*
 * podspan_agent._ringbuf: the agent's consumer of the capture program's BPF ring buffer (`events`).
 *
 * Records are drained and decoded here in batches, so Python sees neither raw memory nor a call per
 * record. The event structs are the kernel's own (bpf/include/podspan_events.h, compiled in), so a
 * change there changes this decoder with it.
 *
 * RingBuffer(map_fd)
 *     Maps a BPF_MAP_TYPE_RINGBUF map the way libbpf does: the consumer page read-write at offset 0,
 *     the producer page and the data read-only at offset pagesize, the data twice in a row (length
 *     pagesize + 2 * size), so a record that wraps around the end is still contiguous. The map fd is
 *     duplicated: the object works (and fileno() stays valid) whoever closes the original.
 *   fileno() -> int       an fd that polls readable (epoll, select) while committed records wait; the
 *                         producers batch their wake-ups, so drain after every wait, woken or not.
 *   drain(limit) -> list  up to `limit` committed records, oldest first, decoded as decode() does;
 *                         stops at the first record still being written (BUSY) and skips discarded ones.
 *                         The space of delivered records goes back to the producers as they are consumed
 *                         (consumer_pos: release store, producer_pos and record headers: acquire loads).
 *                         If decoding fails (MemoryError), the batch ends before that record, which stays
 *                         in the ring; the error is raised only when it is the batch's first record.
 *   size                  bytes of data in the ring (the map's max_entries).
 *   close()               unmaps and closes the fd (also on garbage collection); idempotent.
 *   A drain cannot run while another is running on the same object (RuntimeError), nor can close().
 *
 * decode(buffer) -> Event | OpenEvent | Malformed
 *     One record's bytes (the ring-buffer record without its 8-byte length header); never reads past
 *     them. What drain() returns for each record.
 *
 * Record types (struct sequences: tuples with named fields, in this order):
 *   Run        start_ns, end_ns, bytes, chunks, direction        struct podspan_run
 *   Event      kind, role, direction, flags, tgid, tid, fd, conn_id, cgroup_id, ts_ns, prev (a Run),
 *              chunk_bytes, data
 *              kind DATA, CONTINUATION or TLS (struct podspan_data_event): data = the captured bytes,
 *              min(captured, record length - DATA_OFFSET) of them (none for TLS);
 *              kind CLOSE or EXIT (struct podspan_event_header): chunk_bytes 0, data b"".
 *   OpenEvent  kind (OPEN), role, direction, flags, tgid, tid, fd, conn_id, cgroup_id, ts_ns, prev,
 *              listen_fd, peer, listen_tgid                      struct podspan_open_event
 *              peer = the first addr_len bytes of the raw sockaddr (addr_len clamped to its 28).
 *   Malformed  kind (MALFORMED = 0), raw_kind, size: a record too short for its kind, or of no known
 *              kind; raw_kind is its first byte (-1 for an empty record), size its length.
 *
 * Constants: the event kinds OPEN, DATA, CLOSE, CONTINUATION, EXIT, TLS and MALFORMED; HEADER_SIZE,
 * OPEN_SIZE and DATA_OFFSET, the sizes the decoder requires.
 *
 * Single-phase init; the types are static and the module has no other state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <linux/types.h>

#include "podspan_events.h"

#define MALFORMED 0
#define HEADER_SIZE sizeof(struct podspan_event_header)
#define OPEN_SIZE sizeof(struct podspan_open_event)
#define DATA_OFFSET offsetof(struct podspan_data_event, data)
/* Consumed space goes back to the producers at least every this many records of a batch. */
#define RELEASE_EVERY 64

/* --------------------------------------------------------------------------- record types */

static PyTypeObject RunType, EventType, OpenEventType, MalformedType;

#define HEADER_FIELDS                                                                                  \
    {"kind", "enum podspan_event_kind"}, {"role", "enum podspan_role"},                                \
        {"direction", "DATA/CONTINUATION: direction of the run (enum podspan_direction)"},             \
        {"flags", "enum podspan_conn_flag bits of the connection"}, {"tgid", NULL}, {"tid", NULL},     \
        {"fd", NULL}, {"conn_id", "unique per tracked connection"}, {"cgroup_id", NULL},               \
        {"ts_ns", "CLOCK_MONOTONIC"}, {"prev", "the run that just ended (a Run; direction 0 if none)"}
#define N_HEADER_FIELDS 11

static PyStructSequence_Field run_fields[] = {
    {"start_ns", "exit time of the run's first chunk (CLOCK_MONOTONIC)"},
    {"end_ns", "exit time of the run's last chunk"},
    {"bytes", NULL},
    {"chunks", NULL},
    {"direction", "enum podspan_direction; 0 (NONE) when there was no run"},
    {NULL, NULL},
};
static PyStructSequence_Field event_fields[] = {
    HEADER_FIELDS,
    {"chunk_bytes", "DATA/CONTINUATION: bytes moved by the syscall; 0 otherwise"},
    {"data", "DATA/CONTINUATION: the captured bytes; b'' otherwise"},
    {NULL, NULL},
};
static PyStructSequence_Field open_fields[] = {
    HEADER_FIELDS,
    {"listen_fd", "accept: the listening socket (in process listen_tgid); -1 for connect"},
    {"peer", "the peer's raw struct sockaddr (addr_len bytes)"},
    {"listen_tgid", "the process that accepted"},
    {NULL, NULL},
};
static PyStructSequence_Field malformed_fields[] = {
    {"kind", "always MALFORMED (0)"},
    {"raw_kind", "the record's first byte, -1 if it is empty"},
    {"size", "the record's length"},
    {NULL, NULL},
};

static PyStructSequence_Desc run_desc = {"podspan_agent._ringbuf.Run", "struct podspan_run.", run_fields, 5};
static PyStructSequence_Desc event_desc = {
    "podspan_agent._ringbuf.Event", "A DATA, CONTINUATION, CLOSE or EXIT event.", event_fields,
    N_HEADER_FIELDS + 2};
static PyStructSequence_Desc open_desc = {"podspan_agent._ringbuf.OpenEvent", "An OPEN event.", open_fields,
                                          N_HEADER_FIELDS + 3};
static PyStructSequence_Desc malformed_desc = {
    "podspan_agent._ringbuf.Malformed", "A record too short for its kind, or of no known kind.", malformed_fields,
    3};

static PyObject *empty_bytes;

/* A record holds only ints, bytes and a Run and is immutable: it can never be part of a reference cycle,
 * so the cyclic GC need not scan it (as it stops scanning such tuples once it has seen them). */
static PyObject *untracked(PyObject *obj) {
    PyObject_GC_UnTrack(obj);
    return obj;
}

static PyObject *new_run(const struct podspan_run *run) {
    PyObject *obj = PyStructSequence_New(&RunType);
    if (obj == NULL)
        return NULL;
    PyObject *items[5] = {
        PyLong_FromUnsignedLongLong(run->start_ns), PyLong_FromUnsignedLongLong(run->end_ns),
        PyLong_FromUnsignedLongLong(run->bytes),    PyLong_FromUnsignedLong(run->chunks),
        PyLong_FromLong(run->direction),
    };
    int failed = 0;
    for (int i = 0; i < 5; i++) {
        failed |= items[i] == NULL;
        PyStructSequence_SET_ITEM(obj, i, items[i]); /* NULL items are fine for the dealloc */
    }
    if (failed) {
        Py_DECREF(obj);
        return NULL;
    }
    return untracked(obj);
}

/* Fills the header fields (0 .. N_HEADER_FIELDS-1) of a new Event or OpenEvent; -1 on error. */
static int set_header(PyObject *obj, const struct podspan_event_header *hdr) {
    PyObject *items[N_HEADER_FIELDS] = {
        PyLong_FromLong(hdr->kind),
        PyLong_FromLong(hdr->role),
        PyLong_FromLong(hdr->direction),
        PyLong_FromLong(hdr->flags),
        PyLong_FromUnsignedLong(hdr->tgid),
        PyLong_FromUnsignedLong(hdr->tid),
        PyLong_FromLong(hdr->fd),
        PyLong_FromUnsignedLongLong(hdr->conn_id),
        PyLong_FromUnsignedLongLong(hdr->cgroup_id),
        PyLong_FromUnsignedLongLong(hdr->ts_ns),
        new_run(&hdr->prev),
    };
    int failed = 0;
    for (int i = 0; i < N_HEADER_FIELDS; i++) {
        failed |= items[i] == NULL;
        PyStructSequence_SET_ITEM(obj, i, items[i]);
    }
    return failed ? -1 : 0;
}

static PyObject *new_malformed(const unsigned char *rec, size_t len) {
    PyObject *obj = PyStructSequence_New(&MalformedType);
    if (obj == NULL)
        return NULL;
    PyObject *items[3] = {PyLong_FromLong(MALFORMED), PyLong_FromLong(len ? rec[0] : -1), PyLong_FromSize_t(len)};
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        failed |= items[i] == NULL;
        PyStructSequence_SET_ITEM(obj, i, items[i]);
    }
    if (failed) {
        Py_DECREF(obj);
        return NULL;
    }
    return untracked(obj);
}

/* One record (`len` bytes at `rec`, no alignment assumed) as its Python object; reads only rec[0..len). */
static PyObject *decode_record(const unsigned char *rec, size_t len) {
    size_t need;
    int kind = len ? rec[0] : -1;
    switch (kind) {
    case PODSPAN_EV_DATA:
    case PODSPAN_EV_CONTINUATION:
    case PODSPAN_EV_TLS:
        need = DATA_OFFSET;
        break;
    case PODSPAN_EV_CLOSE:
    case PODSPAN_EV_EXIT:
        need = HEADER_SIZE;
        break;
    case PODSPAN_EV_OPEN:
        need = OPEN_SIZE;
        break;
    default:
        return new_malformed(rec, len);
    }
    if (len < need)
        return new_malformed(rec, len);

    if (kind == PODSPAN_EV_OPEN) {
        struct podspan_open_event ev;
        memcpy(&ev, rec, sizeof ev);
        PyObject *obj = PyStructSequence_New(&OpenEventType);
        if (obj == NULL)
            return NULL;
        size_t peer_len = ev.addr_len < sizeof ev.peer ? ev.addr_len : sizeof ev.peer;
        PyObject *tail[3] = {
            PyLong_FromLong(ev.listen_fd),
            PyBytes_FromStringAndSize((const char *)ev.peer, (Py_ssize_t)peer_len),
            PyLong_FromUnsignedLong(ev.listen_tgid),
        };
        int failed = set_header(obj, &ev.hdr);
        for (int i = 0; i < 3; i++) {
            failed |= tail[i] == NULL;
            PyStructSequence_SET_ITEM(obj, N_HEADER_FIELDS + i, tail[i]);
        }
        if (failed) {
            Py_DECREF(obj);
            return NULL;
        }
        return untracked(obj);
    }

    struct podspan_event_header hdr;
    memcpy(&hdr, rec, sizeof hdr);
    PyObject *chunk_bytes, *data;
    if (kind == PODSPAN_EV_DATA || kind == PODSPAN_EV_CONTINUATION || kind == PODSPAN_EV_TLS) {
        __u32 fixed[2]; /* chunk_bytes, captured */
        _Static_assert(offsetof(struct podspan_data_event, captured) ==
                           offsetof(struct podspan_data_event, chunk_bytes) + sizeof(__u32),
                       "chunk_bytes and captured are adjacent");
        memcpy(fixed, rec + offsetof(struct podspan_data_event, chunk_bytes), sizeof fixed);
        size_t avail = len - DATA_OFFSET;
        size_t captured = fixed[1] < avail ? fixed[1] : avail;
        chunk_bytes = PyLong_FromUnsignedLong(fixed[0]);
        data = PyBytes_FromStringAndSize((const char *)rec + DATA_OFFSET, (Py_ssize_t)captured);
    } else {
        chunk_bytes = PyLong_FromLong(0);
        data = Py_NewRef(empty_bytes);
    }
    PyObject *obj = PyStructSequence_New(&EventType);
    if (obj == NULL) {
        Py_XDECREF(chunk_bytes);
        Py_XDECREF(data);
        return NULL;
    }
    int failed = set_header(obj, &hdr) | (chunk_bytes == NULL) | (data == NULL);
    PyStructSequence_SET_ITEM(obj, N_HEADER_FIELDS, chunk_bytes);
    PyStructSequence_SET_ITEM(obj, N_HEADER_FIELDS + 1, data);
    if (failed) {
        Py_DECREF(obj);
        return NULL;
    }
    return untracked(obj);
}

static PyObject *decode(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = decode_record(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return result;
}

/* --------------------------------------------------------------------------- RingBuffer */

typedef struct {
    PyObject_HEAD
    int fd;                      /* our duplicate of the map fd; -1 once closed */
    int busy;                    /* a drain is running */
    size_t size;                 /* data bytes (max_entries), a power of two */
    size_t page;                 /* page size */
    unsigned long *consumer_pos; /* the consumer page (RW) */
    unsigned char *producer;     /* the producer page then the data twice (RO) */
} RingBuffer;

static int map_info(int fd, struct bpf_map_info *info) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    memset(info, 0, sizeof *info);
    attr.info.bpf_fd = (__u32)fd;
    attr.info.info_len = sizeof *info;
    attr.info.info = (__u64)(uintptr_t)info;
    return (int)syscall(__NR_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, sizeof attr);
}

static void unmap(RingBuffer *self) {
    if (self->producer != NULL)
        munmap(self->producer, self->page + 2 * self->size);
    if (self->consumer_pos != NULL)
        munmap(self->consumer_pos, self->page);
    self->producer = NULL;
    self->consumer_pos = NULL;
    if (self->fd >= 0)
        close(self->fd);
    self->fd = -1;
}

static PyObject *ringbuffer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"map_fd", NULL};
    int map_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i:RingBuffer", keywords, &map_fd))
        return NULL;
    struct bpf_map_info info;
    if (map_info(map_fd, &info) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (info.type != BPF_MAP_TYPE_RINGBUF)
        return PyErr_Format(PyExc_ValueError, "fd %d is a BPF map of type %u, not a ring buffer", map_fd, info.type);
    long page = sysconf(_SC_PAGESIZE);
    size_t size = info.max_entries;
    if (page <= 0 || size == 0 || (size & (size - 1)) || size % (size_t)page || size > (SIZE_MAX - (size_t)page) / 2)
        return PyErr_Format(PyExc_ValueError, "unexpected ring buffer size %zu", size);

    RingBuffer *self = (RingBuffer *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->page = (size_t)page;
    self->size = size;
    self->fd = fcntl(map_fd, F_DUPFD_CLOEXEC, 3);
    if (self->fd < 0)
        goto os_error;
    void *consumer = mmap(NULL, self->page, PROT_READ | PROT_WRITE, MAP_SHARED, self->fd, 0);
    if (consumer == MAP_FAILED)
        goto os_error;
    self->consumer_pos = consumer;
    void *producer = mmap(NULL, self->page + 2 * size, PROT_READ, MAP_SHARED, self->fd, (off_t)self->page);
    if (producer == MAP_FAILED)
        goto os_error;
    self->producer = producer;
    return (PyObject *)self;

os_error:
    PyErr_SetFromErrno(PyExc_OSError);
    Py_DECREF(self); /* the dealloc unmaps what was mapped */
    return NULL;
}

static void ringbuffer_dealloc(RingBuffer *self) {
    unmap(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_open(RingBuffer *self) {
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "ring buffer is closed");
        return -1;
    }
    return 0;
}

static PyObject *ringbuffer_fileno(RingBuffer *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->fd);
}

static PyObject *ringbuffer_close(RingBuffer *self, PyObject *unused) {
    (void)unused;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ring buffer closed while draining");
        return NULL;
    }
    unmap(self);
    Py_RETURN_NONE;
}

static PyObject *ringbuffer_drain(RingBuffer *self, PyObject *arg) {
    Py_ssize_t limit = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit < 0)
        return PyErr_Format(PyExc_ValueError, "limit must be >= 0, got %zd", limit);
    if (check_open(self) < 0)
        return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ring buffer is already being drained");
        return NULL;
    }
    PyObject *records = PyList_New(0);
    if (records == NULL)
        return NULL;
    self->busy = 1; /* allocations can run a finalizer, which could release the GIL */

    const unsigned long *producer_pos = (const unsigned long *)self->producer;
    const unsigned char *data = self->producer + self->page;
    const unsigned long mask = self->size - 1;
    /* We are the only writer of consumer_pos; the acquire pairs with our own release stores. */
    unsigned long consumer = __atomic_load_n(self->consumer_pos, __ATOMIC_ACQUIRE);
    unsigned long released = consumer;
    int unreleased = 0; /* records consumed since the last release */
    unsigned long producer = __atomic_load_n(producer_pos, __ATOMIC_ACQUIRE);
    Py_ssize_t taken = 0;
    while (taken < limit) {
        if (consumer == producer) {
            producer = __atomic_load_n(producer_pos, __ATOMIC_ACQUIRE); /* more committed meanwhile? */
            if (consumer == producer)
                break;
        }
        const unsigned char *rec = data + (consumer & mask);
        /* The length word's acquire orders the reads of the record after its commit. */
        __u32 len = __atomic_load_n((const __u32 *)rec, __ATOMIC_ACQUIRE);
        if (len & BPF_RINGBUF_BUSY_BIT)
            break; /* reserved, not yet submitted: later records wait behind it */
        __u32 body = len & ~(__u32)(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
        unsigned long next = consumer + (((unsigned long)body + BPF_RINGBUF_HDR_SZ + 7) & ~7UL);
        if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
            /* The kernel keeps a record within the ring; the clamp keeps a bad length inside the mapping. */
            size_t avail = body < self->size ? body : self->size;
            PyObject *record = decode_record(rec + BPF_RINGBUF_HDR_SZ, avail);
            if (record == NULL || PyList_Append(records, record) < 0) {
                Py_XDECREF(record);
                if (taken == 0)
                    goto error;
                PyErr_Clear(); /* the record stays in the ring: the next drain meets (and raises) it again */
                break;
            }
            Py_DECREF(record);
            taken++;
        }
        consumer = next;
        if (++unreleased == RELEASE_EVERY) {
            __atomic_store_n(self->consumer_pos, consumer, __ATOMIC_RELEASE);
            released = consumer;
            unreleased = 0;
        }
    }
    if (consumer != released)
        __atomic_store_n(self->consumer_pos, consumer, __ATOMIC_RELEASE);
    self->busy = 0;
    return records;

error:
    if (consumer != released)
        __atomic_store_n(self->consumer_pos, consumer, __ATOMIC_RELEASE); /* discarded records before it */
    self->busy = 0;
    Py_DECREF(records);
    return NULL;
}

static PyObject *ringbuffer_enter(RingBuffer *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    return Py_NewRef(self);
}

static PyObject *ringbuffer_exit(RingBuffer *self, PyObject *args) {
    (void)args;
    return ringbuffer_close(self, NULL);
}

static PyObject *ringbuffer_size(RingBuffer *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(self->size);
}

static PyMethodDef ringbuffer_methods[] = {
    {"fileno", (PyCFunction)ringbuffer_fileno, METH_NOARGS, "An fd to poll for committed records."},
    {"drain", (PyCFunction)ringbuffer_drain, METH_O, "drain(limit) -> list: up to `limit` committed records."},
    {"close", (PyCFunction)ringbuffer_close, METH_NOARGS, "Unmap the ring and close the fd."},
    {"__enter__", (PyCFunction)ringbuffer_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)ringbuffer_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ringbuffer_getset[] = {
    {"size", (getter)ringbuffer_size, NULL, "Bytes of data in the ring (the map's max_entries).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "podspan_agent._ringbuf.RingBuffer",
    .tp_basicsize = sizeof(RingBuffer),
    .tp_dealloc = (destructor)ringbuffer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RingBuffer(map_fd): the consumer side of a BPF ring buffer map, mapped into this process.",
    .tp_methods = ringbuffer_methods,
    .tp_getset = ringbuffer_getset,
    .tp_new = ringbuffer_new,
};

/* --------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"decode", decode, METH_O, "decode(buffer) -> Event | OpenEvent | Malformed: one ring-buffer record."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "podspan_agent._ringbuf", "Batched, native consumer of the capture program's ring buffer.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ringbuf(void) {
    if (RunType.tp_name == NULL) { /* static types: initialised once per process */
        if (PyStructSequence_InitType2(&RunType, &run_desc) < 0 ||
            PyStructSequence_InitType2(&EventType, &event_desc) < 0 ||
            PyStructSequence_InitType2(&OpenEventType, &open_desc) < 0 ||
            PyStructSequence_InitType2(&MalformedType, &malformed_desc) < 0)
            return NULL;
    }
    if (PyType_Ready(&RingBufferType) < 0)
        return NULL;
    if (empty_bytes == NULL && (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    struct {
        const char *name;
        long value;
    } constants[] = {
        {"OPEN", PODSPAN_EV_OPEN},
        {"DATA", PODSPAN_EV_DATA},
        {"CLOSE", PODSPAN_EV_CLOSE},
        {"CONTINUATION", PODSPAN_EV_CONTINUATION},
        {"EXIT", PODSPAN_EV_EXIT},
        {"TLS", PODSPAN_EV_TLS},
        {"MALFORMED", MALFORMED},
        {"HEADER_SIZE", (long)HEADER_SIZE},
        {"OPEN_SIZE", (long)OPEN_SIZE},
        {"DATA_OFFSET", (long)DATA_OFFSET},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
            goto error;
    if (PyModule_AddObjectRef(module, "Run", (PyObject *)&RunType) < 0 ||
        PyModule_AddObjectRef(module, "Event", (PyObject *)&EventType) < 0 ||
        PyModule_AddObjectRef(module, "OpenEvent", (PyObject *)&OpenEventType) < 0 ||
        PyModule_AddObjectRef(module, "Malformed", (PyObject *)&MalformedType) < 0 ||
        PyModule_AddObjectRef(module, "RingBuffer", (PyObject *)&RingBufferType) < 0)
        goto error;
    return module;

error:
    Py_DECREF(module);
    return NULL;
}
