/*
 * podspan_agent._http1: the HTTP/1 parser (protocols/http1.py exposes it as http1.Parser).
 *
 * Parser(settings) is a base.Parser for one connection: feed(message) pairs the requests and responses
 * of HTTP/1.0 and 1.1 runs into base.Record objects (keep-alive, pipelining, 1xx interim responses,
 * CONNECT and 101 tunnels), flush() reports the requests still waiting, `pending` counts the queue and
 * `counters` (a collections.Counter, built on each access) says what could not be paired or parsed.
 * Framing follows RFC 9112 as far as the captured bytes allow; what the capture cut off is never guessed.
 *
 * A message's head is scanned once, in place: the start line is checked and the few fields the parser
 * needs (Host, User-Agent, Content-Length, Transfer-Encoding, the propagation headers) are located by
 * name at line starts, case-insensitively; Python strings are made only for what becomes an attribute.
 * Text is Latin-1 and values are stripped of what str.strip() strips, as the Python parser did. Calls
 * back into Python: routes.template for http.route, redact.query for url.query, and, only when headers
 * are captured, redact.header. A parser cannot be fed again from inside such a call (RuntimeError).
 *
 * Requests wait in a FIFO of at most MAX_PENDING entries; beyond that a counted gap stands in for the
 * requests that were not queued, so that their responses are absorbed and later pairs stay aligned. A
 * gap of unknown count (requests past the captured bytes) absorbs responses until the server run ends.
 * A Python exception inside feed() (MemoryError, a failing callback) costs that run only: it is counted
 * as parser_errors. Message sizes must lie in 0..2**62 (else the run is a parser error too), and a request's
 * size summed over the runs of its body saturates at 2**62.
 *
 * The connection table feeds runs through the C API of _http1_api.h (the capsule _C_API), the same path as feed().
 *
 * Single-phase init; the static state (interned names, the imported callables) is read-only after it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <structmember.h>

#include "_http1_api.h"
#include "_module_slots.h"

#define MAX_PENDING 64
#define QUEUE_SLOTS (MAX_PENDING + 1) /* requests, and at most one gap past a full queue */
/* Skip marker for a message whose end is unknown: the rest of the direction is skipped until a run starts
 * with a start line again. */
#define UNKNOWN PY_SSIZE_T_MAX
#define SIZE_LIMIT ((Py_ssize_t)1 << 62)
#define GAP_UNKNOWN (-1)
#define REQUEST_LINE_LIMIT 8200 /* a body continuation is told from a new request line within this */

/* --------------------------------------------------------------------------- counters */

enum {
    PARSER_ERRORS,
    CLIENT_RUNS_UNPARSED,
    REQUESTS_UNSEEN_RUNS,
    REQUESTS_DROPPED_QUEUE_FULL,
    SERVER_RUNS_UNPARSED,
    RESPONSES_WITHOUT_REQUEST,
    RESPONSES_TO_UNPARSED_REQUESTS,
    RESPONSES_UNSEEN,
    REQUESTS_WITHOUT_RESPONSE,
    N_COUNTERS
};
static const char *const counter_names[N_COUNTERS] = {
    "parser_errors",
    "client_runs_unparsed",
    "requests_unseen_runs",
    "requests_dropped_queue_full",
    "server_runs_unparsed",
    "responses_without_request",
    "responses_to_unparsed_requests",
    "responses_unseen",
    "requests_without_response",
};

/* --------------------------------------------------------------------------- names */

/* Methods named by the semantic conventions; anything else is reported as `_OTHER`. */
static const char *const known_methods[] = {"CONNECT", "DELETE", "GET",   "HEAD", "OPTIONS",
                                            "PATCH",   "POST",   "PUT",   "TRACE", "QUERY"};
#define N_METHODS (sizeof(known_methods) / sizeof(known_methods[0]))
enum { METHOD_CONNECT = 0, METHOD_HEAD = 3 };

/* Propagation headers, in the order the context dict lists them. */
static const char *const context_names[] = {"traceparent", "tracestate", "b3", "x-b3-flags", "x-b3-parentspanid",
                                            "x-b3-sampled", "x-b3-spanid", "x-b3-traceid"};
#define N_CONTEXT (sizeof(context_names) / sizeof(context_names[0]))

static PyObject *method_names[N_METHODS], *method_labels[N_METHODS]; /* "GET", "GET " */
static PyObject *context_keys[N_CONTEXT], *counter_keys[N_COUNTERS];
static PyObject *s_method, *s_method_original, *s_scheme, *s_path, *s_query, *s_route, *s_version,
    *s_address, *s_port, *s_user_agent, *s_request_body_size, *s_status_code, *s_response_body_size,
    *s_request_header, *s_response_header, *s_request_body, *s_response_body, *s_request_body_truncated,
    *s_response_body_truncated;
static PyObject *s_data, *s_size, *s_from_client, *s_start_ns, *s_end_ns, *s_headers, *s_query_setting,
    *s_route_patterns, *s_bodies, *s_body_limit;
static PyObject *v_other, *v_other_name, *v_other_label, *v_http, *v_asterisk, *v_version_11, *v_version_10,
    *v_no_response, *v_protocol, *v_slash, *v_comma, *v_more_suffix;
/* base.Record's fields, in its constructor's order; when its __slots__ are exactly these (member descriptors
 * of objects), records are made by filling them in at their offsets. */
static const char *const record_fields[] = {"protocol", "name",  "start_ns",        "end_ns",       "attributes",
                                            "error",    "context_headers", "request_size", "response_size"};
#define N_RECORD_FIELDS ((int)(sizeof(record_fields) / sizeof(record_fields[0])))
static Py_ssize_t record_slot_offsets[N_RECORD_FIELDS];
static int record_slots_known;
static PyObject *record_type, *template_fn, *redact_query_fn, *redact_header_fn, *redact_body_fn, *counter_type;

/* --------------------------------------------------------------------------- bytes */

static inline unsigned char lower_ascii(unsigned char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* str.lower() of a Latin-1 character: one character to one character. */
static inline unsigned char lower_latin1(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7) ? c + 32 : c;
}

/* What str.strip() strips, among Latin-1 characters. */
static inline int is_space_latin1(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0;
}

/* What bytes.strip() strips. */
static inline int is_space_ascii(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static inline int hex_value(unsigned char c) {
    if (is_digit(c))
        return c - '0';
    c = lower_ascii(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* RFC 9110 token characters (a method). */
static inline int is_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c != 0 && strchr("!#$%&'*+.^_`|~-", c) != NULL);
}

/* A slice of the run's bytes. */
typedef struct {
    const unsigned char *s;
    Py_ssize_t n;
} Text;

static const Text NO_TEXT = {NULL, -1}; /* absent (n < 0), unlike the empty text */

static inline Text text_of(const unsigned char *s, Py_ssize_t n) { return (Text){s, n}; }

static inline int text_eq(Text t, const char *literal) {
    size_t n = strlen(literal);
    return t.n == (Py_ssize_t)n && memcmp(t.s, literal, n) == 0;
}

static Text strip_latin1(Text t) {
    while (t.n > 0 && is_space_latin1(t.s[0])) {
        t.s++;
        t.n--;
    }
    while (t.n > 0 && is_space_latin1(t.s[t.n - 1]))
        t.n--;
    return t;
}

static inline Py_ssize_t find_byte(Text t, unsigned char c) {
    const unsigned char *p = t.n > 0 ? memchr(t.s, c, (size_t)t.n) : NULL;
    return p ? p - t.s : -1;
}

/* str.partition(sep) on one byte: *before, *after; returns whether `c` was there. */
static int partition(Text t, unsigned char c, Text *before, Text *after) {
    Py_ssize_t at = find_byte(t, c);
    if (at < 0) {
        *before = t;
        *after = text_of(t.s + t.n, 0);
        return 0;
    }
    *before = text_of(t.s, at);
    *after = text_of(t.s + at + 1, t.n - at - 1);
    return 1;
}

static inline int all_digits(Text t) {
    for (Py_ssize_t i = 0; i < t.n; i++)
        if (!is_digit(t.s[i]))
            return 0;
    return t.n > 0;
}

static inline PyObject *decode(Text t) { return PyUnicode_DecodeLatin1((const char *)t.s, t.n, NULL); }

static PyObject *decode_lower(Text t) {
    unsigned char small[128] = {0}, *lower = t.n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)t.n);
    if (lower == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < t.n; i++)
        lower[i] = lower_latin1(t.s[i]);
    PyObject *out = decode(text_of(lower, t.n));
    if (lower != small)
        PyMem_Free(lower);
    return out;
}

/* --------------------------------------------------------------------------- one run's bytes */

typedef struct {
    const unsigned char *d;
    Py_ssize_t n;    /* captured bytes */
    Py_ssize_t size; /* the run's full length */
    PyObject *start_ns, *end_ns;
    /* The last search for a head's end from `from` found it at `at` (-1: none); a later search from a
     * position between the two has the same answer, so pipelined heads cost one scan in all. */
    Py_ssize_t crlf_from, crlf_at, lf_from, lf_at;
} Run;

static Py_ssize_t find_from(const Run *r, Py_ssize_t pos, const char *pattern, size_t len) {
    if (pos >= r->n)
        return -1;
    const unsigned char *p = memmem(r->d + pos, (size_t)(r->n - pos), pattern, len);
    return p ? p - r->d : -1;
}

static Py_ssize_t find_cached(const Run *r, Py_ssize_t *from, Py_ssize_t *at, Py_ssize_t pos, const char *pattern,
                              size_t len) {
    if (*from < 0 || pos < *from || (*at >= 0 && *at < pos)) {
        *from = pos;
        *at = find_from(r, pos, pattern, len);
    }
    return *at;
}

/* An exact "HTTP/1.x" request line ends the first line (within REQUEST_LINE_LIMIT bytes). */
static int is_request_line(const unsigned char *d, Py_ssize_t n) {
    Py_ssize_t limit = n < REQUEST_LINE_LIMIT ? n : REQUEST_LINE_LIMIT;
    const unsigned char *p = limit > 0 ? memmem(d, (size_t)limit, "\r\n", 2) : NULL;
    if (p == NULL)
        return 0;
    Py_ssize_t line_end = p - d;
    if (line_end < 10 || memcmp(d + line_end - 9, " HTTP/1.", 8) != 0 ||
        (d[line_end - 1] != '1' && d[line_end - 1] != '0'))
        return 0;
    return memchr(d, ' ', (size_t)(line_end - 9)) != NULL;
}

/* "HTTP/1.0 " or "HTTP/1.1 " and a three-digit status code from 100 to 999 (RFC 9110 uses 100 to 599).
 * A code cut short by the capture is no status line. */
static int is_status_line(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos) {
    if (pos < 0 || n - pos < 12)
        return 0;
    d += pos;
    return memcmp(d, "HTTP/1.", 7) == 0 && (d[7] == '0' || d[7] == '1') && d[8] == ' ' && d[9] >= '1' &&
           d[9] <= '9' && is_digit(d[10]) && is_digit(d[11]);
}

/* --------------------------------------------------------------------------- a message's head */

enum { F_HOST, F_USER_AGENT, F_TRANSFER_ENCODING, F_CONTENT_LENGTH, F_CONTEXT, N_FIELDS = F_CONTEXT + N_CONTEXT };

typedef struct {
    Py_ssize_t pos;      /* where the message starts */
    Py_ssize_t stop;     /* just past the last whole line of the head (the field block) */
    Py_ssize_t end;      /* just past the head (its empty line), or the captured end */
    int complete;        /* the head's empty line was captured */
    Text start_line;     /* without its line end */
    Text fields[N_FIELDS]; /* first value of each field the parser reads, stripped; NO_TEXT if absent */
    int content_lengths; /* Content-Length lines */
    Py_ssize_t body_end; /* just past the body; UNKNOWN when it cannot be known */
    Py_ssize_t body_size; /* -1 when unknown */
} Head;

/* Does the line at `at` (before `stop`) start with `name` followed by ':', ASCII case-insensitively? */
static inline int line_names(const unsigned char *d, Py_ssize_t at, Py_ssize_t stop, const char *name, size_t len) {
    if (stop - at < (Py_ssize_t)len + 1 || d[at + (Py_ssize_t)len] != ':')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (lower_ascii(d[at + (Py_ssize_t)i]) != (unsigned char)name[i])
            return 0;
    return 1;
}

static void take_field(Head *h, int field, const unsigned char *d, Py_ssize_t value, Py_ssize_t line_end) {
    if (h->fields[field].n < 0)
        h->fields[field] = strip_latin1(text_of(d + value, line_end - value));
}

static void take_context(Head *h, const unsigned char *d, Py_ssize_t at, Py_ssize_t stop, Py_ssize_t line_end) {
    for (int i = 0; i < (int)N_CONTEXT; i++) {
        size_t len = strlen(context_names[i]);
        if (line_names(d, at, stop, context_names[i], len)) {
            take_field(h, F_CONTEXT + i, d, at + (Py_ssize_t)len + 1, line_end);
            return;
        }
    }
}

/* Locate the head from `pos` and the fields the parser reads, in one pass over its lines. */
static void head_parse(Head *h, Run *r, Py_ssize_t pos) {
    const unsigned char *d = r->d;
    Py_ssize_t end = find_cached(r, &r->crlf_from, &r->crlf_at, pos, "\r\n\r\n", 4);
    h->pos = pos;
    if (end >= 0) {
        h->stop = end + 2;
        h->end = end + 4;
    } else if ((end = find_cached(r, &r->lf_from, &r->lf_at, pos, "\n\n", 2)) >= 0) {
        h->stop = end + 1; /* tolerated bare-LF sender (RFC 9112 section 2.2) */
        h->end = end + 2;
    } else { /* cut by the capture size: keep only whole lines */
        const unsigned char *last = memrchr(d + pos, '\n', (size_t)(r->n - pos));
        h->stop = last ? last - d + 1 : r->n;
        h->end = r->n;
    }
    h->complete = end >= 0;
    h->body_end = UNKNOWN;
    h->body_size = -1;
    h->content_lengths = 0;
    for (int i = 0; i < N_FIELDS; i++)
        h->fields[i] = NO_TEXT;

    Py_ssize_t stop = h->stop;
    const unsigned char *nl = memchr(d + pos, '\n', (size_t)(stop - pos));
    Py_ssize_t line_end = nl ? nl - d : stop;
    h->start_line = text_of(d + pos, line_end - pos);
    while (h->start_line.n > 0 && h->start_line.s[h->start_line.n - 1] == '\r')
        h->start_line.n--;
    while (line_end < stop) {
        Py_ssize_t at = line_end + 1; /* a field line starts after every "\n" */
        nl = at < stop ? memchr(d + at, '\n', (size_t)(stop - at)) : NULL;
        line_end = nl ? nl - d : stop;
        if (at >= stop)
            break;
        switch (lower_ascii(d[at])) {
        case 'h':
            if (line_names(d, at, stop, "host", 4))
                take_field(h, F_HOST, d, at + 5, line_end);
            break;
        case 'u':
            if (line_names(d, at, stop, "user-agent", 10))
                take_field(h, F_USER_AGENT, d, at + 11, line_end);
            break;
        case 'c':
            if (line_names(d, at, stop, "content-length", 14)) {
                take_field(h, F_CONTENT_LENGTH, d, at + 15, line_end);
                h->content_lengths++;
            }
            break;
        case 't':
            if (line_names(d, at, stop, "transfer-encoding", 17))
                take_field(h, F_TRANSFER_ENCODING, d, at + 18, line_end);
            else
                take_context(h, d, at, stop, line_end); /* traceparent, tracestate */
            break;
        case 'b':
        case 'x':
            take_context(h, d, at, stop, line_end);
            break;
        default:
            break;
        }
    }
}

/* The field lines (after the start line) as (name, value) for header capture and the Content-Length
 * conflict check: each line cut at its first ':', both sides stripped; lines without one are skipped. */
typedef struct {
    const unsigned char *d;
    Py_ssize_t at, stop;
} Lines;

static Lines field_lines(const Run *r, const Head *h) {
    Py_ssize_t at = h->pos + h->start_line.n;
    const unsigned char *nl = memchr(r->d + at, '\n', (size_t)(h->stop - at));
    return (Lines){r->d, nl ? nl - r->d + 1 : h->stop + 1, h->stop};
}

static int next_field(Lines *lines, Text *name, Text *value) {
    while (lines->at <= lines->stop) {
        Py_ssize_t at = lines->at;
        const unsigned char *nl = at < lines->stop ? memchr(lines->d + at, '\n', (size_t)(lines->stop - at)) : NULL;
        Py_ssize_t line_end = nl ? nl - lines->d : lines->stop;
        lines->at = line_end + 1;
        if (partition(text_of(lines->d + at, line_end - at), ':', name, value)) {
            *name = strip_latin1(*name);
            *value = strip_latin1(*value);
            return 1;
        }
    }
    return 0;
}

/* Several Content-Length lines that disagree make the framing unknowable. */
static int lengths_conflict(const Run *r, const Head *h) {
    Lines lines = field_lines(r, h);
    Text name, value, first = NO_TEXT;
    while (next_field(&lines, &name, &value)) {
        if (name.n != 14)
            continue;
        int match = 1;
        for (int i = 0; i < 14 && match; i++)
            match = lower_ascii(name.s[i]) == (unsigned char)"content-length"[i];
        if (!match)
            continue;
        if (first.n < 0)
            first = value;
        else if (first.n != value.n || memcmp(first.s, value.s, (size_t)value.n) != 0)
            return 1;
    }
    return 0;
}

static void frame_chunked(Head *h, const Run *r) {
    const unsigned char *d = r->d;
    Py_ssize_t pos = h->end, total = 0, limit = r->n;
    for (;;) {
        const unsigned char *p = pos < limit ? memmem(d + pos, (size_t)(limit - pos), "\r\n", 2) : NULL;
        if (p == NULL)
            return;
        Py_ssize_t line_end = p - d;
        Text digits, extension;
        partition(text_of(d + pos, line_end - pos), ';', &digits, &extension);
        while (digits.n > 0 && is_space_ascii(digits.s[0])) {
            digits.s++;
            digits.n--;
        }
        while (digits.n > 0 && is_space_ascii(digits.s[digits.n - 1]))
            digits.n--;
        if (digits.n < 1 || digits.n > 15)
            return;
        Py_ssize_t size = 0;
        for (Py_ssize_t i = 0; i < digits.n; i++) {
            int v = hex_value(digits.s[i]);
            if (v < 0)
                return;
            size = size * 16 + v; /* at most 15 hex digits: below 2**60 */
        }
        pos = line_end + 2;
        if (size == 0)
            break;
        total += size;
        pos += size + 2;
        if (pos > limit)
            return;
    }
    if (limit - pos >= 2 && d[pos] == '\r' && d[pos + 1] == '\n') {
        pos += 2;
    } else { /* trailer fields up to the empty line */
        Py_ssize_t trailer_end = find_from(r, pos - 2, "\r\n\r\n", 4);
        if (trailer_end < 0)
            return;
        pos = trailer_end + 4;
    }
    h->body_end = pos;
    h->body_size = total;
}

/* Find where the body ends (Content-Length or chunked); leaves UNKNOWN when impossible. `until_close`:
 * with neither header, the body runs to the end of the connection (responses) rather than being empty
 * (requests). */
static void frame(Head *h, const Run *r, int has_body, int until_close) {
    if (!h->complete)
        return;
    if (!has_body) {
        h->body_end = h->end;
        return;
    }
    Text encoding = h->fields[F_TRANSFER_ENCODING];
    if (encoding.n >= 0) {
        if (encoding.n >= 7) {
            int chunked = 1;
            for (int i = 0; i < 7 && chunked; i++)
                chunked = lower_ascii(encoding.s[encoding.n - 7 + i]) == (unsigned char)"chunked"[i];
            if (chunked)
                frame_chunked(h, r);
        }
        return;
    }
    Text length = h->fields[F_CONTENT_LENGTH];
    if (length.n < 0) {
        if (!until_close)
            h->body_end = h->end;
        return;
    }
    if (h->content_lengths > 1 && lengths_conflict(r, h))
        return;
    if (all_digits(length) && length.n < 19) {
        Py_ssize_t size = 0;
        for (Py_ssize_t i = 0; i < length.n; i++)
            size = size * 10 + (length.s[i] - '0');
        h->body_size = size;
        h->body_end = h->end + size;
    }
}

/* --------------------------------------------------------------------------- the queue */

typedef struct {
    int is_gap;
    /* a request waiting for its response */
    PyObject *name, *attributes, *context, *start_ns, *end_ns;
    Py_ssize_t size;
    uint64_t id; /* names it as the owner of a body being skipped */
    char head, opens_tunnel;
    /* a gap: requests sent but not parsed (queue overflow, or beyond the captured bytes) */
    Py_ssize_t count; /* GAP_UNKNOWN: absorbs responses until the end of a server run */
    char absorbed;
} Entry;

typedef struct {
    PyObject_HEAD
    PyObject *settings, *patterns;
    char capture_headers, capture_query;
    Py_ssize_t body_limit; /* bytes of each body recorded (CaptureSettings.bodies); 0: none */
    char tunnel; /* after CONNECT or 101 Switching Protocols the bytes are not HTTP/1 */
    char busy;   /* inside feed() or flush() */
    Entry *queue; /* a ring of `capacity` entries, grown on demand up to QUEUE_SLOTS: most connections wait
                   * for one response at a time, so an idle parser stays small */
    int capacity, first, count;
    Py_ssize_t client_skip, server_skip; /* bytes of a body still to come in later runs */
    uint64_t skip_owner;                 /* id of the request whose body is being skipped; 0: none */
    uint64_t next_id;
    Py_ssize_t counters[N_COUNTERS];
    unsigned counted; /* bit per counter ever counted: the keys of `counters` */
} Parser;

static inline Entry *entry_at(Parser *p, int index) { return &p->queue[(p->first + index) % p->capacity]; }
static inline Entry *last_entry(Parser *p) { return p->count ? entry_at(p, p->count - 1) : NULL; }

static inline void count(Parser *p, int counter, Py_ssize_t n) {
    p->counters[counter] += n;
    p->counted |= 1u << counter;
}

static void entry_clear(Entry *e) {
    Py_CLEAR(e->name);
    Py_CLEAR(e->attributes);
    Py_CLEAR(e->context);
    Py_CLEAR(e->start_ns);
    Py_CLEAR(e->end_ns);
}

static void pop_front(Parser *p) {
    entry_clear(entry_at(p, 0));
    p->first = (p->first + 1) % p->capacity;
    p->count--;
}

static void queue_clear(Parser *p) {
    while (p->count)
        pop_front(p);
}

/* A new, zeroed entry at the end of the queue. The queue never needs more than QUEUE_SLOTS: requests are
 * queued only below MAX_PENDING and a gap only after a request. */
static Entry *push(Parser *p) {
    if (p->count == p->capacity) {
        int capacity = p->capacity ? p->capacity * 2 : 2;
        capacity = capacity < QUEUE_SLOTS ? capacity : QUEUE_SLOTS;
        if (p->count == capacity) {
            PyErr_SetString(PyExc_RuntimeError, "http1 Parser queue overflow");
            return NULL;
        }
        Entry *queue = PyMem_Malloc(sizeof(Entry) * (size_t)capacity);
        if (queue == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (int i = 0; i < p->count; i++)
            queue[i] = *entry_at(p, i);
        PyMem_Free(p->queue);
        p->queue = queue;
        p->capacity = capacity;
        p->first = 0;
    }
    Entry *e = entry_at(p, p->count++);
    memset(e, 0, sizeof(*e));
    return e;
}

static int add_gap(Parser *p, Py_ssize_t n) {
    Entry *last = last_entry(p);
    if (last != NULL && last->is_gap) {
        last->count = n == GAP_UNKNOWN || last->count == GAP_UNKNOWN ? GAP_UNKNOWN : last->count + n;
        return 0;
    }
    if ((last = push(p)) == NULL)
        return -1;
    last->is_gap = 1;
    last->count = n;
    return 0;
}

static inline Py_ssize_t min_size(Py_ssize_t a, Py_ssize_t b) { return a < b ? a : b; }

static inline Py_ssize_t add_capped(Py_ssize_t a, Py_ssize_t b) { return a > SIZE_LIMIT - b ? SIZE_LIMIT : a + b; }

static PyObject *make_record(const Entry *e, PyObject *end_ns, Py_ssize_t response_size, PyObject *error) {
    int later = PyObject_RichCompareBool(e->start_ns, end_ns, Py_GT); /* max(end_ns, start_ns) */
    if (later < 0)
        return NULL;
    PyObject *request_size = PyLong_FromSsize_t(e->size);
    PyObject *response = PyLong_FromSsize_t(response_size);
    PyObject *record = NULL;
    if (request_size != NULL && response != NULL) {
        PyObject *args[N_RECORD_FIELDS] = {v_protocol, e->name, e->start_ns, later ? e->start_ns : end_ns,
                                           e->attributes, error, e->context, request_size, response};
        if (record_slots_known) { /* its slots filled in directly: no Python __init__ frame */
            record = ((PyTypeObject *)record_type)->tp_alloc((PyTypeObject *)record_type, 0);
            for (int i = 0; record != NULL && i < N_RECORD_FIELDS; i++)
                *(PyObject **)((char *)record + record_slot_offsets[i]) = Py_NewRef(args[i]);
        } else {
            record = PyObject_Vectorcall(record_type, args, N_RECORD_FIELDS, NULL);
        }
    }
    Py_XDECREF(request_size);
    Py_XDECREF(response);
    return record;
}

/* Append a record per queued request to `records` (nothing is removed). */
static int report_queued(Parser *p, PyObject *records, PyObject *end_ns, PyObject *error, int counter) {
    for (int i = 0; i < p->count; i++) {
        Entry *e = entry_at(p, i);
        if (e->is_gap)
            continue;
        PyObject *record = make_record(e, end_ns ? end_ns : e->end_ns, 0, error);
        if (record == NULL || PyList_Append(records, record) < 0) {
            Py_XDECREF(record);
            return -1;
        }
        Py_DECREF(record);
        count(p, counter, 1);
    }
    return 0;
}

static int do_flush(Parser *p, PyObject *records) {
    if (report_queued(p, records, NULL, v_no_response, REQUESTS_WITHOUT_RESPONSE) < 0)
        return -1;
    count(p, REQUESTS_WITHOUT_RESPONSE, 0);
    queue_clear(p);
    p->client_skip = p->server_skip = 0;
    p->skip_owner = 0;
    return 0;
}

/* --------------------------------------------------------------------------- attributes */

static inline int set_new(PyObject *dict, PyObject *key, PyObject *value) {
    if (value == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return rc;
}

/* server.address and server.port from an authority; userinfo (user:password@) is never kept. */
static int add_host(PyObject *attributes, Text authority) {
    for (Py_ssize_t i = authority.n - 1; i >= 0; i--) {
        if (authority.s[i] == '@') {
            authority = text_of(authority.s + i + 1, authority.n - i - 1);
            break;
        }
    }
    Text host, port, rest;
    if (authority.n > 0 && authority.s[0] == '[') { /* IPv6 literal */
        partition(text_of(authority.s + 1, authority.n - 1), ']', &host, &rest);
        port = rest.n > 0 && rest.s[0] == ':' ? text_of(rest.s + 1, rest.n - 1) : text_of(rest.s, 0);
    } else {
        partition(authority, ':', &host, &port);
    }
    if (host.n > 0 && set_new(attributes, s_address, decode(host)) < 0)
        return -1;
    if (all_digits(port) && port.n < 6) {
        long value = 0;
        for (Py_ssize_t i = 0; i < port.n; i++)
            value = value * 10 + (port.s[i] - '0');
        if (set_new(attributes, s_port, PyLong_FromLong(value)) < 0)
            return -1;
    }
    return 0;
}

/* http.{request,response}.header.<name> for every field line, values through redact.header; repeated
 * fields are joined with ',' once all are known (joining as they come is quadratic in their number). */
static int add_headers(PyObject *attributes, PyObject *prefix, const Run *r, const Head *h) {
    Lines lines = field_lines(r, h);
    Text name_text, value_text;
    PyObject *repeated = NULL; /* key -> list of its values, for the keys seen more than once */
    int rc = -1;
    while (next_field(&lines, &name_text, &value_text)) {
        PyObject *name = decode_lower(name_text), *key = NULL, *raw = NULL, *value = NULL;
        int ok = 0;
        if (name == NULL || (key = PyUnicode_Concat(prefix, name)) == NULL || (raw = decode(value_text)) == NULL ||
            (value = PyObject_CallFunctionObjArgs(redact_header_fn, name, raw, NULL)) == NULL)
            goto next;
        PyObject *previous = PyDict_GetItemWithError(attributes, key); /* borrowed */
        if (previous == NULL) {
            ok = !PyErr_Occurred() && PyDict_SetItem(attributes, key, value) == 0;
            goto next;
        }
        if (repeated == NULL && (repeated = PyDict_New()) == NULL)
            goto next;
        PyObject *values = PyDict_GetItemWithError(repeated, key); /* borrowed */
        if (values == NULL) {
            PyObject *pair = PyErr_Occurred() ? NULL : PyList_New(0);
            ok = pair != NULL && PyList_Append(pair, previous) == 0 && PyList_Append(pair, value) == 0 &&
                 PyDict_SetItem(repeated, key, pair) == 0;
            Py_XDECREF(pair);
        } else {
            ok = PyList_Append(values, value) == 0;
        }
    next:
        Py_XDECREF(name);
        Py_XDECREF(key);
        Py_XDECREF(raw);
        Py_XDECREF(value);
        if (!ok)
            goto done;
    }
    PyObject *key, *values;
    Py_ssize_t at = 0;
    while (repeated != NULL && PyDict_Next(repeated, &at, &key, &values)) {
        PyObject *strings = PyList_New(PyList_GET_SIZE(values)); /* f"{value}" of each, as the join needs str */
        for (Py_ssize_t i = 0; strings != NULL && i < PyList_GET_SIZE(values); i++) {
            PyObject *text = PyObject_Str(PyList_GET_ITEM(values, i));
            if (text == NULL)
                Py_CLEAR(strings);
            else
                PyList_SET_ITEM(strings, i, text);
        }
        PyObject *joined = strings ? PyUnicode_Join(v_comma, strings) : NULL;
        Py_XDECREF(strings);
        if (set_new(attributes, key, joined) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(repeated);
    return rc;
}

/* --------------------------------------------------------------------------- requests */

/* The captured first bytes of a Content-Length body, at most body_limit, redacted (redact.body) into `key`;
 * `truncated_key` is set when they are not the whole body. Chunked bodies are not recorded (their bytes
 * interleave chunk sizes), nor a body whose head the capture cut. */
static int add_body(const Parser *p, PyObject *attributes, PyObject *key, PyObject *truncated_key, const Run *r,
                    const Head *h) {
    if (p->body_limit <= 0 || !h->complete || h->body_size <= 0 || h->fields[F_TRANSFER_ENCODING].n >= 0)
        return 0;
    Py_ssize_t available = min_size(r->n, h->body_end) - h->end;
    Py_ssize_t taken = min_size(available, p->body_limit);
    if (taken <= 0)
        return 0;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)r->d + h->end, taken);
    PyObject *text = raw ? PyObject_CallOneArg(redact_body_fn, raw) : NULL;
    Py_XDECREF(raw);
    if (set_new(attributes, key, text) < 0)
        return -1;
    return taken < h->body_size ? PyDict_SetItem(attributes, truncated_key, Py_True) : 0;
}

static int method_index(Text method) {
    for (int i = 0; i < (int)N_METHODS; i++)
        if (text_eq(method, known_methods[i]))
            return i;
    return -1;
}

/* What the version of a request line cut by the capture size can look like ("", "H", ..., "HTTP/1."). */
static int is_version_prefix(Text t) { return t.n < 8 && memcmp(t.s, "HTTP/1.1", (size_t)t.n) == 0; }

typedef struct {
    int method; /* index into known_methods, or -1 */
    Text method_text, target;
    int complete_target; /* the request line went on past the target */
    PyObject *version;   /* borrowed; NULL when the capture cut it */
} RequestLine;

/* The request-line checks; returns 0 for a run that is not (or no longer) HTTP/1 requests. */
static int request_line(const Head *h, const Run *r, RequestLine *line) {
    Text rest, version;
    int sep = partition(h->start_line, ' ', &line->method_text, &rest);
    line->complete_target = partition(rest, ' ', &line->target, &version);
    line->method = method_index(line->method_text);
    line->version = text_eq(version, "HTTP/1.1") ? v_version_11 : text_eq(version, "HTTP/1.0") ? v_version_10 : NULL;
    if (line->version == NULL) {
        /* Only a request line cut by the capture size may lack its version, and then only a known method is
         * convincing enough. */
        return !h->complete && sep && line->method >= 0 && r->n < r->size && is_version_prefix(version);
    }
    if (line->method >= 0)
        return 1;
    if (line->method_text.n < 1 || line->method_text.n > 32)
        return 0;
    for (Py_ssize_t i = 0; i < line->method_text.n; i++)
        if (!is_tchar(line->method_text.s[i]))
            return 0;
    return 1;
}

/* url.* attributes for the request target; *route becomes a new reference, or NULL when there is none. */
static int add_target(Parser *p, PyObject *attributes, const RequestLine *line, PyObject **route) {
    *route = NULL;
    Text target = line->target;
    if (line->method == METHOD_CONNECT)
        return add_host(attributes, target);
    if (PyDict_SetItem(attributes, s_scheme, v_http) < 0)
        return -1;
    if (target.n == 0 || target.s[0] != '/') {
        const unsigned char *sep = target.n >= 3 ? memmem(target.s, (size_t)target.n, "://", 3) : NULL;
        if (sep == NULL) { /* asterisk-form (OPTIONS *) or garbage */
            if (target.n == 1 && target.s[0] == '*')
                *route = Py_NewRef(v_asterisk);
            return 0;
        }
        if (set_new(attributes, s_scheme, decode_lower(text_of(target.s, sep - target.s))) < 0)
            return -1;
        Text rest = text_of(sep + 3, target.n - (sep + 3 - target.s)), authority, path_rest;
        int slash = partition(rest, '/', &authority, &path_rest);
        if (add_host(attributes, authority) < 0)
            return -1;
        target = slash ? text_of(path_rest.s - 1, path_rest.n + 1) : text_of(rest.s + rest.n, 0);
    }
    Text path, query;
    int has_query = partition(target, '?', &path, &query);
    PyObject *path_str = path.n ? decode(path) : Py_NewRef(v_slash);
    if (path_str == NULL || PyDict_SetItem(attributes, s_path, path_str) < 0)
        goto fail;
    if (has_query && p->capture_query) {
        PyObject *raw = decode(query);
        if (raw == NULL)
            goto fail;
        PyObject *redacted = PyObject_CallOneArg(redact_query_fn, raw);
        Py_DECREF(raw);
        if (set_new(attributes, s_query, redacted) < 0)
            goto fail;
    }
    if (!line->complete_target && !has_query) {
        /* The path itself was cut: template only the whole segments and mark the rest. */
        Py_ssize_t cut = path.n;
        while (cut > 0 && path.s[cut - 1] != '/')
            cut--;
        PyObject *whole = decode(text_of(path.s, cut > 0 ? cut - 1 : 0));
        PyObject *templated = whole ? PyObject_CallFunctionObjArgs(template_fn, whole, p->patterns, NULL) : NULL;
        Py_XDECREF(whole);
        if (templated == NULL)
            goto fail;
        Py_ssize_t keep = PyUnicode_GET_LENGTH(templated);
        while (keep > 0 && PyUnicode_READ_CHAR(templated, keep - 1) == '/')
            keep--;
        PyObject *stem = PyUnicode_Substring(templated, 0, keep);
        Py_DECREF(templated);
        if (stem == NULL)
            goto fail;
        *route = PyUnicode_Concat(stem, v_more_suffix);
        Py_DECREF(stem);
    } else {
        *route = PyObject_CallFunctionObjArgs(template_fn, path_str, p->patterns, NULL);
    }
    Py_DECREF(path_str);
    if (*route == NULL)
        return -1;
    return PyDict_SetItem(attributes, s_route, *route);
fail:
    Py_XDECREF(path_str);
    return -1;
}

/* The attributes, name and context of a request whose line passed request_line(); fills `e`. */
static int build_request(Parser *p, Entry *e, const Head *h, const RequestLine *line, const Run *r) {
    PyObject *attributes = _PyDict_NewPresized(12), *route = NULL, *label, *bare;
    e->attributes = attributes;
    if (attributes == NULL)
        return -1;
    if (line->method >= 0) {
        if (PyDict_SetItem(attributes, s_method, method_names[line->method]) < 0)
            return -1;
        label = method_labels[line->method];
        bare = method_names[line->method];
    } else {
        if (PyDict_SetItem(attributes, s_method, v_other) < 0 ||
            set_new(attributes, s_method_original, decode(line->method_text)) < 0)
            return -1;
        label = v_other_label;
        bare = v_other_name;
    }
    if (add_target(p, attributes, line, &route) < 0)
        return -1;
    if (route != NULL && PyUnicode_GET_LENGTH(route) > 0)
        e->name = PyUnicode_Concat(label, route); /* label: the method and a space */
    else
        e->name = Py_NewRef(bare);
    Py_XDECREF(route);
    if (e->name == NULL)
        return -1;
    if (line->version != NULL && PyDict_SetItem(attributes, s_version, line->version) < 0)
        return -1;
    if (h->fields[F_HOST].n >= 0) { /* absolute-form and CONNECT targets name the server themselves */
        int named = PyDict_Contains(attributes, s_address);
        if (named < 0 || (!named && add_host(attributes, h->fields[F_HOST]) < 0))
            return -1;
    }
    if (h->fields[F_USER_AGENT].n >= 0 && set_new(attributes, s_user_agent, decode(h->fields[F_USER_AGENT])) < 0)
        return -1;
    if ((e->context = PyDict_New()) == NULL)
        return -1;
    for (int i = 0; i < (int)N_CONTEXT; i++)
        if (h->fields[F_CONTEXT + i].n >= 0 &&
            set_new(e->context, context_keys[i], decode(h->fields[F_CONTEXT + i])) < 0)
            return -1;
    if (p->capture_headers && add_headers(attributes, s_request_header, r, h) < 0)
        return -1;
    if (h->body_size >= 0 && set_new(attributes, s_request_body_size, PyLong_FromSsize_t(h->body_size)) < 0)
        return -1;
    if (add_body(p, attributes, s_request_body, s_request_body_truncated, r, h) < 0)
        return -1;
    e->start_ns = Py_NewRef(r->start_ns);
    e->end_ns = Py_NewRef(r->end_ns);
    e->head = line->method == METHOD_HEAD;
    e->opens_tunnel = line->method == METHOD_CONNECT;
    return 0;
}

/* Queue one request (or count it in a gap when the queue is full). */
static int enqueue(Parser *p, const Head *h, const RequestLine *line, const Run *r, Py_ssize_t size) {
    if (p->count >= MAX_PENDING) {
        count(p, REQUESTS_DROPPED_QUEUE_FULL, 1);
        return add_gap(p, 1);
    }
    Entry *e = push(p);
    if (e == NULL)
        return -1;
    if (build_request(p, e, h, line, r) < 0) {
        entry_clear(e);
        p->count--;
        return -1;
    }
    e->size = size;
    e->id = ++p->next_id;
    return 0;
}

static Entry *skip_owner(Parser *p) {
    for (int i = p->count - 1; p->skip_owner && i >= 0; i--) {
        Entry *e = entry_at(p, i);
        if (!e->is_gap && e->id == p->skip_owner)
            return e;
    }
    return NULL;
}

static int feed_client(Parser *p, Run *r) {
    Py_ssize_t pos = 0;
    if (p->client_skip && !is_request_line(r->d, r->n)) {
        pos = p->client_skip;
        Entry *owner = skip_owner(p);
        if (owner != NULL)
            owner->size = add_capped(owner->size, min_size(pos, r->size));
        if (pos >= r->size) {
            p->client_skip = pos != UNKNOWN ? pos - r->size : UNKNOWN;
            return 0;
        }
    }
    p->client_skip = 0;
    p->skip_owner = 0;
    Py_ssize_t end = pos;
    while (pos < r->n) {
        Head h;
        RequestLine line;
        head_parse(&h, r, pos);
        if (!request_line(&h, r, &line)) {
            count(p, CLIENT_RUNS_UNPARSED, 1);
            return 0;
        }
        frame(&h, r, 1, 0);
        end = h.body_end;
        if (enqueue(p, &h, &line, r, min_size(end, r->size) - pos) < 0)
            return -1;
        pos = end;
    }
    if (end > r->size) {
        p->client_skip = end != UNKNOWN ? end - r->size : UNKNOWN;
        Entry *last = last_entry(p);
        p->skip_owner = last != NULL && !last->is_gap ? last->id : 0;
    } else if (end < r->size && pos >= r->n) {
        /* The run goes on past the captured bytes with requests we cannot see. */
        count(p, REQUESTS_UNSEEN_RUNS, 1);
        return add_gap(p, GAP_UNKNOWN);
    }
    return 0;
}

/* --------------------------------------------------------------------------- responses */

/* Pair one response with the oldest request; *end becomes the offset just past it. */
static int response(Parser *p, Run *r, Py_ssize_t pos, PyObject *records, Py_ssize_t *end) {
    Head h;
    head_parse(&h, r, pos);
    const unsigned char *code = r->d + pos + 9; /* three digits, checked by is_status_line */
    int status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
    Entry *request = p->count ? entry_at(p, 0) : NULL;
    int bodiless = status < 200 || status == 204 || status == 304 || (request && !request->is_gap && request->head);
    frame(&h, r, !bodiless, 1);
    *end = h.body_end;
    if (status < 200 && status != 101)
        return 0; /* interim response (100 Continue, 103 Early Hints): the exchange goes on */
    if (request == NULL) {
        count(p, RESPONSES_WITHOUT_REQUEST, 1);
        return 0;
    }
    if (request->is_gap) { /* the response to a request we never parsed */
        count(p, RESPONSES_TO_UNPARSED_REQUESTS, 1);
        if (request->count == GAP_UNKNOWN)
            request->absorbed = 1;
        else if (--request->count == 0)
            pop_front(p);
        return 0;
    }
    Entry taken = *request; /* the queue lets go of it: its references are ours now */
    memset(request, 0, sizeof(*request));
    pop_front(p);
    int tunnel = status == 101 || (taken.opens_tunnel && status >= 200 && status < 300);
    PyObject *error = NULL, *record = NULL;
    int rc = -1;
    if (set_new(taken.attributes, s_status_code, PyLong_FromLong(status)) < 0)
        goto done;
    if (h.body_size >= 0 && !bodiless &&
        set_new(taken.attributes, s_response_body_size, PyLong_FromSsize_t(h.body_size)) < 0)
        goto done;
    if (p->capture_headers && add_headers(taken.attributes, s_response_header, r, &h) < 0)
        goto done;
    if (!bodiless && add_body(p, taken.attributes, s_response_body, s_response_body_truncated, r, &h) < 0)
        goto done;
    if (status >= 500 && (error = PyUnicode_FromFormat("HTTP %d", status)) == NULL)
        goto done;
    record = make_record(&taken, r->end_ns, min_size(*end, r->size) - pos, error ? error : Py_None);
    if (record == NULL || PyList_Append(records, record) < 0)
        goto done;
    if (tunnel) {
        p->tunnel = 1;
        if (do_flush(p, records) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(error);
    Py_XDECREF(record);
    entry_clear(&taken);
    return rc;
}

static int feed_server(Parser *p, Run *r, PyObject *records) {
    Py_ssize_t pos = 0;
    if (p->server_skip && !is_status_line(r->d, r->n, 0)) {
        pos = p->server_skip;
        if (pos >= r->size) {
            p->server_skip = pos != UNKNOWN ? pos - r->size : UNKNOWN;
            return 0;
        }
    }
    p->server_skip = 0;
    Py_ssize_t end = pos;
    while (pos < r->n) {
        if (!is_status_line(r->d, r->n, pos)) {
            count(p, SERVER_RUNS_UNPARSED, 1);
            break;
        }
        if (response(p, r, pos, records, &end) < 0)
            return -1;
        if (p->tunnel)
            return 0;
        pos = end;
    }
    if (end > r->size)
        p->server_skip = end != UNKNOWN ? end - r->size : UNKNOWN;
    if (r->n < r->size && (end < r->size || end == UNKNOWN) && pos >= r->n) {
        /* The run may go on past the captured bytes with more responses. Every queued request was sent before
         * this run began, and a server run lasts until the client speaks again, so the answers are most likely
         * in there: report them, without the status we cannot see. */
        if (report_queued(p, records, r->end_ns, Py_None, RESPONSES_UNSEEN) < 0)
            return -1;
        queue_clear(p);
    }
    /* An unknown-size gap ends with the server run that answered it. */
    Entry *first = p->count ? entry_at(p, 0) : NULL;
    if (first != NULL && first->is_gap && first->absorbed)
        pop_front(p);
    return 0;
}

/* --------------------------------------------------------------------------- the Parser type */

static PyObject *parser_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"settings", NULL};
    PyObject *settings;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Parser", keywords, &settings))
        return NULL;
    PyObject *headers = PyObject_GetAttr(settings, s_headers);
    PyObject *query = headers ? PyObject_GetAttr(settings, s_query_setting) : NULL;
    PyObject *bodies = query ? PyObject_GetAttr(settings, s_bodies) : NULL;
    PyObject *limit = bodies ? PyObject_GetAttr(settings, s_body_limit) : NULL;
    PyObject *patterns = limit ? PyObject_GetAttr(settings, s_route_patterns) : NULL;
    int capture_headers = patterns ? PyObject_IsTrue(headers) : -1;
    int capture_query = capture_headers >= 0 ? PyObject_IsTrue(query) : -1;
    int capture_bodies = capture_query >= 0 ? PyObject_IsTrue(bodies) : -1;
    Py_ssize_t body_limit = capture_bodies > 0 ? PyLong_AsSsize_t(limit) : 0;
    Py_XDECREF(headers);
    Py_XDECREF(query);
    Py_XDECREF(bodies);
    Py_XDECREF(limit);
    if (capture_bodies < 0 || (body_limit == -1 && PyErr_Occurred())) {
        Py_XDECREF(patterns);
        return NULL;
    }
    Parser *self = (Parser *)type->tp_alloc(type, 0); /* zeroed */
    if (self == NULL) {
        Py_DECREF(patterns);
        return NULL;
    }
    self->settings = Py_NewRef(settings);
    self->patterns = patterns;
    self->capture_headers = (char)capture_headers;
    self->capture_query = (char)capture_query;
    self->body_limit = body_limit > 0 ? body_limit : 0;
    return (PyObject *)self;
}

static int parser_traverse(Parser *self, visitproc visit, void *arg) {
    Py_VISIT(self->settings);
    Py_VISIT(self->patterns);
    for (int i = 0; i < self->count; i++) {
        Entry *e = entry_at(self, i);
        Py_VISIT(e->name);
        Py_VISIT(e->attributes);
        Py_VISIT(e->context);
        Py_VISIT(e->start_ns);
        Py_VISIT(e->end_ns);
    }
    return 0;
}

static int parser_clear(Parser *self) {
    Py_CLEAR(self->settings);
    Py_CLEAR(self->patterns);
    queue_clear(self);
    return 0;
}

static void parser_dealloc(Parser *self) {
    PyObject_GC_UnTrack(self);
    parser_clear(self);
    PyMem_Free(self->queue);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int enter(Parser *self) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "http1 Parser re-entered from a callback");
        return -1;
    }
    self->busy = 1;
    return 0;
}

/* Read a Message's fields: its data buffer is held in `view` until PyBuffer_Release; new references to its
 * times. */
static int read_message(PyObject *message, Py_buffer *view, Py_ssize_t *size, int *from_client, PyObject **start_ns,
                        PyObject **end_ns) {
    PyObject *data = PyObject_GetAttr(message, s_data);
    if (data == NULL)
        return -1;
    int rc = PyObject_GetBuffer(data, view, PyBUF_SIMPLE);
    Py_DECREF(data);
    if (rc < 0)
        return -1;
    PyObject *size_obj = NULL, *flag = NULL;
    rc = -1;
    if ((size_obj = PyObject_GetAttr(message, s_size)) == NULL ||
        (flag = PyObject_GetAttr(message, s_from_client)) == NULL)
        goto done;
    *size = PyLong_AsSsize_t(size_obj);
    if (*size == -1 && PyErr_Occurred())
        goto done;
    if ((*from_client = PyObject_IsTrue(flag)) < 0)
        goto done;
    if ((*start_ns = PyObject_GetAttr(message, s_start_ns)) == NULL)
        goto done;
    if ((*end_ns = PyObject_GetAttr(message, s_end_ns)) == NULL) {
        Py_CLEAR(*start_ns);
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(size_obj);
    Py_XDECREF(flag);
    if (rc < 0)
        PyBuffer_Release(view);
    return rc;
}

/* One run into the records it completed (a new list); NULL only for an exception that is no Exception
 * (KeyboardInterrupt and the like): any other failure costs the run, counted as parser_errors. What
 * feed() and the connection table (through the C API) both call. */
static PyObject *feed_run(PyObject *parser, const unsigned char *data, Py_ssize_t n, Py_ssize_t size, int from_client,
                          PyObject *start_ns, PyObject *end_ns) {
    Parser *self = (Parser *)parser;
    PyObject *records = PyList_New(0);
    if (records == NULL)
        return NULL;
    if (self->tunnel)
        return records;
    if (enter(self) < 0) {
        Py_DECREF(records);
        return NULL;
    }
    int rc;
    if (size < 0 || size > SIZE_LIMIT) {
        PyErr_Format(PyExc_ValueError, "message size %zd is outside 0..2**62", size);
        rc = -1;
    } else {
        Run r = {.d = data, .n = n, .size = size, .start_ns = start_ns, .end_ns = end_ns, .crlf_from = -1,
                 .lf_from = -1};
        rc = from_client ? feed_client(self, &r) : feed_server(self, &r, records);
    }
    self->busy = 0;
    if (rc < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) { /* KeyboardInterrupt and the like go on */
            Py_DECREF(records);
            return NULL;
        }
        PyErr_Clear(); /* a parser failure must cost one run, never the agent */
        count(self, PARSER_ERRORS, 1);
        Py_SETREF(records, PyList_New(0));
    }
    return records;
}

static PyObject *parser_feed(Parser *self, PyObject *message) {
    if (self->tunnel)
        return PyList_New(0);
    Py_buffer view;
    Py_ssize_t size;
    int from_client;
    PyObject *start_ns, *end_ns;
    if (read_message(message, &view, &size, &from_client, &start_ns, &end_ns) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear(); /* not a message: that run is lost, as a parser error */
        count(self, PARSER_ERRORS, 1);
        return PyList_New(0);
    }
    PyObject *records = feed_run((PyObject *)self, view.buf, view.len, size, from_client, start_ns, end_ns);
    PyBuffer_Release(&view);
    Py_DECREF(start_ns);
    Py_DECREF(end_ns);
    return records;
}

static PyObject *parser_flush(Parser *self, PyObject *unused) {
    (void)unused;
    PyObject *records = PyList_New(0);
    if (records == NULL)
        return NULL;
    if (enter(self) < 0) {
        Py_DECREF(records);
        return NULL;
    }
    int rc = do_flush(self, records);
    self->busy = 0;
    if (rc < 0)
        Py_CLEAR(records);
    return records;
}

static PyObject *parser_pending(Parser *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->count);
}

static PyObject *parser_counters(Parser *self, void *closure) {
    (void)closure;
    PyObject *counters = PyObject_CallNoArgs(counter_type);
    for (int i = 0; counters != NULL && i < N_COUNTERS; i++) {
        if (!(self->counted & (1u << i)))
            continue;
        PyObject *value = PyLong_FromSsize_t(self->counters[i]);
        if (value == NULL || PyObject_SetItem(counters, counter_keys[i], value) < 0)
            Py_CLEAR(counters);
        Py_XDECREF(value);
    }
    return counters;
}

/* What base.Parser calls `dropped`: exchanges that never became records. Requests reported without
 * their response (no response, unseen responses) are records, not drops; a response to an unparsed
 * request is the same loss as that request's gap, so it is not counted twice. */
static PyObject *parser_dropped(Parser *self, void *closure) {
    (void)closure;
    static const int lost[] = {PARSER_ERRORS, CLIENT_RUNS_UNPARSED, REQUESTS_UNSEEN_RUNS, REQUESTS_DROPPED_QUEUE_FULL,
                               SERVER_RUNS_UNPARSED, RESPONSES_WITHOUT_REQUEST};
    Py_ssize_t total = 0;
    for (size_t i = 0; i < sizeof(lost) / sizeof(lost[0]); i++)
        total += self->counters[lost[i]];
    return PyLong_FromSsize_t(total);
}

static PyMethodDef parser_methods[] = {
    {"feed", (PyCFunction)parser_feed, METH_O,
     "feed(message, /)\n--\n\nParse one run (a base.Message); return the records it completed."},
    {"flush", (PyCFunction)parser_flush, METH_NOARGS,
     "flush()\n--\n\nConnection closed or idle: report the requests still waiting (error \"no response\")."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef parser_getset[] = {
    {"pending", (getter)parser_pending, NULL, "Queued requests and gaps; never more than MAX_PENDING + 1.", NULL},
    {"counters", (getter)parser_counters, NULL, "What was lost or not parsed, by name (a new collections.Counter).",
     NULL},
    {"dropped", (getter)parser_dropped, NULL, "Exchanges that could not be reported (base.Parser.dropped).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ParserType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "podspan_agent._http1.Parser",
    .tp_basicsize = sizeof(Parser),
    .tp_dealloc = (destructor)parser_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Parser(settings): per-connection HTTP/1 parser (base.Parser): keep-alive, pipelining, 1xx interim "
              "responses, bounded FIFO of requests with counted gaps.",
    .tp_traverse = (traverseproc)parser_traverse,
    .tp_clear = (inquiry)parser_clear,
    .tp_methods = parser_methods,
    .tp_getset = parser_getset,
    .tp_new = parser_new,
};

/* --------------------------------------------------------------------------- module */

static PyObject *py_is_status_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_buffer view;
    Py_ssize_t pos;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "is_status_line() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if ((pos = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int result = is_status_line(view.buf, view.len, pos);
    PyBuffer_Release(&view);
    return PyBool_FromLong(result);
}

static PyMethodDef methods[] = {
    {"is_status_line", (PyCFunction)(void (*)(void))py_is_status_line, METH_FASTCALL,
     "is_status_line(data, pos, /)\n--\n\nWhether an HTTP/1.0 or 1.1 status line with a three-digit code from "
     "100 to 999 starts at data[pos]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "podspan_agent._http1", "The HTTP/1 parser: requests and responses into base.Records.",
    -1, methods, NULL, NULL, NULL, NULL,
};

static PyObject *names_tuple(const char *const *names, size_t n) {
    PyObject *tuple = PyTuple_New((Py_ssize_t)n);
    for (size_t i = 0; tuple != NULL && i < n; i++) {
        PyObject *name = PyUnicode_InternFromString(names[i]);
        if (name == NULL)
            Py_CLEAR(tuple);
        else
            PyTuple_SET_ITEM(tuple, (Py_ssize_t)i, name);
    }
    return tuple;
}

/* Whether base.Record is a slotted class of exactly record_fields, each an object slot (then their offsets are
 * known); otherwise records are made by calling it. */
static int find_record_slots(void) {
    if (!PyType_Check(record_type))
        return 0;
    PyTypeObject *type = (PyTypeObject *)record_type;
    PyObject *slots = PyObject_GetAttrString(record_type, "__slots__");
    if (slots == NULL) {
        PyErr_Clear();
        return 0;
    }
    int known = PyTuple_Check(slots) && PyTuple_GET_SIZE(slots) == N_RECORD_FIELDS && type->tp_dictoffset == 0 &&
                type->tp_base == &PyBaseObject_Type;
    for (int i = 0; known && i < N_RECORD_FIELDS; i++) {
        PyObject *name = PyTuple_GET_ITEM(slots, i);
        PyObject *descr = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, record_fields[i]) == 0
                              ? PyDict_GetItemWithError(type->tp_dict, name)
                              : NULL;
        known = descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (known)
            record_slot_offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    Py_DECREF(slots);
    PyErr_Clear();
    return known;
}

static int init_state(void) {
    for (size_t i = 0; i < N_METHODS; i++) {
        if (intern(&method_names[i], known_methods[i]) < 0 ||
            (method_labels[i] = PyUnicode_FromFormat("%s ", known_methods[i])) == NULL)
            return -1;
    }
    for (size_t i = 0; i < N_CONTEXT; i++)
        if (intern(&context_keys[i], context_names[i]) < 0)
            return -1;
    for (int i = 0; i < N_COUNTERS; i++)
        if (intern(&counter_keys[i], counter_names[i]) < 0)
            return -1;
    if (intern(&s_method, "http.request.method") < 0 || intern(&s_method_original, "http.request.method_original") < 0 ||
        intern(&s_scheme, "url.scheme") < 0 || intern(&s_path, "url.path") < 0 || intern(&s_query, "url.query") < 0 ||
        intern(&s_route, "http.route") < 0 || intern(&s_version, "network.protocol.version") < 0 ||
        intern(&s_address, "server.address") < 0 || intern(&s_port, "server.port") < 0 ||
        intern(&s_user_agent, "user_agent.original") < 0 || intern(&s_request_body_size, "http.request.body.size") < 0 ||
        intern(&s_status_code, "http.response.status_code") < 0 ||
        intern(&s_response_body_size, "http.response.body.size") < 0 ||
        intern(&s_request_header, "http.request.header.") < 0 || intern(&s_response_header, "http.response.header.") < 0 ||
        intern(&s_request_body, "podspan.http.request.body") < 0 ||
        intern(&s_response_body, "podspan.http.response.body") < 0 ||
        intern(&s_request_body_truncated, "podspan.http.request.body.truncated") < 0 ||
        intern(&s_response_body_truncated, "podspan.http.response.body.truncated") < 0)
        return -1;
    if (intern(&s_data, "data") < 0 || intern(&s_size, "size") < 0 || intern(&s_from_client, "from_client") < 0 ||
        intern(&s_start_ns, "start_ns") < 0 || intern(&s_end_ns, "end_ns") < 0 || intern(&s_headers, "headers") < 0 ||
        intern(&s_query_setting, "query") < 0 || intern(&s_route_patterns, "route_patterns") < 0 ||
        intern(&s_bodies, "bodies") < 0 || intern(&s_body_limit, "body_limit") < 0)
        return -1;
    if (intern(&v_other, "_OTHER") < 0 || intern(&v_other_label, "HTTP ") < 0 || intern(&v_http, "http") < 0 ||
        intern(&v_other_name, "HTTP") < 0 || intern(&v_asterisk, "*") < 0 || intern(&v_version_11, "1.1") < 0 ||
        intern(&v_version_10, "1.0") < 0 || intern(&v_no_response, "no response") < 0 || intern(&v_slash, "/") < 0 ||
        intern(&v_comma, ",") < 0)
        return -1;
    v_protocol = Py_NewRef(v_http);
    PyObject *more = NULL;
    if (import_attr(&more, "podspan_agent.protocols.routes", "MORE") < 0)
        return -1;
    v_more_suffix = PyUnicode_Concat(v_slash, more);
    Py_DECREF(more);
    if (v_more_suffix == NULL)
        return -1;
    if (import_attr(&record_type, "podspan_agent.protocols.base", "Record") < 0 ||
        import_attr(&template_fn, "podspan_agent.protocols.routes", "template") < 0 ||
        import_attr(&redact_query_fn, "podspan_agent.protocols.redact", "query") < 0 ||
        import_attr(&redact_header_fn, "podspan_agent.protocols.redact", "header") < 0 ||
        import_attr(&redact_body_fn, "podspan_agent.protocols.redact", "body") < 0 ||
        import_attr(&counter_type, "collections", "Counter") < 0)
        return -1;
    record_slots_known = find_record_slots();
    return 0;
}

static int add_new(PyObject *module, const char *name, PyObject *value) {
    if (value == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(module, name, value);
    Py_DECREF(value);
    return rc;
}

static PodspanHttp1Api c_api = {&ParserType, feed_run};

PyMODINIT_FUNC PyInit__http1(void) {
    if (record_type == NULL && init_state() < 0)
        return NULL;
    if (PyType_Ready(&ParserType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Parser", (PyObject *)&ParserType) < 0 ||
        PyModule_AddIntConstant(module, "MAX_PENDING", MAX_PENDING) < 0 ||
        PyModule_AddObjectRef(module, "PROTOCOL", v_protocol) < 0 ||
        PyModule_AddObjectRef(module, "NO_RESPONSE", v_no_response) < 0 ||
        add_new(module, "KNOWN_METHODS", names_tuple(known_methods, N_METHODS)) < 0 ||
        add_new(module, "CONTEXT_HEADERS", names_tuple(context_names, N_CONTEXT)) < 0 ||
        add_new(module, "_C_API", PyCapsule_New(&c_api, PODSPAN_HTTP1_CAPSULE, NULL)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
