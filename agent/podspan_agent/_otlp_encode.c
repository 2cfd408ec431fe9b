/*
 * podspan_agent._otlp_encode: SpanRecords -> OTLP/protobuf wire bytes (used by export/otlp.py).
 *
 * The messages are those of opentelemetry-proto 1.45 (opentelemetry/proto/{trace,common,resource}/v1);
 * a tag byte is (field_number << 3) | wire_type, wire type 2 = length-delimited, 1 = fixed64,
 * 5 = fixed32, 0 = varint. Varints are minimal, fields are written in field-number order.
 *
 * encode_spans(records) -> list, one item per record: the record's ScopeSpans.spans field
 *     (tag, length, Span) as bytes, or the Exception that stopped its encoding (a wrong type, an
 *     unknown kind, ...), so one malformed record cannot sink its batch. Errors that are not an
 *     Exception (KeyboardInterrupt, ...) propagate.
 * resource_spans(resource, scope_name, scope_version, spans) -> bytes: one
 *     ExportTraceServiceRequest.resource_spans field: the Resource with `resource`'s attributes, one
 *     ScopeSpans with the InstrumentationScope and the already encoded `spans`.
 *
 * Attribute values: bool, int (outside int64: its decimal string, as str() gives it), float, str;
 * any other type is a TypeError. Text is UTF-8 with errors="replace" (a lone surrogate becomes "?").
 * Single-phase init; the static state (interned names, the SpanKind members) is read-only after it and
 * every buffer belongs to one call. Python code can run mid-call only through odd inputs (a str
 * subclass's __str__, __index__, __bool__), so every object used across such a call is held by a
 * reference, and a dict changed by one is an error, as in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define MAX_VARINT 10
#define FLAGS_LOCAL_PARENT 0x101u  /* W3C sampled + SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE */
#define FLAGS_REMOTE_PARENT 0x301u /* ... + SPAN_FLAGS_CONTEXT_IS_REMOTE */

static PyObject *s_trace_id, *s_span_id, *s_parent_span_id, *s_parent_is_remote, *s_trace_state, *s_name,
    *s_kind, *s_start_ns, *s_end_ns, *s_attributes, *s_error;
static PyObject *kind_internal, *kind_server, *kind_client; /* model.SpanKind members */
static PyObject *sixty_four;                                /* int 64, for trace_id >> 64 */

/* --------------------------------------------------------------------------- output buffer */

typedef struct {
    unsigned char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (extra <= b->cap - b->len)
        return 0;
    if (extra > PY_SSIZE_T_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap - b->len < extra)
        cap *= 2;
    unsigned char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int varint_size(uint64_t v) {
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Unchecked writers: the caller reserved the room. */
static inline void put_byte(Buf *b, unsigned char c) { b->data[b->len++] = c; }

static inline void put_raw(Buf *b, const void *p, Py_ssize_t n) {
    memcpy(b->data + b->len, p, (size_t)n);
    b->len += n;
}

static inline void put_varint(Buf *b, uint64_t v) {
    while (v > 0x7F) {
        b->data[b->len++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    b->data[b->len++] = (unsigned char)v;
}

static inline void put_fixed64(Buf *b, uint64_t v) {
    for (int i = 0; i < 8; i++)
        b->data[b->len++] = (unsigned char)(v >> (8 * i));
}

static inline void put_be64(Buf *b, uint64_t v) {
    for (int i = 7; i >= 0; i--)
        b->data[b->len++] = (unsigned char)(v >> (8 * i));
}

/* A length-delimited field whose size is not known in advance: tag, room for the longest length,
 * then the body; close_field() writes the length and moves the (short) body next to it. */
static Py_ssize_t open_field(Buf *b, unsigned char tag) {
    if (buf_reserve(b, 1 + MAX_VARINT) < 0)
        return -1;
    put_byte(b, tag);
    b->len += MAX_VARINT;
    return b->len;
}

static void close_field(Buf *b, Py_ssize_t body) {
    Py_ssize_t size = b->len - body;
    Py_ssize_t start = body - MAX_VARINT;
    b->len = start;
    put_varint(b, (uint64_t)size);
    memmove(b->data + b->len, b->data + body, (size_t)size);
    b->len += size;
}

/* --------------------------------------------------------------------------- text */

typedef struct {
    const char *s;
    Py_ssize_t n;
    PyObject *owner; /* the replaced encoding, when the text held lone surrogates */
} Utf8;

/* `text` must be a str and stay alive while `u` is used. */
static int utf8_of(PyObject *text, Utf8 *u) {
    u->owner = NULL;
    u->s = PyUnicode_AsUTF8AndSize(text, &u->n);
    if (u->s != NULL)
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return -1;
    PyErr_Clear();
    u->owner = PyUnicode_AsEncodedString(text, "utf-8", "replace");
    if (u->owner == NULL)
        return -1;
    u->s = PyBytes_AS_STRING(u->owner);
    u->n = PyBytes_GET_SIZE(u->owner);
    return 0;
}

/* A string field: tag, length, UTF-8. */
static int put_text(Buf *b, unsigned char tag, PyObject *text, const char *what) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(text)->tp_name);
        return -1;
    }
    Utf8 u;
    if (utf8_of(text, &u) < 0)
        return -1;
    int rc = buf_reserve(b, 1 + MAX_VARINT + u.n);
    if (rc == 0) {
        put_byte(b, tag);
        put_varint(b, (uint64_t)u.n);
        put_raw(b, u.s, u.n);
    }
    Py_XDECREF(u.owner);
    return rc;
}

/* --------------------------------------------------------------------------- attributes */

/* One KeyValue field (tag given: it differs per parent message). */
static int put_key_value(Buf *b, unsigned char tag, PyObject *key, PyObject *value) {
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "attribute key must be str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    unsigned char scalar[1 + MAX_VARINT]; /* AnyValue of a bool, int or double */
    Py_ssize_t scalar_len = 0;
    PyObject *text = NULL; /* AnyValue.string_value (1) */
    if (PyBool_Check(value)) {
        scalar[0] = 0x10; /* bool_value (2) */
        scalar[1] = value == Py_True;
        scalar_len = 2;
    } else if (PyLong_Check(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (overflow) {
            /* Beyond int64: keep the digits rather than wrap around. */
            text = PyObject_Str(value);
            if (text == NULL)
                return -1;
        } else {
            uint64_t u = (uint64_t)v; /* int_value (3): two's complement, as a varint */
            scalar[0] = 0x18;
            scalar_len = 1;
            do {
                scalar[scalar_len++] = (unsigned char)((u & 0x7F) | (u > 0x7F ? 0x80 : 0));
                u >>= 7;
            } while (u);
        }
    } else if (PyFloat_Check(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        scalar[0] = 0x21; /* double_value (4), fixed64 */
        for (int i = 0; i < 8; i++)
            scalar[1 + i] = (unsigned char)(bits >> (8 * i));
        scalar_len = 9;
    } else if (PyUnicode_CheckExact(value)) {
        Py_INCREF(value);
        text = value;
    } else if (PyUnicode_Check(value)) {
        text = PyObject_Str(value); /* a str subclass: what str() makes of it */
        if (text == NULL)
            return -1;
    } else {
        PyErr_Format(PyExc_TypeError, "attribute %R: value must be str, int, float or bool, not %.100s", key,
                     Py_TYPE(value)->tp_name);
        return -1;
    }

    int rc = -1;
    Utf8 k = {NULL, 0, NULL}, v = {NULL, 0, NULL};
    Py_ssize_t any_len, kv_len;
    if (utf8_of(key, &k) < 0 || (text != NULL && utf8_of(text, &v) < 0))
        goto done;
    any_len = text != NULL ? 1 + varint_size((uint64_t)v.n) + v.n : scalar_len;
    kv_len = 1 + varint_size((uint64_t)k.n) + k.n + 1 + varint_size((uint64_t)any_len) + any_len;
    if (buf_reserve(b, 1 + MAX_VARINT + kv_len) < 0)
        goto done;
    put_byte(b, tag);
    put_varint(b, (uint64_t)kv_len);
    put_byte(b, 0x0a); /* key (1) */
    put_varint(b, (uint64_t)k.n);
    put_raw(b, k.s, k.n);
    put_byte(b, 0x12); /* value (2) */
    put_varint(b, (uint64_t)any_len);
    if (text != NULL) {
        put_byte(b, 0x0a);
        put_varint(b, (uint64_t)v.n);
        put_raw(b, v.s, v.n);
    } else {
        put_raw(b, scalar, scalar_len);
    }
    rc = 0;
done:
    Py_XDECREF(k.owner);
    Py_XDECREF(v.owner);
    Py_XDECREF(text);
    return rc;
}

/* Every item of a mapping as a KeyValue field, in iteration order. */
static int put_attributes(Buf *b, unsigned char tag, PyObject *mapping) {
    if (PyDict_CheckExact(mapping)) {
        Py_ssize_t pos = 0, size = PyDict_GET_SIZE(mapping);
        PyObject *key, *value;
        while (PyDict_Next(mapping, &pos, &key, &value)) {
            Py_INCREF(key);
            Py_INCREF(value);
            int rc = put_key_value(b, tag, key, value);
            Py_DECREF(key);
            Py_DECREF(value);
            if (rc < 0)
                return -1;
            if (PyDict_GET_SIZE(mapping) != size) {
                PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
                return -1;
            }
        }
        return 0;
    }
    PyObject *items = PyMapping_Items(mapping); /* a list; any Mapping, dict subclasses included */
    if (items == NULL)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "attribute items must be (key, value) pairs");
            rc = -1;
        } else {
            Py_INCREF(item);
            rc = put_key_value(b, tag, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1));
            Py_DECREF(item);
        }
    }
    Py_DECREF(items);
    return rc;
}

/* --------------------------------------------------------------------------- span */

/* The low 64 bits (two's complement) of an int, as `n & (2**64 - 1)` gives them. */
static int low64(PyObject *n, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLongMask(n);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* record.<attr> as an int (a new reference), or NULL with the exception set. */
static PyObject *int_attr(PyObject *record, PyObject *attr) {
    PyObject *v = PyObject_GetAttr(record, attr);
    if (v == NULL)
        return NULL;
    PyObject *n = PyNumber_Index(v);
    Py_DECREF(v);
    return n;
}

static int id64(PyObject *record, PyObject *attr, uint64_t *out) {
    PyObject *n = int_attr(record, attr);
    if (n == NULL)
        return -1;
    int rc = low64(n, out);
    Py_DECREF(n);
    return rc;
}

static int trace_id128(PyObject *record, uint64_t *hi, uint64_t *lo) {
    PyObject *n = int_attr(record, s_trace_id);
    if (n == NULL)
        return -1;
    PyObject *high = PyNumber_Rshift(n, sixty_four);
    int rc = high == NULL || low64(high, hi) < 0 || low64(n, lo) < 0 ? -1 : 0;
    Py_XDECREF(high);
    Py_DECREF(n);
    return rc;
}

/* A time in ns clamped to [0, 2**64 - 1]. */
static int clamped_u64(PyObject *record, PyObject *attr, uint64_t *out) {
    PyObject *n = int_attr(record, attr);
    if (n == NULL)
        return -1;
    int rc = 0, overflow;
    long long s = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (s == -1 && PyErr_Occurred()) {
        rc = -1;
    } else if (overflow < 0 || (overflow == 0 && s < 0)) {
        *out = 0;
    } else if (overflow == 0) {
        *out = (uint64_t)s;
    } else {
        unsigned long long u = PyLong_AsUnsignedLongLong(n);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                *out = UINT64_MAX;
            } else {
                rc = -1;
            }
        } else {
            *out = u;
        }
    }
    Py_DECREF(n);
    return rc;
}

/* -1 on error, else whether the attribute is truthy; *value gets a new reference. */
static int truthy_attr(PyObject *record, PyObject *attr, PyObject **value) {
    *value = PyObject_GetAttr(record, attr);
    if (*value == NULL)
        return -1;
    int t = PyObject_IsTrue(*value);
    if (t < 0)
        Py_CLEAR(*value);
    return t;
}

/* The Span message body, appended to `b`. */
static int put_span(Buf *b, PyObject *record) {
    uint64_t hi, lo, span_id, parent_id, start, end;
    uint32_t flags = FLAGS_LOCAL_PARENT;
    PyObject *v;
    int t;

    if (trace_id128(record, &hi, &lo) < 0 || id64(record, s_span_id, &span_id) < 0)
        return -1;
    if (buf_reserve(b, 2 + 16 + 2 + 8) < 0)
        return -1;
    put_byte(b, 0x0a); /* trace_id (1), 16 bytes big-endian */
    put_byte(b, 0x10);
    put_be64(b, hi);
    put_be64(b, lo);
    put_byte(b, 0x12); /* span_id (2), 8 bytes */
    put_byte(b, 0x08);
    put_be64(b, span_id);

    if ((t = truthy_attr(record, s_trace_state, &v)) < 0)
        return -1;
    if (t && put_text(b, 0x1a, v, "trace_state") < 0) { /* trace_state (3) */
        Py_DECREF(v);
        return -1;
    }
    Py_DECREF(v);

    if ((v = PyObject_GetAttr(record, s_parent_span_id)) == NULL)
        return -1;
    int has_parent = v != Py_None;
    Py_DECREF(v);
    if (has_parent) {
        if (id64(record, s_parent_span_id, &parent_id) < 0 || buf_reserve(b, 2 + 8) < 0)
            return -1;
        put_byte(b, 0x22); /* parent_span_id (4), 8 bytes */
        put_byte(b, 0x08);
        put_be64(b, parent_id);
        if ((t = truthy_attr(record, s_parent_is_remote, &v)) < 0)
            return -1;
        Py_DECREF(v);
        if (t)
            flags = FLAGS_REMOTE_PARENT;
    }

    if ((v = PyObject_GetAttr(record, s_name)) == NULL)
        return -1;
    t = put_text(b, 0x2a, v, "span name"); /* name (5) */
    Py_DECREF(v);
    if (t < 0)
        return -1;

    if ((v = PyObject_GetAttr(record, s_kind)) == NULL)
        return -1;
    unsigned char kind = v == kind_internal ? 1 : v == kind_server ? 2 : v == kind_client ? 3 : 0;
    if (kind == 0)
        PyErr_Format(PyExc_ValueError, "span kind %R is not a SpanKind", v);
    Py_DECREF(v);
    if (kind == 0)
        return -1;
    if (clamped_u64(record, s_start_ns, &start) < 0 || clamped_u64(record, s_end_ns, &end) < 0)
        return -1;
    if (buf_reserve(b, 2 + 9 + 9) < 0)
        return -1;
    put_byte(b, 0x30); /* kind (6): INTERNAL=1, SERVER=2, CLIENT=3 */
    put_byte(b, kind);
    put_byte(b, 0x39); /* start_time_unix_nano (7), fixed64 */
    put_fixed64(b, start);
    put_byte(b, 0x41); /* end_time_unix_nano (8), fixed64 */
    put_fixed64(b, end);

    if ((v = PyObject_GetAttr(record, s_attributes)) == NULL)
        return -1;
    t = put_attributes(b, 0x4a, v); /* attributes (9) */
    Py_DECREF(v);
    if (t < 0)
        return -1;

    if ((v = PyObject_GetAttr(record, s_error)) == NULL)
        return -1;
    if (v != Py_None) {
        /* status (15): message (2) when there is one, code (3) = STATUS_CODE_ERROR (2). */
        Py_ssize_t status;
        if ((t = PyObject_IsTrue(v)) < 0 || (status = open_field(b, 0x7a)) < 0 ||
            (t && put_text(b, 0x12, v, "span error") < 0) || buf_reserve(b, 2) < 0) {
            Py_DECREF(v);
            return -1;
        }
        put_byte(b, 0x18);
        put_byte(b, 0x02);
        close_field(b, status);
    }
    Py_DECREF(v);

    if (buf_reserve(b, 2 + 4) < 0)
        return -1;
    put_byte(b, 0x85); /* flags (16), fixed32: the tag takes two varint bytes */
    put_byte(b, 0x01);
    for (int i = 0; i < 4; i++)
        put_byte(b, (unsigned char)(flags >> (8 * i)));
    return 0;
}

/* --------------------------------------------------------------------------- module functions */

static PyObject *encode_spans(PyObject *module, PyObject *records) {
    (void)module;
    /* A private copy: nothing the encoding calls back into can shrink it under the loop. */
    PyObject *batch = PySequence_List(records);
    if (batch == NULL)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(batch);
    PyObject *out = PyList_New(count);
    Buf b = {NULL, 0, 0};
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item;
        /* The span is written after room for the longest ScopeSpans.spans tag and length, which
         * are then put right before it. */
        b.len = 0;
        if (buf_reserve(&b, 1 + MAX_VARINT) < 0)
            goto fail;
        b.len = 1 + MAX_VARINT;
        if (put_span(&b, PyList_GET_ITEM(batch, i)) == 0) {
            Py_ssize_t size = b.len - (1 + MAX_VARINT);
            Py_ssize_t start = 1 + MAX_VARINT - 1 - varint_size((uint64_t)size);
            b.len = start;
            put_byte(&b, 0x12); /* ScopeSpans.spans (2) */
            put_varint(&b, (uint64_t)size);
            item = PyBytes_FromStringAndSize((const char *)b.data + start, 1 + MAX_VARINT - start + size);
            if (item == NULL)
                goto fail;
        } else {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto fail;
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            if (traceback != NULL)
                PyException_SetTraceback(value, traceback);
            Py_XDECREF(type);
            Py_XDECREF(traceback);
            item = value;
        }
        PyList_SET_ITEM(out, i, item);
    }
    PyMem_Free(b.data);
    Py_DECREF(batch);
    return out;
fail:
    PyMem_Free(b.data);
    Py_XDECREF(out);
    Py_DECREF(batch);
    return NULL;
}

static PyObject *resource_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "resource_spans() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *resource = args[0], *scope_name = args[1], *scope_version = args[2];
    PyObject *result = NULL, *spans = NULL;
    Buf head = {NULL, 0, 0}; /* ResourceSpans.resource (1), then ScopeSpans.scope (1) */
    Py_ssize_t body, resource_len, spans_len = 0, scope_spans_len, body_len, total;
    Buf out;

    if ((body = open_field(&head, 0x0a)) < 0 || put_attributes(&head, 0x0a, resource) < 0) /* attributes (1) */
        goto done;
    close_field(&head, body);
    resource_len = head.len;
    if ((body = open_field(&head, 0x0a)) < 0 || put_text(&head, 0x0a, scope_name, "scope name") < 0)
        goto done;
    if (!PyUnicode_Check(scope_version)) {
        PyErr_Format(PyExc_TypeError, "scope version must be str, not %.100s", Py_TYPE(scope_version)->tp_name);
        goto done;
    }
    if (PyUnicode_GET_LENGTH(scope_version) > 0 && put_text(&head, 0x12, scope_version, "scope version") < 0)
        goto done;
    close_field(&head, body);

    /* No Python code runs from here on: the spans' sizes stay what they were summed to. */
    if ((spans = PySequence_Fast(args[3], "spans must be a sequence of bytes")) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(spans); i++) {
        PyObject *span = PySequence_Fast_GET_ITEM(spans, i);
        if (!PyBytes_Check(span)) {
            PyErr_Format(PyExc_TypeError, "spans must be bytes, not %.100s", Py_TYPE(span)->tp_name);
            goto done;
        }
        if (PyBytes_GET_SIZE(span) > PY_SSIZE_T_MAX / 2 - spans_len) {
            PyErr_NoMemory();
            goto done;
        }
        spans_len += PyBytes_GET_SIZE(span);
    }
    scope_spans_len = head.len - resource_len + spans_len;
    body_len = resource_len + 1 + varint_size((uint64_t)scope_spans_len) + scope_spans_len;
    total = 1 + varint_size((uint64_t)body_len) + body_len;
    if ((result = PyBytes_FromStringAndSize(NULL, total)) == NULL)
        goto done;
    out = (Buf){(unsigned char *)PyBytes_AS_STRING(result), 0, total};
    put_byte(&out, 0x0a); /* ExportTraceServiceRequest.resource_spans (1) */
    put_varint(&out, (uint64_t)body_len);
    put_raw(&out, head.data, resource_len);
    put_byte(&out, 0x12); /* ResourceSpans.scope_spans (2) */
    put_varint(&out, (uint64_t)scope_spans_len);
    put_raw(&out, head.data + resource_len, head.len - resource_len);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(spans); i++) {
        PyObject *span = PySequence_Fast_GET_ITEM(spans, i);
        put_raw(&out, PyBytes_AS_STRING(span), PyBytes_GET_SIZE(span));
    }
done:
    PyMem_Free(head.data);
    Py_XDECREF(spans);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_spans", encode_spans, METH_O,
     "encode_spans(records, /)\n--\n\nEach record's ScopeSpans.spans field as bytes, or the Exception that "
     "stopped its encoding."},
    {"resource_spans", (PyCFunction)(void (*)(void))resource_spans, METH_FASTCALL,
     "resource_spans(resource, scope_name, scope_version, spans, /)\n--\n\nOne "
     "ExportTraceServiceRequest.resource_spans field holding the encoded spans."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "podspan_agent._otlp_encode", "SpanRecords -> OTLP/protobuf wire bytes.", -1, methods,
    NULL, NULL, NULL, NULL,
};

static int intern(PyObject **slot, const char *name) {
    *slot = PyUnicode_InternFromString(name);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__otlp_encode(void) {
    if (intern(&s_trace_id, "trace_id") < 0 || intern(&s_span_id, "span_id") < 0 ||
        intern(&s_parent_span_id, "parent_span_id") < 0 || intern(&s_parent_is_remote, "parent_is_remote") < 0 ||
        intern(&s_trace_state, "trace_state") < 0 || intern(&s_name, "name") < 0 || intern(&s_kind, "kind") < 0 ||
        intern(&s_start_ns, "start_ns") < 0 || intern(&s_end_ns, "end_ns") < 0 ||
        intern(&s_attributes, "attributes") < 0 || intern(&s_error, "error") < 0)
        return NULL;
    if ((sixty_four = PyLong_FromLong(64)) == NULL)
        return NULL;
    PyObject *model = PyImport_ImportModule("podspan_agent.spans.model");
    if (model == NULL)
        return NULL;
    PyObject *kinds = PyObject_GetAttrString(model, "SpanKind");
    Py_DECREF(model);
    if (kinds == NULL)
        return NULL;
    kind_internal = PyObject_GetAttrString(kinds, "INTERNAL");
    kind_server = PyObject_GetAttrString(kinds, "SERVER");
    kind_client = PyObject_GetAttrString(kinds, "CLIENT");
    Py_DECREF(kinds);
    if (kind_internal == NULL || kind_server == NULL || kind_client == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
