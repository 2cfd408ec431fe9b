/*
 * The HTTP/1 parser's C API (podspan_agent._http1._C_API, a capsule): how the connection table
 * (podspan_agent._conntable) feeds runs to it without a Message object or a Python method call.
 */
#ifndef PODSPAN_HTTP1_API_H
#define PODSPAN_HTTP1_API_H

#include <Python.h>

#define PODSPAN_HTTP1_CAPSULE "podspan_agent._http1._C_API"

typedef struct {
    PyTypeObject *parser_type; /* _http1.Parser: feed_run takes only its instances */
    /* Parser.feed of one run: `n` captured bytes at `data` of a run of `size` bytes; the records it completed
     * (a new list), NULL only for an exception that is no Exception (other failures are its parser_errors). */
    PyObject *(*feed_run)(PyObject *parser, const unsigned char *data, Py_ssize_t n, Py_ssize_t size, int from_client,
                          PyObject *start_ns, PyObject *end_ns);
} PodspanHttp1Api;

#endif
